"""A/B assignment: weighted split within a binomial bound, sticky keys stable, minimal movement on a weight
change, overrides, shadows; and invalid policies refused with a clear message."""

from __future__ import annotations

import math
import random
from collections import Counter

import pytest
import yaml

from gateway.errors import ConfigError, InvalidArgument, PermissionDenied
from gateway.routes.schema import parse_routes
from gateway.routes.table import Hints, RouteTable
from gateway.types import ModelRef

BASE = {
    "backends": {"tf": {"kind": "tfserving", "url": "http://127.0.0.1:1"},
                 "ts": {"kind": "torchserve", "url": "http://127.0.0.1:2"}},
    "models": {"m": {
        "default_version": 1,
        "versions": {1: {"backend": "tf", "model": "m", "version": 1},
                     2: {"backend": "ts", "model": "m", "version": "1"},
                     3: {"backend": "tf", "model": "m", "version": 3}},
        "experiment": {"name": "port", "salt": "s1", "sticky_key": {"header": "X-User-Id"},
                       "variants": [{"name": "tf", "version": 1, "weight": 90},
                                    {"name": "torch", "version": 2, "weight": 10}]},
    }},
}


def table(**changes: object) -> RouteTable:
    raw = yaml.safe_load(yaml.safe_dump(BASE))
    raw["models"]["m"].update(changes)
    return RouteTable.from_config(parse_routes(raw, "routes.yaml", {}))


def with_weights(a: float, b: float) -> RouteTable:
    exp = dict(BASE["models"]["m"]["experiment"])  # type: ignore[index]
    exp["variants"] = [{"name": "tf", "version": 1, "weight": a}, {"name": "torch", "version": 2, "weight": b}]
    return table(experiment=exp)


def headers(**values: str) -> Hints:
    lowered = {k.replace("_", "-").lower(): v for k, v in values.items()}
    return Hints(header=lowered.get)


KEYS = [f"user-{i}" for i in range(20_000)]


def test_weighted_random_split_within_binomial_bound() -> None:
    rng = random.Random(1234)
    n = 20_000
    t = table()
    counts = Counter(t.resolve(ModelRef("m"), rand=rng.random).variant for _ in range(n))
    # 5 standard deviations of Binomial(n, 0.1): fails by chance about once in 3.5 million runs.
    sigma = math.sqrt(n * 0.1 * 0.9)
    assert abs(counts["torch"] - n * 0.1) < 5 * sigma, counts
    assert counts["tf"] + counts["torch"] == n


def test_sticky_keys_are_fully_stable_and_split_by_weight() -> None:
    t = table()
    first = {k: t.resolve(ModelRef("m"), headers(x_user_id=k)).variant for k in KEYS}
    again = {k: t.resolve(ModelRef("m"), headers(x_user_id=k), rand=lambda: 0.99).variant for k in KEYS}
    assert first == again  # 100% stable, whatever the random source says
    share = sum(v == "torch" for v in first.values()) / len(KEYS)
    assert abs(share - 0.10) < 5 * math.sqrt(0.1 * 0.9 / len(KEYS))
    route = t.resolve(ModelRef("m"), headers(x_user_id="user-1"))
    assert route.assigned == "sticky" and len(route.key_hash) == 16


def test_weight_change_moves_only_the_keys_that_must_move() -> None:
    t90, t80 = with_weights(90, 10), with_weights(80, 20)
    before = {k: t90.resolve(ModelRef("m"), headers(x_user_id=k)).variant for k in KEYS}
    after = {k: t80.resolve(ModelRef("m"), headers(x_user_id=k)).variant for k in KEYS}
    moved = [k for k in KEYS if before[k] != after[k]]
    assert all(before[k] == "tf" and after[k] == "torch" for k in moved)  # nobody leaves the 10% side
    assert abs(len(moved) / len(KEYS) - 0.10) < 0.01


def test_salt_reshuffles_assignment() -> None:
    exp = dict(BASE["models"]["m"]["experiment"])  # type: ignore[index]
    other = table(experiment={**exp, "salt": "s2"})
    t = table()
    same = sum(t.resolve(ModelRef("m"), headers(x_user_id=k)).variant ==
               other.resolve(ModelRef("m"), headers(x_user_id=k)).variant for k in KEYS[:5000])
    assert same < 5000 * 0.95  # a different salt is a different experiment


def test_missing_key_falls_back_to_random_or_default() -> None:
    rand = iter([0.95, 0.05]).__next__
    t = table()
    assert t.resolve(ModelRef("m"), rand=rand).variant == "torch"
    exp = dict(BASE["models"]["m"]["experiment"])  # type: ignore[index]
    default = table(experiment={**exp, "fallback": "default"})
    route = default.resolve(ModelRef("m"), rand=lambda: 0.99)
    assert (route.variant, route.assigned, route.target.logical_version) == ("tf", "default", "1")


def test_sticky_key_from_a_request_parameter() -> None:
    exp = dict(BASE["models"]["m"]["experiment"])  # type: ignore[index]
    t = table(experiment={**exp, "sticky_key": {"parameter": "user"}})
    variants = {t.resolve(ModelRef("m"), Hints(parameters={"user": 42}), rand=random.random).variant
                for _ in range(50)}
    assert len(variants) == 1


def test_explicit_version_and_label_bypass_the_experiment() -> None:
    t = table(labels={"next": 3})
    route = t.resolve(ModelRef("m", version="2"), headers(x_user_id="user-1"))
    assert (route.variant, route.assigned, route.target.backend) == ("", "version", "ts")
    assert t.resolve(ModelRef("m", label="next")).target.logical_version == "3"


def test_overrides_force_variant_or_version_unless_forbidden() -> None:
    t = table()
    forced = t.resolve(ModelRef("m"), headers(x_model_variant="torch", x_user_id="user-1"))
    assert (forced.variant, forced.assigned, forced.target.logical_version) == ("torch", "override", "2")
    assert t.resolve(ModelRef("m"), headers(x_model_version="3")).target.logical_version == "3"
    with pytest.raises(InvalidArgument, match="has no variant 'gpu'"):
        t.resolve(ModelRef("m"), headers(x_model_variant="gpu"))
    locked = table(allow_overrides=False)
    with pytest.raises(PermissionDenied, match="does not allow") as info:
        locked.resolve(ModelRef("m"), headers(x_model_version="3"))
    assert info.value.http_status == 403


def test_shadow_is_sampled_and_never_shadows_itself() -> None:
    t = table(shadow={"version": 3, "percent": 25})
    rng = random.Random(7)
    routes = [t.resolve(ModelRef("m"), rand=rng.random) for _ in range(4000)]
    shadowed = [r for r in routes if r.shadow is not None]
    assert abs(len(shadowed) / 4000 - 0.25) < 0.05
    assert {r.shadow.target.logical_version for r in shadowed if r.shadow} == {"3"}
    assert t.resolve(ModelRef("m", version="3"), rand=lambda: 0.0).shadow is None


@pytest.mark.parametrize(("change", "message"), [
    ({"experiment": {"variants": [{"name": "a", "version": 1, "weight": 90},
                                  {"name": "b", "version": 2, "weight": 20}]}}, "weights add up to 110, not 100"),
    ({"experiment": {"variants": [{"name": "a", "version": 1, "weight": 50},
                                  {"name": "b", "version": 9, "weight": 50}]}},
     "experiment.variants[1].version: version 9 is not listed"),
    ({"experiment": {"variants": [{"name": "a", "version": 1, "weight": 100}]}}, "at least two variants"),
    ({"experiment": {"variants": [{"name": "a", "version": 1, "weight": 50},
                                  {"name": "a", "version": 2, "weight": 50}]}}, "variant names must be unique"),
    ({"experiment": {"variants": [{"name": "a", "version": 1, "weight": 50}, {"name": "b", "version": 2,
                                                                               "weight": 50}],
                     "sticky_key": {"header": "a", "parameter": "b"}}}, "exactly one of header or parameter"),
    ({"shadow": {"version": 1, "percent": 10}}, "shadow.version: version 1 also serves primary traffic"),
    ({"experiment": None, "shadow": {"version": 1, "percent": 10}}, "also serves primary traffic"),
    ({"shadow": {"version": 3, "percent": 0}}, "shadow.percent: must be a percentage in (0, 100]"),
    ({"allow_overrides": "yes"}, "allow_overrides: must be true or false"),
])
def test_invalid_policies_are_refused(change: dict, message: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(ConfigError) as info:
        table(**change)
    assert message in str(info.value)
