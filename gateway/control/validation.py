"""Pydantic's validation errors as one readable sentence: the 400 answers of the admin API and rollout specs."""

from __future__ import annotations

from pydantic import ValidationError

from gateway.errors import InvalidChange


def explain(exc: ValidationError, root: str = "") -> str:
    """``field.path: what is wrong (got value)`` for every problem, joined by "; "."""
    parts = []
    for error in exc.errors(include_url=False, include_context=False):
        where = ".".join(str(x) for x in (root, *error["loc"]) if x != "") or "body"
        given = error.get("input")
        shown = "" if error["type"] in ("missing", "extra_forbidden") or isinstance(given, dict) else \
            f" (got {_short(given)})"
        parts.append(f"{where}: {_message(error['type'], error['msg'])}{shown}")
    return "; ".join(parts)


def invalid(exc: ValidationError, root: str = "") -> InvalidChange:
    return InvalidChange(explain(exc, root))


def _message(kind: str, msg: str) -> str:
    if kind == "extra_forbidden":
        return "unknown field"
    return msg.removeprefix("Value error, ")


def _short(value: object, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."
