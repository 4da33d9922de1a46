"""Rendering the Helm chart (deploy/k8s) in tests: Helm's own Go SDK (helm-python-sdk, no helm binary) with a release,
namespace and Kubernetes version, values files merged as `-f a -f b` merges them, and lookups into the manifests.
Also where a rendered pod's mounts are stood up as files, laid out as the kubelet lays out a Secret or ConfigMap
volume, so the gateway's own settings (and the gateway itself) can read what the chart wrote."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path
from typing import Any

import helm_python as helm
import yaml
from helm_python import _native

from tests.deploy.tools import REPO

CHART = REPO / "deploy" / "k8s"
KUBE_VERSION = "1.32.0"
NAMESPACE = "serving"
RELEASE = "mg"
FULLNAME = "mg-model-gateway"
PROMETHEUS_OPERATOR_APIS = ["monitoring.coreos.com/v1", "monitoring.coreos.com/v1/ServiceMonitor",
                            "monitoring.coreos.com/v1/PrometheusRule"]

Docs = list[dict[str, Any]]
#: What a test renders with: nothing (the defaults), a values file, a values document, or several of them in order.
ValuesSource = str | dict[str, Any] | tuple[str | dict[str, Any], ...] | None


def merged(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Values files given one after another (-f a -f b): maps merge, everything else is replaced."""
    out = dict(base)
    for key, value in over.items():
        out[key] = merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def values_from(source: ValuesSource) -> dict[str, Any] | None:
    if source is None:
        return None
    out: dict[str, Any] = {}
    for part in source if isinstance(source, tuple) else (source,):
        layer = yaml.safe_load((CHART / part).read_text()) if isinstance(part, str) else json.loads(json.dumps(part))
        out = merged(out, layer)
    return out


def render_files(chart: helm.Chart, values: dict[str, Any] | None, *, crds: bool = False) -> dict[str, str]:
    """Every rendered template by path. Capabilities (kube version, the prometheus-operator's API groups) need the
    SDK's native render options."""
    opts: dict[str, Any] = {"name": RELEASE, "namespace": NAMESPACE, "kube_version": f"v{KUBE_VERSION}"}
    if crds:
        opts["api_versions"] = PROMETHEUS_OPERATOR_APIS
    return json.loads(_native.call_string("helm_render", chart._raw(), json.dumps(values), json.dumps(opts)))  # type: ignore[no-any-return]


def notes(chart: helm.Chart, values: dict[str, Any] | None) -> str:
    return next(text for path, text in render_files(chart, values).items() if path.endswith("NOTES.txt"))


def render(chart: helm.Chart, values: dict[str, Any] | None, *, crds: bool = False) -> Docs:
    """The manifests of a release (NOTES.txt left out), as the cluster would receive them."""
    out = render_files(chart, values, crds=crds)
    docs: Docs = []
    for path, text in sorted(out.items()):
        if not path.endswith("NOTES.txt"):
            docs += [doc for doc in yaml.safe_load_all(text) if doc]
    return docs


def find(docs: Docs, kind: str, component: str) -> dict[str, Any]:
    (doc,) = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == f"{FULLNAME}-{component}"]
    return doc


def pod_spec(doc: dict[str, Any]) -> dict[str, Any]:
    return doc["spec"]["template"]["spec"]  # type: ignore[no-any-return]


def container(deployment: dict[str, Any], name: str | None = None) -> dict[str, Any]:
    return next(c for c in pod_spec(deployment)["containers"] if name is None or c["name"] == name)


def env_of(c: dict[str, Any]) -> dict[str, Any]:
    """A container's environment: each variable's value, or its valueFrom."""
    return {e["name"]: e["value"] if "value" in e else e["valueFrom"] for e in c["env"]}


def mounted(doc: dict[str, Any], c: dict[str, Any], path: str) -> tuple[dict[str, Any], str]:
    """The volume a file path of this container lies in, and the key of that volume's Secret or ConfigMap it shows."""
    directory, _, file = path.rpartition("/")
    (mount,) = [m for m in c["volumeMounts"] if m["mountPath"] == directory]
    (volume,) = [v for v in pod_spec(doc)["volumes"] if v["name"] == mount["name"]]
    source = volume.get("secret") or volume.get("configMap") or {}
    keys = [item["key"] for item in source.get("items", []) if item["path"] == file]
    return volume, keys[0] if keys else file


def project(directory: Path, files: dict[str, bytes]) -> None:
    """A Secret or ConfigMap volume as the kubelet writes it, and rewrites it on every update: the files in a
    timestamped directory, `..data` a symlink to it (swapped atomically), each name a symlink through `..data`."""
    directory.mkdir(parents=True, exist_ok=True)
    version = directory / f"..{time.time_ns()}"
    version.mkdir()
    for name, content in files.items():
        (version / name).write_bytes(content)
    staging = directory / "..data_tmp"
    staging.symlink_to(version.name)
    staging.replace(directory / "..data")
    for name in files:
        link = directory / name
        if not link.is_symlink():
            link.symlink_to(f"..data/{name}")


def stand_up(docs: Docs, doc: dict[str, Any], c: dict[str, Any], root: Path,
             sources: dict[str, dict[str, bytes]]) -> dict[str, str]:
    """The container's plain environment with every file it names under /etc moved to a local stand-in of the
    Secret or ConfigMap volume it lies in (root/VOLUME, laid out by :func:`project`). The Secrets and ConfigMaps are
    the release's own (from the docs) and those it expects to exist (``sources``: name -> key -> content)."""
    objects = {d["metadata"]["name"]: {k: base64.b64decode(v) for k, v in d["data"].items()} for d in docs
               if d["kind"] == "Secret"}
    objects.update({d["metadata"]["name"]: {k: v.encode() for k, v in d["data"].items()} for d in docs
                    if d["kind"] == "ConfigMap"})
    objects.update(sources)
    env = {key: value for key, value in env_of(c).items() if isinstance(value, str)}
    for key, value in env.items():
        if not (key.endswith("_FILE") and value.startswith("/etc/")):
            continue
        volume, _ = mounted(doc, c, value)
        local = root / volume["name"]
        if not local.exists():
            source = volume.get("secret") or volume["configMap"]
            content = objects[source.get("secretName") or source["name"]]
            items = source.get("items") or [{"key": k, "path": k} for k in content]
            project(local, {item["path"]: content[item["key"]] for item in items})
        env[key] = str(local / value.rpartition("/")[2])
    return env
