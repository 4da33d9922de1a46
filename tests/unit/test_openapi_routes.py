"""The public OpenAPI document against the REST dispatcher: every documented operation is routed to a handler for
its method, and every form of path a front's route accepts is documented, in both directions exactly.

Documented -> routed: each path template gets example parameter values and must reach, through the same
``front_for`` and ``find`` as a request, a route of its own method whose named groups hold those values.
Routed -> documented: each route's regex is expanded into one sample path per form it accepts (every optional
part present or not, every alternative), and each sample must match a documented template of the same method.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any, cast

import pytest

from gateway.api import openapi, rest, tf_rest, torchserve_rest, v2_rest
from gateway.api.asgi import Front
from gateway.dataplane import DataPlane

APP = rest.RestApp(cast(DataPlane, None), 0)  # routing only: no request is served
FRONTS: tuple[Front, ...] = (v2_rest.FRONT, tf_rest.FRONT, torchserve_rest.FRONT, APP.pages.front)
FRONT_OF_TAG = {openapi.TAGS["v2"]: "v2_rest", openapi.TAGS["tf"]: "tf_rest",
                openapi.TAGS["torchserve"]: "torchserve_rest", openapi.TAGS["gateway"]: "gateway"}
# Which named group of the routes' regexes holds each documented path parameter.
GROUP_OF = {"model_name": "name", "tf_model_name": "name", "model_version": "version", "version": "version",
            "label": "label", "asset": "asset"}
DOC = openapi.build()
OPERATIONS = [(method.upper(), path, op) for path, item in DOC["paths"].items() for method, op in item.items()]


def example_path(template: str, op: dict[str, Any]) -> tuple[str, dict[str, str]]:
    values = {p["name"]: str(p["example"]) for p in op["parameters"] if p["in"] == "path"}
    return template.format(**values), values


@pytest.mark.parametrize(("method", "template", "op"), OPERATIONS, ids=[f"{m} {p}" for m, p, _ in OPERATIONS])
def test_every_documented_operation_is_routed(method: str, template: str, op: dict[str, Any]) -> None:
    path, values = example_path(template, op)
    front = APP.front_for(path)
    assert front.name == FRONT_OF_TAG[op["tags"][0]], f"{method} {path} goes to front {front.name}"
    for candidate in (path, path + "/") if op.get("x-trailing-slash") else (path,):
        found = rest.find(front, method, candidate)
        assert found is not None, f"{method} {candidate} is documented but no route takes it"
        _, match = found
        for name, value in values.items():
            assert match[GROUP_OF[name]] == value, f"{method} {candidate}: {{{name}}} is not the route's {name}"


def template_regex(template: str, trailing_slash: bool) -> re.Pattern[str]:
    parts = re.split(r"({\w+})", template)
    body = "".join("[^/]+" if p.startswith("{") else re.escape(p) for p in parts)
    return re.compile(f"^{body}{'/?' if trailing_slash else ''}$")


DOCUMENTED = [(method, template_regex(path, bool(op.get("x-trailing-slash")))) for method, path, op in OPERATIONS]
ROUTES = [(front, method, pattern) for front in FRONTS for method, pattern, _ in front.routes]


@pytest.mark.parametrize(("front", "method", "pattern"), ROUTES,
                         ids=[f"{f.name} {m} {p.pattern}" for f, m, p in ROUTES])
def test_every_route_is_documented(front: Front, method: str, pattern: re.Pattern[str]) -> None:
    samples = sorted(set(forms(pattern)))
    assert samples, pattern.pattern
    for sample in samples:
        assert pattern.match(sample), f"sample {sample!r} does not match its own route {pattern.pattern}"
        assert APP.front_for(sample) is front, f"{sample} is not dispatched to front {front.name}"
        assert any(m == method and doc.match(sample) for m, doc in DOCUMENTED), \
            f"{method} {sample} is routed (by {pattern.pattern}) but no documented operation takes it"


def test_route_forms_are_expanded() -> None:
    """The expansion itself: every optional part and every alternative gives its own sample."""
    assert set(forms(re.compile(r"^/v2/models/(?P<name>[^/]+)(?:/versions/(?P<version>[^/]+))?/?$"))) == {
        "/v2/models/a", "/v2/models/a/", "/v2/models/a/versions/a", "/v2/models/a/versions/a/"}
    assert set(forms(re.compile(r"(?i)^/v1/m(?:/(?P<v>[0-9]{1,18})|/l/(?P<l>[^/:]+))?:(?P<verb>go|stop)$"))) == {
        "/v1/m:go", "/v1/m:stop", "/v1/m/0:go", "/v1/m/0:stop", "/v1/m/l/a:go", "/v1/m/l/a:stop"}


def test_operation_ids_are_unique_and_refusals_have_the_fronts_error_body() -> None:
    ids = [op["operationId"] for _, _, op in OPERATIONS]
    assert len(ids) == len(set(ids))
    wrong = {name: openapi.ref(openapi.m.Error if name == openapi.TAGS["torchserve"] else openapi.m.TorchServeError)
             for name in FRONT_OF_TAG}
    for method, path, op in OPERATIONS:
        for status, answer in op["responses"].items():
            if int(status) >= 400:
                schema = answer["content"]["application/json"]["schema"]
                refs = schema.get("anyOf", [schema])
                assert refs and wrong[op["tags"][0]] not in refs, f"{method} {path} {status}: {schema}"


# --- one sample path per form a route's regex accepts -----------------------------------------------------------

def forms(pattern: re.Pattern[str]) -> Iterator[str]:
    parsed = re._parser.parse(pattern.pattern, pattern.flags)  # type: ignore[attr-defined]
    yield from _sequence(list(parsed))


def _sequence(items: list[tuple[Any, Any]]) -> Iterator[str]:
    if not items:
        yield ""
        return
    for head in _item(*items[0]):
        for tail in _sequence(items[1:]):
            yield head + tail


def _item(op: Any, av: Any) -> list[str]:
    name = str(op)
    if name == "LITERAL":
        return [chr(av)]
    if name == "NOT_LITERAL":  # [^/]
        return [next(c for c in "a0_" if ord(c) != av)]
    if name == "AT":  # ^ and $
        return [""]
    if name == "IN":
        return [_one_of(av)]
    if name == "SUBPATTERN":
        return list(_sequence(list(av[-1])))
    if name == "BRANCH":
        return [s for alternative in av[1] for s in _sequence(list(alternative))]
    if name in ("MAX_REPEAT", "MIN_REPEAT"):
        low, high, sub = av
        counts = {low} | ({1} if low == 0 and high >= 1 else set())  # x? -> absent and present; x+ -> once
        return [s * n for n in sorted(counts) for s in _sequence(list(sub))]
    raise AssertionError(f"route regexes use {name}: teach forms() about it")


def _one_of(items: list[tuple[Any, Any]]) -> str:
    """A character of a class: 'a' for a negated one that allows it, else its first member."""
    kinds = [str(op) for op, _ in items]
    if kinds and kinds[0] == "NEGATE":
        excluded = {chr(av) for op, av in items[1:] if str(op) == "LITERAL"}
        return next(c for c in "a0_" if c not in excluded)
    op, av = items[0]
    return chr(av[0] if str(op) == "RANGE" else av)
