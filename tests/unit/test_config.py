"""Routes file validation: each mistake is refused with the file, the field path and what is wrong."""

from pathlib import Path

import pytest
import yaml

from gateway.errors import ConfigError
from gateway.routes.schema import load_routes, parse_routes

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "routes.local.yaml"

BASE = {
    "revision": 3,
    "backends": {
        "tf": {"kind": "tfserving", "url": "http://127.0.0.1:8501"},
        "ts": {"kind": "torchserve", "url": "http://127.0.0.1:8080", "management_url": "http://127.0.0.1:8081"},
    },
    "models": {
        "m": {
            "default_version": 1,
            "labels": {"stable": 1},
            "versions": {1: {"backend": "tf", "model": "m", "version": 1},
                         2: {"backend": "ts", "model": "m", "version": "2.0"}},
        }
    },
}


def parse(raw: object, env: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    return parse_routes(raw, "routes.yaml", env or {})


def with_change(path: str, value: object) -> dict:  # type: ignore[type-arg]
    raw = yaml.safe_load(yaml.safe_dump(BASE))
    node = raw
    keys = path.split(".")
    for key in keys[:-1]:
        node = node[int(key) if key.isdigit() and int(key) in node else key]
    if value is _DELETE:
        del node[keys[-1]]
    else:
        node[keys[-1]] = value
    return raw


_DELETE = object()


def test_example_routes_file_is_valid() -> None:
    config = load_routes(EXAMPLE, environ={})
    assert {"affine", "multi", "mlp", "mlp_torch", "scale"} <= set(config.models)
    assert config.backends["torchserve"].token_file is None  # empty ${TORCHSERVE_KEY_FILE:-} means auth off


def test_valid_config_parses_versions_as_strings() -> None:
    config = parse(BASE)
    model = config.models["m"]
    assert config.revision == 3
    assert set(model.versions) == {"1", "2"}
    assert model.versions["2"].version == "2.0"
    assert model.labels == {"stable": "1"}


def test_default_version_is_highest_when_omitted() -> None:
    config = parse(with_change("models.m.default_version", _DELETE))
    assert config.models["m"].default_version == "2"


def test_environment_variables_expand() -> None:
    raw = with_change("backends.tf.url", "${TF_URL:-http://fallback:1}")
    assert parse(raw, {"TF_URL": "http://10.0.0.1:9"}).backends["tf"].url == "http://10.0.0.1:9"
    assert parse(raw).backends["tf"].url == "http://fallback:1"


@pytest.mark.parametrize(("path", "value", "message"), [
    ("backends.tf.kind", "triton", "routes.yaml: backends.tf.kind: 'triton' is not one of tfserving, torchserve"),
    ("backends.tf.url", "localhost:8501", "backends.tf.url: 'localhost:8501' must be an http(s) URL"),
    ("backends.tf.timeout_s", -1, "backends.tf.timeout_s: must be a positive number"),
    ("backends.tf.colour", "red", "backends.tf.colour: unknown field"),
    ("backends.tf.token_file", "/k.json", "backends.tf.token_file: only torchserve backends"),
    ("backends.ts.model_config_file", "/m.config", "backends.ts.model_config_file: only tfserving backends"),
    ("backends.tf.model_config_file", "models.config",
     "backends.tf.model_config_file: 'models.config' must be an absolute path"),
    ("backends.tf.model_config_file", ["/m.config"], "backends.tf.model_config_file: must be a string, got list"),
    ("backends.tf.model_store", "/srv/store", "backends.tf.model_store: only torchserve backends have TorchServe's"),
    ("backends.ts.model_store", "store", "backends.ts.model_store: 'store' must be an absolute path"),
    ("models.m.versions.1.backend", "nope", "models.m.versions.1.backend: unknown backend 'nope'"),
    ("models.m.versions.1.model", _DELETE, "models.m.versions.1.model: is required"),
    ("models.m.default_version", 7, "models.m.default_version: version 7 is not listed"),
    ("models.m.labels", {"canary": 9}, "models.m.labels.canary: points at version 9"),
    ("models.m.labels", {"3": 1}, "models.m.labels.3: a label must not be a number"),
    ("models.m.versions", {"v1": {"backend": "tf", "model": "m", "version": 1}},
     "models.m.versions.v1: version 'v1' must be a positive integer"),
    ("models.m.versions.1.version", "latest", "models.m.versions.1.version: version 'latest' must be a positive"),
    ("models.m.schema", {"inputs": [{"name": "x", "datatype": "FLOAT", "shape": [1]}], "outputs": []},
     "models.m.schema.inputs[0].datatype: 'FLOAT' is not a v2 datatype"),
    ("models", [], "models: must be a mapping, got list"),
    ("backends", {}, "backends: must define at least one backend"),
])
def test_invalid_config_is_refused_with_path(path: str, value: object, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse(with_change(path, value))
    assert message in str(info.value)


def test_unset_variable_without_default_is_an_error() -> None:
    with pytest.raises(ConfigError, match=r"backends.tf.url: environment variable NOPE is not set"):
        parse(with_change("backends.tf.url", "${NOPE}"))


def test_unreadable_and_invalid_yaml_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read routes file"):
        load_routes(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("backends: [unclosed\n")
    with pytest.raises(ConfigError, match=rf"{bad}: not valid YAML"):
        load_routes(bad)


def test_settings_round_trip_through_environment() -> None:
    from gateway.settings import Settings

    settings = Settings(routes_file=Path("/r.yaml"), port=9, grpc_port=0, workers=3, max_body_bytes=5,
                        routes_poll_s=0.5, log_level="debug", http_client="pyreqwest")
    assert Settings.from_env(settings.to_env()) == settings
    assert Settings.from_env({}).http_client == "aiohttp"
    with pytest.raises(SystemExit, match="GATEWAY_HTTP_CLIENT='httpx' is not one of aiohttp, pyreqwest"):
        Settings.from_env({"GATEWAY_HTTP_CLIENT": "httpx"})


def test_grpc_transport_needs_a_grpc_target() -> None:
    raw = with_change("backends.tf.transport", "grpc")
    with pytest.raises(ConfigError, match=r"backends\.tf\.grpc_target: is required when transport is grpc"):
        parse(raw)
    raw["backends"]["tf"]["grpc_target"] = "dns:///tf-serving:8500"
    assert parse(raw).backends["tf"].grpc_target == "dns:///tf-serving:8500"
    raw["backends"]["tf"]["grpc_target"] = "tf-serving"
    with pytest.raises(ConfigError, match=r"'tf-serving' must be host:port"):
        parse(raw)


def test_tfserving_model_config_file() -> None:
    assert parse(BASE).backends["tf"].model_config_file is None
    raw = with_change("backends.tf.model_config_file", "${TF_CONFIG:-/srv/tf/models.config}")
    assert parse(raw).backends["tf"].model_config_file == Path("/srv/tf/models.config")
    assert parse(raw, {"TF_CONFIG": ""}).backends["tf"].model_config_file is None  # empty: none
    assert parse(raw, {"TF_CONFIG": "/etc/tf.config"}).backends["tf"].model_config_file == Path("/etc/tf.config")


def test_security_settings_round_trip_and_refusals() -> None:
    from gateway.settings import Settings

    settings = Settings(auth_file=Path("/a.yaml"), auth_keys_file=Path("/k.yaml"), auth_open=frozenset({"health"}),
                        auth_reload_s=2.0, ratelimit_file=Path("/t"), tls_cert_file=Path("/c"),
                        tls_key_file=Path("/k"),
                        admin_tls_cert_file=Path("/ac"), admin_tls_key_file=Path("/ak"), tls_reload_s=3.0)
    assert Settings.from_env(settings.to_env()) == settings
    assert Settings.from_env({"GATEWAY_AUTH_OPEN": ""}).auth_open == frozenset()
    default = Settings.from_env({})
    assert default.auth_open == frozenset({"health", "metrics"}) and default.auth_file is None
    with pytest.raises(SystemExit, match="'readiness' is not one of health, metrics"):
        Settings.from_env({"GATEWAY_AUTH_OPEN": "health,readiness"})
    with pytest.raises(SystemExit, match="GATEWAY_TLS_CERT_FILE and GATEWAY_TLS_KEY_FILE go together"):
        Settings.from_env({"GATEWAY_TLS_CERT_FILE": "/c"})


def test_backend_tls() -> None:
    raw = with_change("backends.tf.tls", {"ca_file": "/ca.pem", "cert_file": "/c.pem", "key_file": "/k.pem"})
    with pytest.raises(ConfigError, match=r"backends\.tf\.url: .* must be https:// when tls is set"):
        parse(raw)
    raw["backends"]["tf"]["url"] = "https://tf-serving:8501"
    tls = parse(raw).backends["tf"].tls
    assert tls is not None and (tls.ca_file, tls.cert_file, tls.key_file) == (Path("/ca.pem"), Path("/c.pem"),
                                                                              Path("/k.pem"))
    raw["backends"]["tf"]["tls"] = {"cert_file": "/c.pem"}
    with pytest.raises(ConfigError, match=r"backends\.tf\.tls: cert_file and key_file go together"):
        parse(raw)
    raw["backends"]["tf"]["tls"] = {"ca_file": "/ca.pem", "pin": "x"}
    with pytest.raises(ConfigError, match=r"backends\.tf\.tls\.pin: unknown field"):
        parse(raw)
def test_a_backend_may_list_several_endpoints_with_its_resilience_settings() -> None:
    raw = with_change("backends.ts.url", ["http://10.0.0.1:8080", "http://10.0.0.2:8080"])
    ts = raw["backends"]["ts"]
    ts.update(grpc_target=["10.0.0.1:7070", "dns:///ts-headless:7070"], per_try_timeout_s=2, dns_refresh_s=0,
              health_check={"interval_s": 1}, outlier_ejection={"consecutive_failures": 3},
              retries={"attempts": 1, "on_timeout": True}, admission={"max_inflight": 8, "adaptive": True})
    config = parse(raw).backends["ts"]
    assert config.url == "http://10.0.0.1:8080" and config.inference_urls == ("http://10.0.0.1:8080",
                                                                             "http://10.0.0.2:8080")
    assert config.grpc_target == "10.0.0.1:7070" and len(config.inference_targets) == 2
    assert config.per_try_timeout_s == 2 and config.dns_refresh_s == 0
    assert config.health_check is not None and config.health_check.interval_s == 1
    assert config.outlier_ejection.consecutive_failures == 3 and config.outlier_ejection.base_ejection_s == 30
    assert config.retries.attempts == 1 and config.retries.on_timeout and config.retries.budget_percent == 20
    policy = config.admission_policy
    assert (policy.max_inflight, policy.max_queue, policy.max_wait_s, policy.adaptive) == (8, 8, 30.0, True)
    tf = parse(BASE).backends["tf"]
    assert tf.inference_urls == ("http://127.0.0.1:8501",) and tf.health_check is not None
    assert tf.admission_policy.max_inflight == tf.max_connections and tf.longest_call_s == 60.0


@pytest.mark.parametrize(("path", "value", "message"), [
    ("backends.ts.url", [], r"backends\.ts\.url: must not be an empty list"),
    ("backends.ts.url", ["http://a:1", "http://a:1"], r"backends\.ts\.url: lists the same endpoint twice"),
    ("backends.ts.url", ["http://a:1", "ftp://b"], r"backends\.ts\.url\[1\]: 'ftp://b' must be an http\(s\) URL"),
    ("backends.ts.per_try_timeout_s", 60, r"per_try_timeout_s: 60 is longer than timeout_s \(30\)"),
    ("backends.ts.dns_refresh_s", -1, r"dns_refresh_s: must be seconds >= 0"),
    ("backends.ts.health_check", {"every": 1}, r"health_check\.every: unknown field"),
    ("backends.ts.outlier_ejection", {"max_ejected_percent": 120}, r"max_ejected_percent: must be a percentage"),
    ("backends.ts.outlier_ejection", {"base_ejection_s": 60, "max_ejection_s": 30},
     r"max_ejection_s: 30 is shorter than base_ejection_s \(60\)"),
    ("backends.ts.retries", {"on_timeout": "yes"}, r"retries\.on_timeout: must be true or false"),
    ("backends.ts.admission", {"max_inflight": 4, "min_inflight": 8}, r"min_inflight: 8 is above max_inflight"),
    ("models.m.admission", {"max_queue": -1}, r"models\.m\.admission\.max_queue: must be an integer >= 0"),
])
def test_resilience_settings_are_refused_with_their_field_path(path: str, value: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse(with_change(path, value))


def test_an_experiment_failover_must_name_one_of_its_variants() -> None:
    raw = yaml.safe_load(yaml.safe_dump(BASE))
    raw["models"]["m"]["experiment"] = {"variants": [{"name": "a", "version": 1, "weight": 50},
                                                     {"name": "b", "version": 2, "weight": 50}], "failover": "c"}
    with pytest.raises(ConfigError, match=r"models\.m\.experiment\.failover: 'c' is not one of the variants \(a, b\)"):
        parse(raw)
    raw["models"]["m"]["experiment"]["failover"] = "a"
    experiment = parse(raw).models["m"].experiment
    assert experiment is not None and experiment.failover == "a"
