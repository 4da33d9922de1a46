"""The Helm chart (deploy/k8s): linted strictly and rendered with every values file by Helm's own Go SDK
(helm-python-sdk, no helm binary), every manifest validated by kubernetes-validate --strict against Kubernetes
1.32, the prometheus-operator objects against their CRD models, a checkov scan with an explicit skip list, and
assertions on what the rendered objects must say."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml
from cloudcoil.models.prometheus_operator import v1 as prometheus_operator

from gateway.auth.keys import add_key, load_keys
from gateway.auth.tenants import load_policy
from gateway.dev.devstack import TF_MODELS, TORCHSERVE_MODELS
from gateway.settings import Settings
from gateway.tls import CertificateFiles
from tests.deploy.chartkit import (
    CHART,
    FULLNAME,
    KUBE_VERSION,
    NAMESPACE,
    RELEASE,
    Docs,
    ValuesSource,
    container,
    env_of,
    find,
    mounted,
    notes,
    render,
    stand_up,
    values_from,
)
from tests.deploy.tools import REPO, tool
from tests.securitykit import CA, Issuer

VALUES_FILES = {"default": None, "cpu": "values-cpu.yaml", "gpu": "values-gpu.yaml",
                "monitoring": "values-monitoring.yaml", "ha": "values-ha.yaml"}
#: Renders that no single values file spells out, linted, validated and scanned like the files: the README's
#: production install (three files together), and several replicas on an external etcd with mutual TLS and a user.
EXTERNAL_ETCD = {
    "gateway": {"replicas": 3, "routeStore": {"type": "etcd", "etcd": {
        "endpoints": ["etcd-a.db.svc:2379", "etcd-b.db.svc:2379", "etcd-c.db.svc:2379"], "prefix": "/team-a/gateway",
        "tls": {"enabled": True, "secretName": "etcd-client-tls", "clientCertificate": True},
        "auth": {"user": "gateway", "passwordSecret": "etcd-gateway", "passwordKey": "pw"},
        "timeoutSeconds": 3, "leaseTTLSeconds": 6}},
        "guards": {"prometheusUrl": "http://prometheus.monitoring.svc:9090", "timeoutSeconds": 4},
        "admin": {"allowedNamespaces": ["ops"]}}}
#: The policy a site gives values-production.yaml: the helm test's tenant, Prometheus', a team's.
POLICY = {"tenants": {"helm-test": {"models": {"affine": {}, "scale": {}, "digits_onnx": {}},
                                    "rate": {"rps": 5, "burst": 10}},
                      "prometheus": {"models": {}, "metrics": True},
                      "team-a": {"models": "*", "overrides": True}},
          "model_limits": {"digits_onnx": {"rps": 100, "burst": 200}}}
#: What values-production.yaml leaves to the site (the chart refuses to render without it): the policy and Secrets.
PRODUCTION_SITE = {"gateway": {"auth": {"policy": POLICY, "keysSecret": "mg-api-keys"},
                               "tls": {"secretName": "mg-tls"}},
                   "helmTest": {"apiKeySecret": "mg-helm-test-key"}}
#: The other ways in: the policy and keys from existing Secrets under other keys, JWTs from a JWKS ConfigMap, /metrics
#: behind a key, the CA in a Secret of its own, the admin API over TLS (one replica on the file store).
AUTH_VARIANTS = {
    "gateway": {"auth": {"enabled": True, "policySecret": "mg-auth", "policyKey": "policy.yaml",
                         "keysSecret": "mg-api-keys", "keysKey": "hashed.yaml", "jwksConfigMap": "idp-jwks",
                         "open": ["health"], "reloadSeconds": 2},
                "tls": {"enabled": True, "secretName": "mg-tls", "ca": {"secretName": "corp-ca", "key": "root.pem"},
                        "reloadSeconds": 5},
                "admin": {"tls": {"enabled": True, "secretName": "mg-admin-tls"}}},
    "metrics": {"serviceMonitor": {"enabled": True, "apiKeySecret": "mg-prometheus-key"}},
    "helmTest": {"apiKeySecret": "mg-helm-test-key", "apiKeyKey": "plain"}}
VALUES: dict[str, ValuesSource] = {
    **VALUES_FILES, "gpu-monitoring-ha": ("values-gpu.yaml", "values-monitoring.yaml", "values-ha.yaml"),
    "external-etcd": EXTERNAL_ETCD, "production": ("values-production.yaml", PRODUCTION_SITE),
    "gpu-monitoring-ha-production": ("values-gpu.yaml", "values-monitoring.yaml", "values-ha.yaml",
                                     "values-production.yaml", PRODUCTION_SITE),
    "auth-variants-monitoring": AUTH_VARIANTS}
CRD_MODELS = {"ServiceMonitor": prometheus_operator.ServiceMonitor,
              "PrometheusRule": prometheus_operator.PrometheusRule}
#: checkov checks that do not apply, one reason each. Everything else must pass.
CHECKOV_SKIPS = {
    "CKV_K8S_43": "images are pinned by tag (values: image.tag); a digest is per registry mirror, and a tag of the "
                  "form 1.2.3@sha256:... is accepted by the chart for those who pin digests",
    "CKV_K8S_15": "pinned tags with IfNotPresent: pods start without the registry; pullPolicy is a value",
}


def values_of(name: str) -> dict[str, Any] | None:
    return values_from(VALUES[name])


@pytest.fixture(scope="module")
def chart() -> Iterator[helm.Chart]:
    with helm.Chart.load(CHART) as loaded:  # keep the native handle alive while rendering
        yield loaded


@pytest.fixture(scope="module")
def rendered(chart: helm.Chart) -> dict[str, Docs]:
    return {name: render(chart, values_of(name), crds="monitoring" in name) for name in VALUES}


# ----------------------------------------------------------------------------- validators


@pytest.mark.parametrize("name", list(VALUES))
def test_helm_lint_strict(name: str) -> None:
    report = helm.lint(CHART, values_of(name), strict=True, kube_version=f"v{KUBE_VERSION}", namespace=NAMESPACE)
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert report["errors"] == [] and problems == [], report


def test_values_schema_refuses_unknown_keys_and_wrong_types(chart: helm.Chart) -> None:
    chart.validate_schema(values_of("gpu"))
    for bad, where in (({"gateway": {"replicaz": 3}}, "replicaz"), ({"tfserving": {"gpu": "one"}}, "/tfserving/gpu"),
                       ({"modelStorage": {"source": "s3"}}, "/modelStorage/source"),
                       ({"gateway": {"admin": {"allowedNamespaces": ["Bad_NS"]}}}, "allowedNamespaces"),
                       ({"gateway": {"routeStore": {"type": "consul"}}}, "/gateway/routeStore/type"),
                       # a URL where host:port belongs: the scheme comes from tls.enabled
                       ({"gateway": {"routeStore": {"etcd": {"endpoints": ["http://e:2379"]}}}}, "endpoints"),
                       ({"gateway": {"routeStore": {"etcd": {"leaseTTLSeconds": 1}}}}, "leaseTTLSeconds"),
                       ({"etcd": {"replicas": 2}}, "/etcd/replicas")):
        with pytest.raises(helm.HelmValuesError, match=where):
            chart.validate_schema(bad)


def _value_paths(values: Any, prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    yield prefix
    if isinstance(values, dict):
        for key, value in values.items():
            yield from _value_paths(value, (*prefix, key))


def test_schema_covers_every_value_and_refuses_the_rest(chart: helm.Chart) -> None:
    schema = chart.schema
    assert schema is not None

    def node(path: tuple[str, ...]) -> dict[str, Any]:
        current: dict[str, Any] = schema
        for key in path:
            while "$ref" in current:
                current = schema["$defs"][current["$ref"].rsplit("/", 1)[1]]
            if "properties" not in current:  # a free-form map (labels, annotations, nodeSelector, routes)
                assert current.get("type") in ("object", ["object", "null"]), path
                return {}
            assert key in current["properties"], f"{'.'.join(path)} is not in values.schema.json"
            assert current.get("additionalProperties") is False, path[: path.index(key)]
            current = current["properties"][key]
        return current

    with_defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    for path in _value_paths(with_defaults):
        node(path)
        described = node(path[:-1]) if path else schema
        assert described is not None
    for name in VALUES:
        for path in _value_paths(values_of(name) or {}):
            node(path)


def test_every_manifest_is_valid_kubernetes_1_32_strict(rendered: dict[str, Docs]) -> None:
    checked = 0
    for docs in rendered.values():
        for doc in docs:
            if doc["kind"] in CRD_MODELS:
                continue  # no schema in kubernetes-validate: checked against the CRD models below
            kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
            checked += 1
    assert checked >= len(VALUES) * 15


def test_strict_validation_catches_a_misplaced_field(rendered: dict[str, Docs]) -> None:
    deployment = json.loads(json.dumps(find(rendered["gpu"], "Deployment", "gateway")))
    deployment["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}  # a typo
    with pytest.raises(kubernetes_validate.ValidationError, match="readinesProbe"):
        kubernetes_validate.validate(deployment, KUBE_VERSION, strict=True)


def _crd_check(doc: dict[str, Any]) -> None:
    model = CRD_MODELS[doc["kind"]].model_validate(doc)
    # pydantic drops what the CRD does not know: a round trip that loses a key means the key is wrong.
    assert model.model_dump(by_alias=True, exclude_none=True, mode="json") == doc


def test_prometheus_operator_objects_match_their_crds_and_need_them(chart: helm.Chart,
                                                                    rendered: dict[str, Docs]) -> None:
    crd_objects = [doc for name, docs in rendered.items() if "monitoring" in name for doc in docs
                   if doc["kind"] in CRD_MODELS]
    assert len(crd_objects) == 7 and {doc["kind"] for doc in crd_objects} == set(CRD_MODELS)
    for doc in crd_objects:
        _crd_check(doc)
    monitor = find(rendered["monitoring"], "ServiceMonitor", "metrics")
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    endpoints = {e["port"]: e["path"] for e in monitor["spec"]["endpoints"]}
    assert endpoints == {"http": "/metrics", "metrics": "/metrics", "rest": "/monitoring/prometheus/metrics"}
    assert monitor["spec"]["jobLabel"] == "app.kubernetes.io/component"
    without_crds = render(chart, values_of("monitoring"))
    assert not [d for d in without_crds if d["kind"] in CRD_MODELS]
    with pytest.raises(AssertionError):
        _crd_check({**monitor, "spec": {**monitor["spec"], "endpoint": monitor["spec"]["endpoints"]}})


def test_checkov_passes_with_an_explicit_skip_list(rendered: dict[str, Docs], tmp_path: Path) -> None:
    for name, docs in rendered.items():
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump_all(docs))
    done = subprocess.run(
        [tool("checkov"), "-d", str(tmp_path), "--framework", "kubernetes", "--skip-download", "--compact",
         "--quiet", "--output", "json", "--skip-check", ",".join(CHECKOV_SKIPS)],
        capture_output=True, text=True, timeout=600, env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    report = json.loads(done.stdout)
    report = report[0] if isinstance(report, list) else report
    failed = [(c["check_id"], c["check_name"], c["resource"]) for c in report["results"]["failed_checks"]]
    assert failed == [], failed
    assert report["summary"]["parsing_errors"] == 0 and report["summary"]["passed"] > 100, report["summary"]


# ----------------------------------------------------------------------------- what the objects say


def test_gpu_limits_nodes_and_runtime_class_on_both_model_servers(rendered: dict[str, Docs]) -> None:
    for component in ("tfserving", "torchserve"):
        gpu = find(rendered["gpu"], "Deployment", component)["spec"]["template"]["spec"]
        assert gpu["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
        assert gpu["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in gpu["tolerations"]
        assert gpu["runtimeClassName"] == "nvidia"
        assert gpu["containers"][0]["image"].endswith("-gpu")
        default = find(rendered["default"], "Deployment", component)["spec"]["template"]["spec"]
        assert default["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
        cpu = find(rendered["cpu"], "Deployment", component)["spec"]["template"]["spec"]
        assert "nvidia.com/gpu" not in cpu["containers"][0]["resources"]["limits"]
        assert "tolerations" not in cpu and "runtimeClassName" not in cpu
        assert not cpu["containers"][0]["image"].endswith("-gpu")


def test_image_tags_match_docker_compose() -> None:
    """The same model server images as compose: TorchServe's is the derived one (onnxruntime, Pillow) it builds."""
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]
    gpu = yaml.safe_load((REPO / "docker-compose.gpu.yml").read_text())["services"]
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    for component in ("tfserving", "torchserve"):
        repository = defaults[component]["image"]["repository"]
        assert compose[component]["image"] == f"{repository}:{values_of('cpu')[component]['image']['tag']}"  # type: ignore[index]
        assert gpu[component]["image"] == f"{repository}:{values_of('gpu')[component]['image']['tag']}"  # type: ignore[index]
    assert defaults["torchserve"]["image"]["repository"] == "model-gateway-torchserve"
    assert gpu["torchserve"]["build"]["args"]["TORCHSERVE_IMAGE"] == (
        f"pytorch/torchserve:{defaults['torchserve']['image']['tag']}")


def test_model_server_probes_mean_models_loaded(rendered: dict[str, Docs]) -> None:
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    tf = container(find(rendered["gpu"], "Deployment", "tfserving"))
    expected = ["bash", "/etc/tfserving/ready.sh", "8501", *defaults["tfserving"]["models"]]
    for probe in ("startupProbe", "readinessProbe"):
        assert tf[probe]["exec"]["command"] == expected
    assert tf["startupProbe"]["failureThreshold"] * tf["startupProbe"]["periodSeconds"] == 600
    ts = container(find(rendered["gpu"], "Deployment", "torchserve"))
    for probe in ("startupProbe", "readinessProbe"):
        assert ts[probe]["exec"]["command"] == ["python", "/etc/torchserve/ready.py", *defaults["torchserve"]["models"]]
    gateway = container(find(rendered["gpu"], "Deployment", "gateway"), "gateway")
    assert gateway["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "http"}
    assert gateway["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert "startupProbe" in gateway


def test_grace_period_exceeds_drain_plus_the_longest_backend_call(chart: helm.Chart,
                                                                  rendered: dict[str, Docs]) -> None:
    routes = yaml.safe_load((REPO / "deploy/compose/routes.yaml").read_text())
    longest = max(float(b.get("timeout_s", 30)) for b in routes["backends"].values())
    spec = find(rendered["default"], "Deployment", "gateway")["spec"]["template"]["spec"]
    env = env_of(container({"spec": {"template": {"spec": spec}}}, "gateway"))
    assert spec["terminationGracePeriodSeconds"] > float(env["GATEWAY_DRAIN_S"]) + longest
    slow = {"gateway": {"drainSeconds": 30}}
    slow_spec = find(render(chart, slow), "Deployment", "gateway")["spec"]["template"]["spec"]
    assert slow_spec["terminationGracePeriodSeconds"] == 30 + int(longest) + 5
    with pytest.raises(helm.HelmError, match="must exceed drainSeconds"):
        render(chart, {"gateway": {"terminationGracePeriodSeconds": 10}})


def test_pdb_hpa_and_anti_affinity_keep_replicas_apart_and_up(chart: helm.Chart, rendered: dict[str, Docs]) -> None:
    docs = rendered["default"]
    selector = find(docs, "Deployment", "gateway")["spec"]["selector"]["matchLabels"]
    pdb = find(docs, "PodDisruptionBudget", "gateway")
    assert pdb["spec"] == {"maxUnavailable": 1, "selector": {"matchLabels": selector}}
    assert not [d for d in docs if d["kind"] == "HorizontalPodAutoscaler"]  # one replica on the file store
    assert find(docs, "Deployment", "gateway")["spec"]["replicas"] == 1
    ha = rendered["ha"]
    hpa = find(ha, "HorizontalPodAutoscaler", "gateway")
    assert hpa["spec"]["minReplicas"] >= 3 and hpa["spec"]["scaleTargetRef"]["name"] == f"{FULLNAME}-gateway"
    assert "replicas" not in find(ha, "Deployment", "gateway")["spec"]  # the HPA owns it
    # Preferred, not required: the HPA may scale past the number of nodes.
    assert "preferredDuringSchedulingIgnoredDuringExecution" in find(ha, "Deployment", "gateway")["spec"]["template"][
        "spec"]["affinity"]["podAntiAffinity"]
    affinity = find(docs, "Deployment", "gateway")["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]
    (term,) = affinity["preferredDuringSchedulingIgnoredDuringExecution"]
    assert term["podAffinityTerm"] == {"topologyKey": "kubernetes.io/hostname",
                                       "labelSelector": {"matchLabels": selector}}
    required = find(render(chart, {"gateway": {"antiAffinity": "required"}}), "Deployment", "gateway")
    (hard,) = required["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"]
    assert hard["topologyKey"] == "kubernetes.io/hostname"


def test_admin_port_is_not_exposed(rendered: dict[str, Docs]) -> None:
    for name, docs in rendered.items():
        public = find(docs, "Service", "gateway")
        tls = (values_of(name) or {}).get("gateway", {}).get("tls", {}).get("enabled")
        assert {p["name"]: p.get("appProtocol") for p in public["spec"]["ports"]} == (
            {"http": "https", "grpc": "https"} if tls else {"http": "http", "grpc": "kubernetes.io/h2c"}), name
        admin = find(docs, "Service", "admin")
        assert admin["spec"]["type"] == "ClusterIP" and [p["name"] for p in admin["spec"]["ports"]] == ["admin"]
        assert not [d for d in docs if d["kind"] == "Ingress"]
        policy = find(docs, "NetworkPolicy", "gateway")
        admin_rules = [r for r in policy["spec"]["ingress"] if {"port": "admin", "protocol": "TCP"} in r["ports"]]
        by_namespace = [r for r in admin_rules if "namespaceSelector" in r["from"][0]]
        allowed = (values_of(name) or {}).get("gateway", {}).get("admin", {}).get("allowedNamespaces") or [NAMESPACE]
        assert len(by_namespace) == 1 and by_namespace[0]["from"] == [
            {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns}}} for ns in allowed], name
        assert all(r.get("from") for r in admin_rules)
        token = find(docs, "Secret", "admin")
        assert set(token["data"]) == {"token"}
        gateway = container(find(docs, "Deployment", "gateway"), "gateway")
        env = env_of(gateway)
        assert env["GATEWAY_ADMIN_TOKEN_FILE"] == "/etc/gateway/admin/token"


def test_routes_configmap_equals_the_values_and_defaults_to_the_compose_file(chart: helm.Chart,
                                                                           rendered: dict[str, Docs]) -> None:
    shipped = find(rendered["default"], "ConfigMap", "routes")["data"]["routes.yaml"]
    assert shipped == (REPO / "deploy/compose/routes.yaml").read_text()
    routes = {"revision": 7, "backends": {"ts": {"kind": "torchserve", "url": "${TORCHSERVE_URL}", "timeout_s": 42}},
              "models": {"m": {"versions": {1: {"backend": "ts", "model": "m", "version": "1"}}}}}
    docs = render(chart, {"gateway": {"routes": routes}})
    assert yaml.safe_load(find(docs, "ConfigMap", "routes")["data"]["routes.yaml"]) == json.loads(json.dumps(routes))
    assert find(docs, "Deployment", "gateway")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 52


def test_model_servers_mount_the_files_the_local_stack_runs_with(rendered: dict[str, Docs]) -> None:
    docs = rendered["gpu"]
    tf = find(docs, "ConfigMap", "tfserving")["data"]
    assert tf["models.config"] == (REPO / "model_repo/tfserving/models.config").read_text()
    assert tf["monitoring.config"] == (REPO / "deploy/tfserving/monitoring.config").read_text()
    assert tf["ready.sh"] == (REPO / "deploy/tfserving/ready.sh").read_text()
    ts = find(docs, "ConfigMap", "torchserve")["data"]
    assert ts["config.properties"] == (REPO / "deploy/torchserve/config.properties").read_text()
    assert ts["ready.py"] == (REPO / "deploy/torchserve/ready.py").read_text()
    ts_args = container(find(docs, "Deployment", "torchserve"))["args"]
    assert ts_args[ts_args.index("--ts-config") + 1] == "/etc/torchserve/config.properties"
    tf_args = container(find(docs, "Deployment", "tfserving"))["args"]
    assert "--model_config_file=/etc/tfserving/models.config" in tf_args
    assert "--monitoring_config_file=/etc/tfserving/monitoring.config" in tf_args


def test_model_servers_are_headless_and_reached_by_the_gateway_per_pod(rendered: dict[str, Docs]) -> None:
    docs = rendered["default"]
    for component in ("tfserving", "torchserve"):
        assert find(docs, "Service", component)["spec"]["clusterIP"] == "None"
    env = env_of(container(find(docs, "Deployment", "gateway"), "gateway"))
    assert env["TFSERVING_GRPC_TARGET"] == f"dns:///{FULLNAME}-tfserving:8500"
    assert env["TORCHSERVE_URL"] == f"http://{FULLNAME}-torchserve:8080"
    assert "TORCHSERVE_KEY_FILE" not in env  # no token auth across pods unless a shared volume is given


def test_torchserve_token_auth_needs_a_shared_claim(chart: helm.Chart, rendered: dict[str, Docs]) -> None:
    assert "--disable-token-auth" in container(find(rendered["default"], "Deployment", "torchserve"))["args"]
    with pytest.raises(helm.HelmError, match="claimName"):
        render(chart, {"torchserve": {"tokenAuth": {"enabled": True, "claimName": ""}}})
    with pytest.raises(helm.HelmError, match="replicas: 1"):
        render(chart, {"torchserve": {"replicas": 2, "tokenAuth": {"enabled": True, "claimName": "keys"}}})
    docs = render(chart, {"torchserve": {"tokenAuth": {"enabled": True, "claimName": "keys"}}})
    ts = find(docs, "Deployment", "torchserve")["spec"]["template"]["spec"]
    assert "--disable-token-auth" not in ts["containers"][0]["args"]
    work = next(v for v in ts["volumes"] if v["name"] == "work")
    assert work["persistentVolumeClaim"]["claimName"] == "keys"
    assert ts["containers"][0]["workingDir"] == "/srv/torchserve"
    gateway = find(docs, "Deployment", "gateway")["spec"]["template"]["spec"]
    env = env_of(gateway["containers"][0])
    assert env["TORCHSERVE_KEY_FILE"] == "/srv/torchserve/key_file.json"
    keys = next(v for v in gateway["volumes"] if v["name"] == "torchserve-keys")
    assert keys["persistentVolumeClaim"] == {"claimName": "keys", "readOnly": True}


def test_models_come_from_the_models_image_or_a_pvc(chart: helm.Chart, rendered: dict[str, Docs]) -> None:
    spec = find(rendered["default"], "Deployment", "tfserving")["spec"]["template"]["spec"]
    (init,) = spec["initContainers"]
    assert init["image"] == "model-gateway-models:0.1.0" and "/models/tfserving/." in init["command"][-1]
    with pytest.raises(helm.HelmError, match="claimName is required"):
        render(chart, {"modelStorage": {"source": "pvc"}})
    docs = render(chart, {"modelStorage": {"source": "pvc", "pvc": {"claimName": "models"}}})
    for component, path in (("tfserving", "/models"), ("torchserve", "/srv/model-store")):
        spec = find(docs, "Deployment", component)["spec"]["template"]["spec"]
        assert "initContainers" not in spec
        mount = next(m for m in spec["containers"][0]["volumeMounts"] if m["name"] == "models")
        assert mount == {"name": "models", "mountPath": path, "readOnly": True, "subPath": component}


def test_every_object_carries_the_recommended_labels(rendered: dict[str, Docs]) -> None:
    for docs in rendered.values():
        for doc in docs:
            labels = doc["metadata"]["labels"]
            assert labels["app.kubernetes.io/name"] == "model-gateway"
            assert labels["app.kubernetes.io/instance"] == RELEASE
            assert labels["app.kubernetes.io/managed-by"] == "Helm"
            assert labels["helm.sh/chart"] == "model-gateway-0.1.0"
            assert doc["metadata"]["namespace"] == NAMESPACE


def test_helm_test_hook_sends_inference_through_the_gateway(rendered: dict[str, Docs]) -> None:
    job = find(rendered["default"], "Job", "test")
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "test"
    test = container({"spec": job["spec"]})
    env = env_of(test)
    assert env["GATEWAY_URL"] == f"http://{FULLNAME}-gateway:8000"
    assert [r["model"] for r in json.loads(env["REQUESTS"])] == ["affine", "scale", "digits_onnx"]
    assert "/v2/models/" in test["args"][0]


# ----------------------------------------------------------------------------- several replicas: the route store


def _subset(labels: dict[str, str], of: dict[str, str]) -> bool:
    return all(of.get(key) == value for key, value in labels.items())


def _admits(policy: dict[str, Any], port: str, labels: dict[str, str]) -> bool:
    """Whether a NetworkPolicy lets pods with these labels (same namespace) in on this named port."""
    return any({"port": port, "protocol": "TCP"} in rule["ports"] and any(
        "podSelector" in peer and _subset(peer["podSelector"]["matchLabels"], labels) for peer in rule.get("from", []))
        for rule in policy["spec"]["ingress"])


def _pod_labels(doc: dict[str, Any]) -> dict[str, str]:
    return doc["spec"]["template"]["metadata"]["labels"]  # type: ignore[no-any-return]


@pytest.mark.parametrize(("values", "refusal"), [
    ({"gateway": {"replicas": 3}}, "gateway.replicas is 3 with the file route store"),
    ({"gateway": {"autoscaling": {"enabled": True}}},
     "gateway.replicas is 1 and gateway.autoscaling is on with the file route store"),
], ids=["replicas", "hpa"])
def test_several_replicas_on_the_file_store_are_refused_unless_accepted(chart: helm.Chart, values: dict[str, Any],
                                                                       refusal: str) -> None:
    with pytest.raises(helm.HelmError, match=re.escape(refusal)):
        render(chart, values)
    accepted = {"gateway": {**values["gateway"], "routeStore": {"acceptSingleWriter": True}}}
    gateway = container(find(render(chart, accepted), "Deployment", "gateway"), "gateway")
    assert "GATEWAY_ROUTES_STORE" not in env_of(gateway)
    assert "SINGLE WRITER (gateway.routeStore.acceptSingleWriter)" in notes(chart, accepted)


def test_one_replica_on_the_file_store_says_where_its_changes_live(chart: helm.Chart) -> None:
    text = notes(chart, None)
    assert "Routes: one replica on its own copy of the routes ConfigMap" in text and "SINGLE WRITER" not in text


@pytest.mark.parametrize(("values", "refusal"), [
    ({"gateway": {"routeStore": {"type": "etcd"}}},
     "gateway.routeStore.type=etcd needs gateway.routeStore.etcd.endpoints"),
    ({"etcd": {"enabled": True}}, "which the file store does not use"),
    ({"gateway": {"routeStore": {"type": "etcd", "etcd": {"endpoints": ["e:2379"]}}}, "etcd": {"enabled": True}},
     "not both"),
    ({"gateway": {"routeStore": {"type": "etcd", "etcd": {"tls": {"enabled": True}}}}, "etcd": {"enabled": True}},
     "the bundled etcd (etcd.enabled) has no TLS and no users"),
    ({"gateway": {"routeStore": {"type": "etcd", "etcd": {"endpoints": ["e:2379"],
                                                           "tls": {"enabled": True, "clientCertificate": True}}}}},
     "clientCertificate needs tls.secretName"),
    ({"gateway": {"routeStore": {"type": "etcd", "etcd": {"endpoints": ["e:2379"], "auth": {"user": "gw"}}}}},
     "auth.user needs auth.passwordSecret"),
], ids=["no-members", "unused-bundle", "both", "bundled-tls", "cert-without-secret", "user-without-password"])
def test_route_store_settings_that_cannot_work_are_refused(chart: helm.Chart, values: dict[str, Any],
                                                           refusal: str) -> None:
    with pytest.raises(helm.HelmError, match=re.escape(refusal)):
        render(chart, values)


def test_bundled_etcd_is_a_statefulset_of_three_behind_a_headless_service_and_a_pdb(rendered: dict[str, Docs]) -> None:
    docs = rendered["ha"]
    sts, svc, pdb = (find(docs, kind, "etcd") for kind in ("StatefulSet", "Service", "PodDisruptionBudget"))
    spec, name, service = sts["spec"], sts["metadata"]["name"], svc["metadata"]["name"]
    assert spec["replicas"] == 3 and spec["podManagementPolicy"] == "Parallel" and spec["serviceName"] == service
    assert svc["spec"]["clusterIP"] == "None" and svc["spec"]["publishNotReadyAddresses"] is True
    selector = spec["selector"]["matchLabels"]
    assert svc["spec"]["selector"] == selector == pdb["spec"]["selector"]["matchLabels"]
    assert _subset(selector, _pod_labels(sts)) and pdb["spec"]["maxUnavailable"] == 1
    etcd = container(sts)
    args = dict(arg.removeprefix("--").split("=", 1) for arg in etcd["args"])
    hosts = [f"{name}-{i}.{service}.{NAMESPACE}.svc" for i in range(3)]  # the pods' stable DNS names
    assert args["initial-cluster"] == ",".join(f"{name}-{i}=http://{host}:2380" for i, host in enumerate(hosts))
    assert args["name"] == "$(POD_NAME)" and env_of(etcd)["POD_NAME"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert args["initial-advertise-peer-urls"] == f"http://$(POD_NAME).{service}.{NAMESPACE}.svc:2380"
    assert args["initial-cluster-state"] == "new"
    ports = {p["name"]: p["containerPort"] for p in etcd["ports"]}
    assert ports == {"client": 2379, "peer": 2380, "metrics": 2381}
    assert {p["targetPort"]: p["port"] for p in svc["spec"]["ports"]} == ports
    (mount,) = etcd["volumeMounts"]
    (claim,) = spec["volumeClaimTemplates"]
    assert claim["metadata"]["name"] == mount["name"] and args["data-dir"].startswith(mount["mountPath"] + "/")
    assert claim["spec"]["resources"]["requests"]["storage"] == "1Gi"
    assert etcd["readinessProbe"]["httpGet"] == {"path": "/health", "port": "metrics"}
    assert not [d for d in rendered["default"] + rendered["external-etcd"] if d["metadata"]["name"].endswith("-etcd")]


def test_ha_gateway_replicas_share_the_bundled_etcd_and_forward_to_the_leader(rendered: dict[str, Docs]) -> None:
    docs = rendered["ha"]
    deployment = find(docs, "Deployment", "gateway")
    spec = deployment["spec"]["template"]["spec"]
    gateway = container(deployment, "gateway")
    env = env_of(gateway)
    # The gateway's own settings parser reads the store the chart wrote: the bundled members, by their DNS names.
    settings = Settings.from_env({k: v for k, v in env.items() if isinstance(v, str)})
    sts = find(docs, "StatefulSet", "etcd")
    members = [f"{sts['metadata']['name']}-{i}.{sts['spec']['serviceName']}.{NAMESPACE}.svc:2379" for i in range(3)]
    assert settings.etcd is not None and settings.etcd.endpoints == tuple(members)
    assert settings.etcd.prefix == "/model-gateway" and not settings.etcd.tls and settings.etcd.lease_ttl_s == 10
    # The routes ConfigMap is the seed, read where it is mounted: no copy, no initContainer, nothing to write.
    mounts = {m["name"]: m["mountPath"] for m in gateway["volumeMounts"]}
    assert env["GATEWAY_ROUTES_FILE"] == f"{mounts['routes']}/routes.yaml"
    routes = next(v for v in spec["volumes"] if v["name"] == "routes")
    assert routes["configMap"]["name"] == find(docs, "ConfigMap", "routes")["metadata"]["name"]
    assert "initContainers" not in spec and "state" not in mounts
    assert "checksum/routes" not in deployment["spec"]["template"]["metadata"].get("annotations", {})
    # Every replica's admin API on the pod's address, one token for all: forwarded rollout writes carry it.
    assert env["GATEWAY_ADMIN_HOST"] == "0.0.0.0"
    names = [e["name"] for e in gateway["env"]]
    assert names.index("POD_IP") < names.index("GATEWAY_ADMIN_ADVERTISE_URL")  # $(POD_IP) expands only then
    assert env["POD_IP"] == {"fieldRef": {"fieldPath": "status.podIP"}}
    admin_port = next(p["containerPort"] for p in gateway["ports"] if p["name"] == "admin")
    assert env["GATEWAY_ADMIN_ADVERTISE_URL"] == f"http://$(POD_IP):{admin_port}"
    token = next(v for v in spec["volumes"] if v["name"] == "admin-token")
    assert token["secret"]["secretName"] == find(docs, "Secret", "admin")["metadata"]["name"]
    assert env["GATEWAY_ADMIN_TOKEN_FILE"].startswith(mounts["admin-token"] + "/")
    # values-monitoring.yaml adds the guards' Prometheus (every replica's metrics).
    assert "GATEWAY_GUARDS_PROMETHEUS_URL" not in env
    monitored = env_of(container(find(rendered["monitoring"], "Deployment", "gateway"), "gateway"))
    assert monitored["GATEWAY_GUARDS_PROMETHEUS_URL"] == "http://kube-prometheus-stack-prometheus.monitoring.svc:9090"
    # The README's production install: all of the above at once.
    production = rendered["gpu-monitoring-ha"]
    combined = env_of(container(find(production, "Deployment", "gateway"), "gateway"))
    assert combined["GATEWAY_ROUTES_STORE"] == env["GATEWAY_ROUTES_STORE"]
    assert combined["GATEWAY_GUARDS_PROMETHEUS_URL"] == monitored["GATEWAY_GUARDS_PROMETHEUS_URL"]
    assert find(production, "StatefulSet", "etcd") and find(production, "ServiceMonitor", "metrics")


def test_external_etcd_with_mutual_tls_and_a_password_file(rendered: dict[str, Docs], tmp_path: Path) -> None:
    docs = rendered["external-etcd"]
    deployment = find(docs, "Deployment", "gateway")
    spec = deployment["spec"]["template"]["spec"]
    gateway = container(deployment, "gateway")
    env = env_of(gateway)
    assert deployment["spec"]["replicas"] == 3 and "GATEWAY_ETCD_PASSWORD" not in env  # a file, never a value
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["etcd-tls"]["secret"]["secretName"] == "etcd-client-tls"
    assert volumes["etcd-auth"]["secret"]["secretName"] == "etcd-gateway"
    assert volumes["etcd-auth"]["secret"]["items"] == [{"key": "pw", "path": "pw"}]
    # Every *_FILE stood up where its Secret is mounted, read by the gateway's own settings parser.
    sources = {"etcd-client-tls": {name: f"{name} contents\n".encode() for name in ("ca.crt", "tls.crt", "tls.key")},
               "etcd-gateway": {"pw": b"pw contents\n"}}
    settings = Settings.from_env(stand_up(docs, deployment, gateway, tmp_path, sources))
    etcd = settings.etcd
    assert etcd is not None
    assert etcd.endpoints == ("etcd-a.db.svc:2379", "etcd-b.db.svc:2379", "etcd-c.db.svc:2379")
    assert etcd.prefix == "/team-a/gateway" and etcd.tls
    assert etcd.ca_file and etcd.cert_file and etcd.key_file
    assert [f.read_text() for f in (etcd.ca_file, etcd.cert_file, etcd.key_file)] == [
        f"{name} contents\n" for name in ("ca.crt", "tls.crt", "tls.key")]
    assert etcd.user == "gateway" and etcd.password == "pw contents"
    assert (etcd.timeout_s, etcd.lease_ttl_s) == (3, 6)
    assert settings.guards_prometheus_url == "http://prometheus.monitoring.svc:9090"
    assert settings.guards_prometheus_timeout_s == 4


def test_network_policies_let_replicas_reach_each_other_and_etcd(rendered: dict[str, Docs]) -> None:
    docs = rendered["ha"]
    gateway, etcd = _pod_labels(find(docs, "Deployment", "gateway")), _pod_labels(find(docs, "StatefulSet", "etcd"))
    tester = _pod_labels({"spec": find(docs, "Job", "test")["spec"]})
    to_gateway, to_etcd = find(docs, "NetworkPolicy", "gateway"), find(docs, "NetworkPolicy", "etcd")
    assert _subset(to_gateway["spec"]["podSelector"]["matchLabels"], gateway)
    assert _subset(to_etcd["spec"]["podSelector"]["matchLabels"], etcd)
    assert _admits(to_gateway, "admin", gateway) and not _admits(to_gateway, "admin", tester)
    assert _admits(to_etcd, "client", gateway) and not _admits(to_etcd, "client", tester)
    assert _admits(to_etcd, "peer", etcd) and not _admits(to_etcd, "peer", gateway)
    # With allowedNamespaces elsewhere (external-etcd's values) the replicas still reach each other.
    external = find(rendered["external-etcd"], "NetworkPolicy", "gateway")
    assert _admits(external, "admin", _pod_labels(find(rendered["external-etcd"], "Deployment", "gateway")))
    # The file store needs no pod-to-pod admin traffic.
    assert not _admits(find(rendered["default"], "NetworkPolicy", "gateway"), "admin", gateway)


def test_torchserve_loads_the_local_stacks_archives_from_the_models_image(rendered: dict[str, Docs]) -> None:
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    archives = [archive for _name, _version, archive in TORCHSERVE_MODELS]
    assert defaults["torchserve"]["archives"] == archives
    assert sorted(defaults["torchserve"]["models"]) == sorted({name for name, _v, _a in TORCHSERVE_MODELS})
    assert defaults["tfserving"]["models"] == list(TF_MODELS)
    ts = find(rendered["default"], "Deployment", "torchserve")["spec"]["template"]["spec"]
    args = ts["containers"][0]["args"]
    assert args[args.index("--models") + 1:] == archives
    # The models image holds all of model_repo/torchserve, the digits archives included.
    assert "COPY model_repo/torchserve /models/torchserve\n" in (REPO / "Dockerfile").read_text()
    assert all((REPO / "model_repo" / "torchserve" / archive).is_file() for archive in archives)
    (init,) = ts["initContainers"]
    assert init["command"] == ["sh", "-c", "cp -R /models/torchserve/. /target/"]


# ----------------------------------------------------------------------------- files that land later


@pytest.fixture
def chart_copy(tmp_path: Path) -> Path:
    """The chart with its files/ links resolved (as `helm package` does), to add dashboards and rules to."""
    copy = tmp_path / "model-gateway"
    shutil.copytree(CHART, copy, symlinks=False)
    return copy


def test_dashboards_and_rules_that_land_under_deploy_are_shipped(chart_copy: Path) -> None:
    """Whatever lands in deploy/grafana/dashboards and deploy/prometheus/rules is shipped, a new file included."""
    dashboard = {"title": "Landed later", "uid": "landed-later", "panels": []}
    (chart_copy / "files/dashboards/landed-later.json").write_text(json.dumps(dashboard))
    rules = {"groups": [{"name": "landed-later", "rules": [{"alert": "GatewayDown", "expr": "up{job=\"gateway\"} == 0",
                                                           "for": "1m", "labels": {"severity": "critical"}}]}]}
    (chart_copy / "files/rules/landed-later.yml").write_text(yaml.safe_dump(rules))
    (chart_copy / "files/rules/notes.yaml").write_text("rule_files: [gateway.yml]\n")  # not a rules file
    with helm.Chart.load(chart_copy) as copy:
        docs = render(copy, values_of("monitoring"), crds=True)
    shipped = {name: doc for doc in docs if doc["kind"] == "ConfigMap" for name in doc.get("data", {})
               if name.endswith(".json")}
    assert set(shipped) == {p.name for p in (chart_copy / "files/dashboards").glob("*.json")}
    assert json.loads(shipped["landed-later.json"]["data"]["landed-later.json"]) == dashboard
    assert all(doc["metadata"]["labels"]["grafana_dashboard"] == "1" for doc in shipped.values())
    rule = find(docs, "PrometheusRule", "rules")
    _crd_check(rule)
    expected = [group for path in sorted((chart_copy / "files/rules").glob("*.y*ml"))
                for group in (yaml.safe_load(path.read_text()) or {}).get("groups", [])]
    assert rule["spec"]["groups"] == expected and rules["groups"][0] in expected
    for doc in shipped.values():
        kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)


# ----------------------------------------------------------------------------- client authentication and TLS


def _pod_docs(docs: Docs) -> Docs:
    return [d for d in docs if d["kind"] in ("Deployment", "StatefulSet", "Job")]


def test_local_stack_defaults_keep_authentication_and_tls_off(rendered: dict[str, Docs]) -> None:
    for name in ("default", "gpu-monitoring-ha"):
        docs = rendered[name]
        env = env_of(container(find(docs, "Deployment", "gateway"), "gateway"))
        settings = Settings.from_env({k: v for k, v in env.items() if isinstance(v, str)})
        assert settings.auth_file is None and settings.tls_cert_file is None and settings.admin_tls_cert_file is None
        assert not [d for d in docs if d["metadata"]["name"] == f"{FULLNAME}-auth"]
        assert "API_KEY_FILE" not in env_of(container({"spec": find(docs, "Job", "test")["spec"]}))


@pytest.mark.parametrize("name", ["production", "gpu-monitoring-ha-production"])
def test_production_env_is_read_by_the_gateways_settings_from_the_mounted_files(rendered: dict[str, Docs],
                                                                                 tmp_path: Path, name: str) -> None:
    """The env the chart writes, with every file where its volume puts it, read by the gateway's own parsers: the
    settings, the policy from the chart's ConfigMap, the keys `gateway auth add-key` made, the certificate pair."""
    docs = rendered[name]
    deployment = find(docs, "Deployment", "gateway")
    gateway = container(deployment, "gateway")
    ca = CA()
    server = ca.issue(f"{FULLNAME}-gateway.{NAMESPACE}.svc")
    keys_file = tmp_path / "keys.yaml"
    add_key(keys_file, "team-a")
    sources = {"mg-api-keys": {"keys.yaml": keys_file.read_bytes()},
               "mg-tls": {"tls.crt": server.cert_pem, "tls.key": server.key_pem, "ca.crt": ca.pem}}
    settings = Settings.from_env(stand_up(docs, deployment, gateway, tmp_path / "pod", sources))
    assert settings.auth_file is not None and settings.auth_keys_file is not None
    policy = load_policy(settings.auth_file)
    assert set(policy.tenants) == set(POLICY["tenants"]) and policy.tenants["prometheus"].metrics
    assert [entry.tenant for entry in load_keys(settings.auth_keys_file, policy.tenants).entries] == ["team-a"]
    assert settings.auth_open == {"health", "metrics"} and settings.auth_reload_s == 1
    assert settings.tls_cert_file is not None and settings.tls_key_file is not None
    assert CertificateFiles(settings.tls_cert_file, settings.tls_key_file).pem == (server.cert_pem, server.key_pem)
    assert settings.admin_tls_cert_file is None  # see values-production.yaml: the admin API stays inside its policy
    policy_volume, key = mounted(deployment, gateway, env_of(gateway)["GATEWAY_AUTH_FILE"])
    assert policy_volume["configMap"]["name"] == find(docs, "ConfigMap", "auth")["metadata"]["name"]
    assert yaml.safe_load(find(docs, "ConfigMap", "auth")["data"][key]) == POLICY
    if "ha" in name:  # the route store is untouched by the security settings
        assert settings.etcd is not None and len(settings.etcd.endpoints) == 3


def test_other_policy_sources_jwks_admin_tls_and_a_closed_metrics_endpoint(rendered: dict[str, Docs],
                                                                           tmp_path: Path) -> None:
    docs = rendered["auth-variants-monitoring"]
    deployment = find(docs, "Deployment", "gateway")
    gateway = container(deployment, "gateway")
    ca = CA()
    public, admin = ca.issue(), ca.issue()
    keys_file = tmp_path / "keys.yaml"
    add_key(keys_file, "team-a")
    issuer = Issuer()
    policy = {"jwt": {"jwks_file": "/etc/gateway/jwks/jwks.json", "algorithms": ["RS256"]},
              "tenants": {"team-a": {"models": "*"}, "prometheus": {"models": {}, "metrics": True}}}
    sources = {"mg-auth": {"policy.yaml": yaml.safe_dump(policy).encode()},
               "mg-api-keys": {"hashed.yaml": keys_file.read_bytes()},
               "idp-jwks": {"jwks.json": json.dumps(issuer.jwks()).encode()},
               "mg-tls": {"tls.crt": public.cert_pem, "tls.key": public.key_pem},
               "mg-admin-tls": {"tls.crt": admin.cert_pem, "tls.key": admin.key_pem}}
    settings = Settings.from_env(stand_up(docs, deployment, gateway, tmp_path / "pod", sources))
    assert settings.auth_file is not None and settings.auth_keys_file is not None
    policy_read = load_policy(settings.auth_file)
    assert policy_read.jwt is not None and len(load_keys(settings.auth_keys_file, policy_read.tenants).entries) == 1
    assert mounted(deployment, gateway, env_of(gateway)["GATEWAY_AUTH_KEYS_FILE"])[1] == "hashed.yaml"
    assert mounted(deployment, gateway, env_of(gateway)["GATEWAY_AUTH_FILE"])[1] == "policy.yaml"
    assert settings.auth_open == {"health"} and settings.auth_reload_s == 2 and settings.tls_reload_s == 5
    assert settings.admin_tls_cert_file is not None and settings.admin_tls_key_file is not None
    assert settings.admin_tls_cert_file.read_bytes() == admin.cert_pem
    # The policy's jwks_file is where the JWKS ConfigMap is mounted.
    jwks, _ = mounted(deployment, gateway, policy["jwt"]["jwks_file"])  # type: ignore[index]
    assert jwks["configMap"] == {"name": "idp-jwks"}
    assert find(docs, "Service", "admin")["spec"]["ports"][0]["appProtocol"] == "https"
    # /metrics takes a key: the ServiceMonitor sends one of a tenant with metrics: true.
    (endpoint,) = [e for e in find(docs, "ServiceMonitor", "metrics")["spec"]["endpoints"] if e["port"] == "http"]
    assert endpoint["authorization"] == {"type": "Bearer", "credentials": {"name": "mg-prometheus-key", "key": "key"}}
    assert endpoint["tlsConfig"]["ca"] == {"secret": {"name": "corp-ca", "key": "root.pem"}}
    test = find(docs, "Job", "test")
    tester = container({"spec": test["spec"]})
    assert mounted(test, tester, env_of(tester)["API_KEY_FILE"])[1] == "plain"


def test_probes_scrapes_and_services_speak_tls_and_need_no_credentials(rendered: dict[str, Docs]) -> None:
    docs = rendered["gpu-monitoring-ha-production"]
    deployment = find(docs, "Deployment", "gateway")
    gateway = container(deployment, "gateway")
    env = env_of(gateway)
    open_without_credentials = env["GATEWAY_AUTH_OPEN"].split(",")
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert gateway[probe]["httpGet"]["scheme"] == "HTTPS" and gateway[probe]["httpGet"]["port"] == "http"
        assert gateway[probe]["httpGet"]["path"].startswith("/v2/health/") and "health" in open_without_credentials
    assert "metrics" in open_without_credentials
    (endpoint,) = [e for e in find(docs, "ServiceMonitor", "metrics")["spec"]["endpoints"] if e["port"] == "http"]
    assert endpoint["scheme"] == "https" and "authorization" not in endpoint
    assert endpoint["tlsConfig"] == {"ca": {"secret": {"name": "mg-tls", "key": "ca.crt"}},
                                     "serverName": f"{FULLNAME}-gateway.{NAMESPACE}.svc"}
    annotations = find(rendered["production"], "Deployment", "gateway")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scheme"] == "https" and annotations["prometheus.io/path"] == "/metrics"
    assert "prometheus.io/scheme" not in find(rendered["default"], "Deployment", "gateway")["spec"]["template"][
        "metadata"]["annotations"]


def test_helm_test_sends_a_key_and_checks_the_gateways_certificate(rendered: dict[str, Docs]) -> None:
    job = find(rendered["production"], "Job", "test")
    test = container({"spec": job["spec"]})
    env = env_of(test)
    assert env["GATEWAY_URL"] == f"https://{FULLNAME}-gateway.{NAMESPACE}.svc:8000"
    key, item = mounted(job, test, env["API_KEY_FILE"])
    assert key["secret"]["secretName"] == "mg-helm-test-key" and item == "key"
    ca, item = mounted(job, test, env["CA_FILE"])
    assert ca["secret"]["secretName"] == "mg-tls" and item == "ca.crt"
    assert [i["key"] for i in ca["secret"]["items"]] == ["ca.crt"]  # never the private key
    script = test["args"][0]
    assert 'os.environ["API_KEY_FILE"]' in script and "context=tls" in script


def test_secret_and_configmap_volumes_are_directories_never_subpath(rendered: dict[str, Docs]) -> None:
    """A subPath mount keeps the file it started with: a rotated certificate or a new key would never arrive."""
    mounted_files = 0
    for name, docs in rendered.items():
        for doc in _pod_docs(docs):
            spec = doc["spec"]["template"]["spec"]
            sources = {v["name"] for v in spec.get("volumes", []) if "secret" in v or "configMap" in v}
            for c in spec["containers"] + spec.get("initContainers", []):
                for mount in c.get("volumeMounts", []):
                    if mount["name"] in sources:
                        assert "subPath" not in mount, (name, doc["metadata"]["name"], mount)
                        mounted_files += 1
    assert mounted_files > 50


@pytest.mark.parametrize(("values", "refusals"), [
    ("values-production.yaml", ["exactly one policy source", "(none given)", "gateway.auth.keysSecret",
                                "helmTest.apiKeySecret", "gateway.tls.secretName"]),
    ({"gateway": {"auth": {"enabled": True, "policy": POLICY, "policyConfigMap": "cm", "keysSecret": "k"}},
      "helmTest": {"enabled": False}}, ["exactly one policy source", "(policy, cm given)"]),
    ({"gateway": {"auth": {"enabled": True, "policySecret": "s", "keysSecret": "k", "open": ["metrics"]}},
      "helmTest": {"enabled": False}}, ["gateway.auth.open must keep health"]),
    ({"gateway": {"auth": {"enabled": True, "policySecret": "s", "keysSecret": "k", "open": ["health"]}},
      "helmTest": {"enabled": False}, "metrics": {"serviceMonitor": {"enabled": True}}},
     ["metrics.serviceMonitor.apiKeySecret"]),
    ({"gateway": {"auth": {"enabled": True, "keysSecret": "k", "policy": {
        "tenants": {"a": {"models": "*"}}, "jwt": {"jwks_file": "/keys/jwks.json", "algorithms": ["RS256"]}}}},
      "helmTest": {"enabled": False}}, ["jwks_file must be /etc/gateway/jwks/KEY"]),
    ({"gateway": {"tls": {"enabled": True}}}, ["gateway.tls.enabled needs gateway.tls.secretName"]),
    ({"gateway": {"admin": {"tls": {"enabled": True}}}}, ["gateway.admin.tls.enabled needs"]),
    (("values-ha.yaml", {"gateway": {"tls": {"enabled": True, "secretName": "t"},
                                     "admin": {"tls": {"enabled": True}}}}),
     ["gateway.admin.tls with the etcd route store"]),
], ids=["production-alone", "two-policies", "health-closed", "metrics-closed", "jwks-unmounted", "tls-no-secret",
        "admin-tls-no-secret", "admin-tls-on-etcd"])
def test_security_settings_that_cannot_work_are_refused(chart: helm.Chart, values: ValuesSource,
                                                        refusals: list[str]) -> None:
    with pytest.raises(helm.HelmError) as refused:
        render(chart, values_from(values))
    for refusal in refusals:
        assert refusal in str(refused.value), (refusal, str(refused.value))


def test_jwt_only_policy_needs_no_keys_secret(chart: helm.Chart) -> None:
    jwt_only = {"tenants": {"a": {"models": "*"}},
                "jwt": {"jwks_url": "https://idp.example/jwks", "algorithms": ["ES256"]}}
    docs = render(chart, {"gateway": {"auth": {"enabled": True, "policy": jwt_only}}, "helmTest": {"enabled": False}})
    env = env_of(container(find(docs, "Deployment", "gateway"), "gateway"))
    assert "GATEWAY_AUTH_KEYS_FILE" not in env and env["GATEWAY_AUTH_FILE"].endswith("/auth.yaml")


def test_notes_say_how_to_call_and_how_to_add_a_key(chart: helm.Chart) -> None:
    text = notes(chart, values_of("production"))
    assert "Client authentication ON" in text and "TLS ON (REST and gRPC) from Secret mg-tls" in text
    assert "gateway auth add-key keys.yaml TENANT --policy auth.yaml" in text
    assert "get secret mg-api-keys -o jsonpath='{.data.keys\\.yaml}'" in text
    assert "create secret generic mg-api-keys --from-file=keys.yaml=keys.yaml" in text
    assert '-H "authorization: Bearer $API_KEY"' in text and "https://" in text
    plain = notes(chart, None)
    assert "Client authentication ON" not in plain and "TLS ON" not in plain and "API_KEY" not in plain
