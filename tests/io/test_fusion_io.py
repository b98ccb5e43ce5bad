"""AdapterFusion folders: round trips, AdapterHub's file names and schema, custom names, heads, and
transactional loading (a failed load leaves the model as it was)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from adapterkit import Fuse
from adapterkit.io import FUSION_CONFIG_NAME, FUSION_SAFE_WEIGHTS_NAME, FUSION_WEIGHTS_NAME
from tiny import randomize, tiny_inputs, tiny_model

GOLDEN = Path(__file__).parents[1] / "fixtures" / "golden" / "composition" / "bert"


def _model(seed: int = 0, fusion: str | None = "a,b", config: str = "dynamic", head: bool = False):
    model = tiny_model("bert", seed=seed)
    for i, name in enumerate("abc"):
        model.add_adapter(name)
        randomize(model, name, seed=i + 1)
    if head:
        model.add_classification_head("mine" if fusion == "mine" else "a,b", num_labels=2)
    if fusion is not None:
        spec = Fuse("b", "c", name="mine") if fusion == "mine" else Fuse(*fusion.split(","))
        model.add_adapter_fusion(spec, config=config)
        g = torch.Generator().manual_seed(seed + 7)
        with torch.no_grad():
            for k, p in model.named_parameters():
                if ".adapter_fusion_layer." in k:
                    p.add_(torch.randn(p.shape, generator=g) * 0.3)
    return model


def _fusion_state(model) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items() if ".adapter_fusion_layer." in k}


def _outputs(model, block) -> torch.Tensor:
    model.set_active_adapters(block)
    with torch.no_grad():
        return model.bert(**tiny_inputs()).last_hidden_state


@pytest.mark.parametrize("use_safetensors", [True, False])
def test_round_trip_gives_equal_outputs(tmp_path, use_safetensors):
    source = _model()
    expected = _outputs(source, Fuse("a", "b"))
    source.save_adapter_fusion(tmp_path, Fuse("a", "b"), use_safetensors=use_safetensors)
    weights = FUSION_SAFE_WEIGHTS_NAME if use_safetensors else FUSION_WEIGHTS_NAME
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([FUSION_CONFIG_NAME, weights])
    meta = json.loads((tmp_path / FUSION_CONFIG_NAME).read_text())
    assert meta["adapter_names"] == ["a", "b"] and meta["name"] == "a,b" and meta["model_type"] == "bert"
    assert set(meta["config"]) == {"key", "query", "value", "query_before_ln", "regularization", "residual_before",
                                   "temperature", "value_before_softmax", "value_initialized", "dropout_prob"}

    target = _model(seed=0, fusion=None)
    info: dict = {}
    assert target.load_adapter_fusion(tmp_path, set_active=True, loading_info=info) == "a,b"
    assert info == {"missing_keys": [], "unexpected_keys": []}
    assert target.active_adapters == Fuse("a", "b")
    torch.testing.assert_close(_outputs(target, Fuse("a", "b")), expected)


def test_custom_name_and_load_as(tmp_path):
    source = _model(fusion="mine", config="static")
    expected = _outputs(source, Fuse("b", "c", name="mine"))
    source.save_adapter_fusion(tmp_path, "mine")
    target = _model(fusion=None)
    assert target.load_adapter_fusion(tmp_path, set_active=True) == "mine"
    assert target.active_adapters == Fuse("b", "c", name="mine")
    torch.testing.assert_close(_outputs(target, Fuse("b", "c", name="mine")), expected)
    assert target.load_adapter_fusion(tmp_path, load_as="other") == "other"
    torch.testing.assert_close(_outputs(target, Fuse("b", "c", name="other")), expected)
    assert set(target.adapters_config.fusions) == {"mine", "other"}


def test_save_all_adapter_fusions(tmp_path):
    model = _model()
    model.add_adapter_fusion(Fuse("b", "c", name="mine"))
    model.save_all_adapter_fusions(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a,b", "mine"]
    meta = json.loads((tmp_path / "mine" / FUSION_CONFIG_NAME).read_text())
    assert meta["config_id"] == "39f0b9fc022449eb" and meta["adapter_names"] == ["b", "c"]


def test_adapterhub_folder_loads(tmp_path):
    """AdapterHub's default .bin file and its schema (fixture saved by adapters==1.3.0)."""
    folder = GOLDEN / "fusion_custom_name"
    assert (folder / FUSION_WEIGHTS_NAME).is_file()
    model = tiny_model("bert", seed=0)
    for name in "abc":
        model.load_adapter(GOLDEN / "adapters" / name, load_as=name, with_head=False)
    # the tiny model has other base weights than the fixture; only keys and shapes matter here
    assert model.load_adapter_fusion(folder) == "my_fusion"
    assert model.adapters_config.get_fusion("my_fusion")[1] == ["c", "a"]


def test_head_saved_and_loaded_with_the_fusion(tmp_path):
    source = _model(head=True)
    source.save_adapter_fusion(tmp_path, "a,b", with_head=True)
    assert (tmp_path / "head_config.json").is_file()
    source.set_active_adapters(Fuse("a", "b"))
    with torch.no_grad():
        expected = source(**tiny_inputs(), head="a,b").logits
    target = _model(fusion=None)
    target.load_adapter_fusion(tmp_path, set_active=True)
    with torch.no_grad():
        torch.testing.assert_close(target(**tiny_inputs(), head="a,b").logits, expected)
    with pytest.raises(ValueError, match="no head named 'x' to save with AdapterFusion 'a,b'"):
        source.save_adapter_fusion(tmp_path / "x", "a,b", with_head="x")


def test_reload_into_existing_fusion_keeps_parameter_objects(tmp_path):
    source = _model(seed=3)
    source.save_adapter_fusion(tmp_path, "a,b")
    target = _model(seed=0)
    params = {n: p for n, p in target.named_parameters() if ".adapter_fusion_layer." in n}
    target.load_adapter_fusion(tmp_path)
    for name, param in target.named_parameters():
        if ".adapter_fusion_layer." in name:
            assert param is params[name]
            torch.testing.assert_close(param, source.state_dict()[name])


def _unchanged(model, state, fusions, setup):
    assert set(model.adapters_config.fusions) == fusions
    assert model.active_adapters == setup
    now = model.state_dict()
    assert set(now) == set(state)
    for key, value in state.items():
        torch.testing.assert_close(now[key], value)


def test_failed_loads_leave_the_model_unchanged(tmp_path):
    source = _model(seed=3)
    source.save_adapter_fusion(tmp_path / "ok", "a,b")
    target = _model(seed=0)
    target.set_active_adapters(Fuse("a", "b"))
    state = {k: v.clone() for k, v in target.state_dict().items()}

    # weights that do not fit (wrong shape), into an existing fusion loaded in place
    bad = tmp_path / "shape"
    bad.mkdir()
    (bad / FUSION_CONFIG_NAME).write_text((tmp_path / "ok" / FUSION_CONFIG_NAME).read_text())
    weights = load_file(tmp_path / "ok" / FUSION_SAFE_WEIGHTS_NAME)
    key = next(k for k in weights if k.endswith("layer.1.output.adapter_fusion_layer.a,b.key.weight"))
    weights[key] = torch.zeros(4, 4)
    save_file(weights, bad / FUSION_SAFE_WEIGHTS_NAME)
    with pytest.raises(ValueError, match="has shape"):
        target.load_adapter_fusion(bad)
    _unchanged(target, state, {"a,b"}, Fuse("a", "b"))

    # another config under the same name: the fusion is replaced, then restored after the failure
    static = tmp_path / "static"
    other = _model(seed=4, fusion="a,b", config="static")
    other.save_adapter_fusion(static, "a,b")
    missing = load_file(static / FUSION_SAFE_WEIGHTS_NAME)
    missing.pop(next(iter(missing)))
    save_file(missing, static / FUSION_SAFE_WEIGHTS_NAME)
    with pytest.raises(ValueError, match="missing keys"):
        target.load_adapter_fusion(static)
    _unchanged(target, state, {"a,b"}, Fuse("a", "b"))
    assert "value" in dict(target.get_adapter_fusion("a,b")[0]["output_adapter"].named_children())

    # a corrupt weights file, and fused adapters the model does not have
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / FUSION_CONFIG_NAME).write_text((tmp_path / "ok" / FUSION_CONFIG_NAME).read_text())
    (corrupt / FUSION_SAFE_WEIGHTS_NAME).write_bytes(b"not safetensors")
    with pytest.raises(ValueError, match="cannot read"):
        target.load_adapter_fusion(corrupt, load_as="new")
    lacking = _model(seed=0, fusion=None)
    lacking.delete_adapter("b")
    with pytest.raises(ValueError, match=r"this model lacks \['b'\].*loading a fusion does not load its adapters"):
        lacking.load_adapter_fusion(tmp_path / "ok")
    _unchanged(target, state, {"a,b"}, Fuse("a", "b"))
    with pytest.raises(FileNotFoundError, match="no AdapterFusion at"):
        target.load_adapter_fusion(tmp_path / "nothing")


def test_bin_with_code_is_refused(tmp_path):
    source = _model()
    source.save_adapter_fusion(tmp_path, "a,b", use_safetensors=False)
    torch.save({"x": torch.zeros(1), "f": print}, tmp_path / FUSION_WEIGHTS_NAME)
    target = _model(fusion=None)
    with pytest.raises(ValueError, match="only plain tensor files are accepted"):
        target.load_adapter_fusion(tmp_path)
    assert not target.adapters_config.fusions
