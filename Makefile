# The two commands of the README's quick start: `make up` (local stack) and `make test`.
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: up test lint bench

$(STAMP): pyproject.toml scripts/bootstrap tools/grafana-schema/package-lock.json
	./scripts/bootstrap

up: $(STAMP)
	$(VENV)/bin/python -m gateway.protos >/dev/null
	$(VENV)/bin/gateway dev

test: $(STAMP)
	$(VENV)/bin/python -m gateway.protos
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports
	$(VENV)/bin/python -m pytest

bench: $(STAMP)
	$(VENV)/bin/python load_tests/bench_overhead.py
