"""Edits of TF Serving's models.config (gateway/control/tf_models_config.py): one model's version policy becomes an
explicit `specific` list with one version added or removed; every other model, field and label is kept, and the
printed text parses back (with the gateway's mirror and with TF Serving's own proto) to the same config."""

from __future__ import annotations

import pytest
from google.protobuf import text_format

from gateway.control import tf_models_config as tmc
from gateway.protos import tf_model_server_config_pb2 as tfc

CONFIG = """\
model_config_list {
  config {
    name: "affine"
    base_path: "/models/affine"
    model_platform: "tensorflow"
    model_version_policy { specific { versions: 1 } }
  }
  config {
    name: "mlp"
    base_path: "/models/mlp"
    model_platform: "tensorflow"
    model_version_policy { latest { num_versions: 2 } }
    version_labels { key: "stable" value: 1 }
    version_labels { key: "canary" value: 2 }
  }
  config { name: "multi" base_path: "/models/multi" model_platform: "tensorflow" }
  config {
    name: "every"
    base_path: "/models/every"
    model_platform: "tensorflow"
    model_version_policy { all {} }
  }
}
"""


def _models(config: tfc.ModelServerConfig) -> dict[str, tfc.ModelConfig]:
    return {m.name: m for m in config.model_config_list.config}


def _versions(config: tfc.ModelServerConfig, model: str) -> list[int]:
    item = _models(config)[model]
    assert tmc.policy_of(item) == "specific"
    return list(item.model_version_policy.specific.versions)


def _others_untouched(before: tfc.ModelServerConfig, after: tfc.ModelServerConfig, model: str) -> None:
    b, a = _models(before), _models(after)
    assert list(a) == list(b)  # same models, same order
    for name in b:
        if name != model:
            assert a[name] == b[name], name
    changed, original = tfc.ModelConfig(), tfc.ModelConfig()
    changed.CopyFrom(a[model])
    original.CopyFrom(b[model])
    changed.ClearField("model_version_policy")
    original.ClearField("model_version_policy")
    assert changed == original  # only the version policy of the edited model changed


def test_policies() -> None:
    config = tmc.parse(CONFIG)
    assert {m: tmc.policy_of(item) for m, item in _models(config).items()} == {
        "affine": "specific", "mlp": "latest", "multi": "latest", "every": "all"}
    assert tmc.served_versions(_models(config)["affine"], [5, 6]) == [1]  # specific: the file's list
    assert tmc.served_versions(_models(config)["mlp"], [2, 1, 2]) == [1, 2]  # latest: what TF reports AVAILABLE


def test_add_version_to_a_specific_policy() -> None:
    config = tmc.parse(CONFIG)
    out = tmc.with_version(config, "affine", 2)
    assert _versions(out, "affine") == [1, 2]
    assert _versions(config, "affine") == [1]  # a copy: the parsed config is unchanged
    _others_untouched(config, out, "affine")
    assert _versions(tmc.with_version(out, "affine", 2), "affine") == [1, 2]  # idempotent


@pytest.mark.parametrize("model", ["mlp", "multi", "every"])
def test_latest_and_all_become_specific_with_the_available_versions(model: str) -> None:
    config = tmc.parse(CONFIG)
    out = tmc.with_version(config, model, 3, available=[2, 1])
    assert _versions(out, model) == [1, 2, 3]
    _others_untouched(config, out, model)
    with pytest.raises(tmc.ModelsConfigError, match=rf"model '{model}' has a (latest|all) version policy and TF "
                                                    "Serving reports no AVAILABLE version"):
        tmc.with_version(config, model, 3, available=[])


def test_remove_version() -> None:
    config = tmc.with_version(tmc.parse(CONFIG), "affine", 2)
    out = tmc.without_version(config, "affine", 1)
    assert _versions(out, "affine") == [2]
    _others_untouched(config, out, "affine")
    assert _versions(tmc.without_version(out, "affine", 1), "affine") == [2]  # not listed: nothing to remove
    with pytest.raises(tmc.ModelsConfigError, match="would leave model 'affine' with no version"):
        tmc.without_version(out, "affine", 2)
    # latest -> specific, less the version
    latest = tmc.parse(CONFIG)
    assert _versions(tmc.without_version(latest, "multi", 1, available=[1, 2]), "multi") == [2]


def test_labelled_version_is_never_removed() -> None:
    config = tmc.parse(CONFIG)
    assert tmc.labels_on(config, "mlp", 1) == ["stable"]
    assert tmc.labels_on(config, "mlp", 3) == []
    with pytest.raises(tmc.ModelsConfigError, match=r"label\(s\) stable of model 'mlp' point at version 1"):
        tmc.without_version(config, "mlp", 1, available=[1, 2])
    out = tmc.with_version(config, "mlp", 3, available=[1, 2])
    assert dict(_models(out)["mlp"].version_labels) == {"stable": 1, "canary": 2}  # labels are not touched


def test_round_trip_through_text_format() -> None:
    config = tmc.parse(CONFIG)
    out = tmc.with_version(config, "mlp", 3, available=[1, 2])
    text = tmc.render(out)
    assert tmc.parse(text) == out
    assert "versions: 3" in text and 'name: "every"' in text
    # TF Serving reads the file with its own proto (package tensorflow.serving): the same message.
    model_server_config_pb2 = pytest.importorskip("tensorflow_serving.config.model_server_config_pb2")
    official = text_format.Parse(text, model_server_config_pb2.ModelServerConfig())
    assert official.SerializeToString(deterministic=True) == out.SerializeToString(deterministic=True)


def test_unknown_model_and_unreadable_files() -> None:
    with pytest.raises(tmc.ModelsConfigError, match="no model 'nope' in the model_config_list"):
        tmc.with_version(tmc.parse(CONFIG), "nope", 1)
    with pytest.raises(tmc.ModelsConfigError, match=r"models\.config: not a ModelServerConfig"):
        tmc.parse("model_config_list { config { name: ")
    # A field the gateway's mirror does not have is refused, not dropped on the next write.
    logging = CONFIG.replace('name: "multi"', 'name: "multi" logging_config { }')
    with pytest.raises(tmc.ModelsConfigError, match="logging_config"):
        tmc.parse(logging, "/srv/tf/models.config")
    with pytest.raises(tmc.ModelsConfigError, match="custom_model_config"):
        tmc.parse('custom_model_config { type_url: "x" }')


def test_with_entry_puts_one_model_back() -> None:
    config = tmc.parse(CONFIG)
    original = tfc.ModelConfig()
    original.CopyFrom(_models(config)["affine"])
    changed = tmc.with_version(tmc.with_version(config, "affine", 2), "mlp", 3, available=[1, 2])
    restored = tmc.with_entry(changed, original)
    assert _versions(restored, "affine") == [1]
    assert _versions(restored, "mlp") == [1, 2, 3]  # someone else's change stays
