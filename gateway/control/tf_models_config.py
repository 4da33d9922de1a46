"""TF Serving's models.config (``--model_config_file``): parse, edit one model's versions, print. Pure functions.

The file is a text-format ``ModelServerConfig`` with a ``model_config_list``. TF Serving may poll it
(``--model_config_file_poll_wait_seconds``), so the file is the source of truth: a rollout edits the file and
then sends the same whole list with HandleReloadConfigRequest. An edit touches one model's
``model_version_policy`` only, always leaving it ``specific`` with an explicit list of versions; every other
model, field and label is kept as parsed. A ``latest`` or ``all`` policy (or none, which is ``latest``) is first
translated to the versions TF Serving reports AVAILABLE, so that an edit never changes what is served beyond
the one version added or removed.

Parsing is strict: a field the gateway's mirror of the proto does not have (``logging_config``) or a
``custom_model_config`` is refused rather than dropped on the next write. Comments and layout are not kept:
the file is printed again with ``text_format``.
"""

from __future__ import annotations

from collections.abc import Iterable

from google.protobuf import text_format

from gateway.errors import InvalidChange
from gateway.protos import tf_model_server_config_pb2 as tfc

__all__ = ["ModelsConfigError", "entry", "labels_on", "parse", "policy_of", "render", "served_versions",
           "with_entry", "with_version", "without_version"]


class ModelsConfigError(InvalidChange):
    """A models.config the gateway cannot read or edit as asked; the message says why."""


def parse(text: str, source: str = "models.config") -> tfc.ModelServerConfig:
    config = tfc.ModelServerConfig()
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as exc:
        raise ModelsConfigError(f"{source}: not a ModelServerConfig the gateway can edit: {exc}") from None
    if config.WhichOneof("config") == "custom_model_config":
        raise ModelsConfigError(f"{source}: has a custom_model_config; only a model_config_list can be edited")
    return config


def render(config: tfc.ModelServerConfig) -> str:
    return str(text_format.MessageToString(config))


def entry(config: tfc.ModelServerConfig, model: str) -> tfc.ModelConfig:
    """The model's entry in the list (the message itself: edits of it are edits of ``config``)."""
    item: tfc.ModelConfig
    for item in config.model_config_list.config:
        if item.name == model:
            return item
    raise ModelsConfigError(f"no model {model!r} in the model_config_list (the gateway adds versions to a model "
                            "TF Serving is configured with; add the model to the file first)")


def policy_of(item: tfc.ModelConfig) -> str:
    """``specific``, ``latest`` or ``all``; no policy at all is TF Serving's default, ``latest``."""
    return item.model_version_policy.WhichOneof("policy_choice") or "latest"


def served_versions(item: tfc.ModelConfig, available: Iterable[int]) -> list[int]:
    """The versions the entry asks TF Serving to serve, explicitly: a ``specific`` list as it is, otherwise the
    ``available`` versions (those TF Serving reports AVAILABLE). Sorted, without duplicates."""
    if policy_of(item) == "specific":
        return sorted(set(item.model_version_policy.specific.versions))
    return sorted(set(available))


def labels_on(config: tfc.ModelServerConfig, model: str, version: int) -> list[str]:
    """The model's version_labels that point at ``version``, sorted."""
    return sorted(label for label, v in entry(config, model).version_labels.items() if v == version)


def _set_specific(item: tfc.ModelConfig, versions: list[int]) -> None:
    policy = item.model_version_policy
    policy.Clear()
    policy.specific.SetInParent()
    policy.specific.versions.extend(versions)


def _copy(config: tfc.ModelServerConfig) -> tfc.ModelServerConfig:
    out = tfc.ModelServerConfig()
    out.CopyFrom(config)
    return out


def with_version(config: tfc.ModelServerConfig, model: str, version: int,
                 available: Iterable[int] = ()) -> tfc.ModelServerConfig:
    """A copy where ``model`` serves ``specific`` {the versions it serves now, plus ``version``}."""
    out = _copy(config)
    item = entry(out, model)
    served = served_versions(item, available)
    if not served and policy_of(item) != "specific":
        raise ModelsConfigError(f"model {model!r} has a {policy_of(item)} version policy and TF Serving reports no "
                                "AVAILABLE version of it: which versions to keep cannot be told")
    _set_specific(item, sorted({*served, version}))
    return out


def without_version(config: tfc.ModelServerConfig, model: str, version: int,
                    available: Iterable[int] = ()) -> tfc.ModelServerConfig:
    """A copy where ``model`` serves ``specific`` {the versions it serves now, less ``version``}. Refused when a
    label points at that version (TF Serving would refuse the config) or when no version would be left."""
    out = _copy(config)
    item = entry(out, model)
    labels = labels_on(out, model, version)
    if labels:
        raise ModelsConfigError(f"label(s) {', '.join(labels)} of model {model!r} point at version {version}")
    kept = [v for v in served_versions(item, available) if v != version]
    if not kept:
        raise ModelsConfigError(f"removing version {version} would leave model {model!r} with no version")
    _set_specific(item, kept)
    return out


def with_entry(config: tfc.ModelServerConfig, item: tfc.ModelConfig) -> tfc.ModelServerConfig:
    """A copy with the model of that name replaced by ``item`` (added at the end when it is not there)."""
    out = _copy(config)
    for existing in out.model_config_list.config:
        if existing.name == item.name:
            existing.CopyFrom(item)
            return out
    out.model_config_list.config.add().CopyFrom(item)
    return out
