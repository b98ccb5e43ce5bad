"""Saving and loading adapters and heads: format, options, and failures that leave the model unchanged."""

from __future__ import annotations

import json
import pickle

import pytest
import torch
from safetensors.torch import load_file

from adapterkit.io import (
    CONFIG_NAME,
    HEAD_CONFIG_NAME,
    HEAD_SAFE_WEIGHTS_NAME,
    SAFE_WEIGHTS_NAME,
    WEIGHTS_NAME,
)
from tiny import randomize, tiny_inputs, tiny_model


def _trained(arch="bert", config="seq_bn"):
    model = tiny_model(arch)
    model.add_adapter("a", config=config)
    model.add_classification_head("a", num_labels=3)
    randomize(model, "a")
    model.set_active_adapters("a")
    return model


def _logits(model, **kwargs):
    with torch.no_grad():
        return model(**tiny_inputs(), **kwargs).logits


def test_file_layout_and_json_schema(tmp_path):
    model = _trained()
    model.save_adapter(tmp_path, "a")
    assert {p.name for p in tmp_path.iterdir()} == {
        CONFIG_NAME,
        SAFE_WEIGHTS_NAME,
        HEAD_CONFIG_NAME,
        HEAD_SAFE_WEIGHTS_NAME,
    }
    meta = json.loads((tmp_path / CONFIG_NAME).read_text())
    assert set(meta) == {
        "config",
        "hidden_size",
        "model_class",
        "model_name",
        "model_type",
        "name",
        "version",
    }
    assert (meta["model_class"], meta["model_type"], meta["name"], meta["hidden_size"]) == (
        "BertAdapterModel",
        "bert",
        "a",
        32,
    )
    keys = set(load_file(tmp_path / SAFE_WEIGHTS_NAME))
    assert "bert.encoder.layer.0.output.adapters.a.adapter_down.0.weight" in keys
    assert all(".adapters.a." in k for k in keys)
    assert set(load_file(tmp_path / HEAD_SAFE_WEIGHTS_NAME)) == {
        "heads.a.1.weight",
        "heads.a.1.bias",
        "heads.a.4.weight",
        "heads.a.4.bias",
    }


@pytest.mark.parametrize("arch", ["bert", "gpt2", "llama", "distilbert"])
@pytest.mark.parametrize("config", ["double_seq_bn", "lora[intermediate_lora=True]", "ia3"])
def test_round_trip_gives_same_predictions(tmp_path, arch, config):
    model = _trained(arch, config)
    model.save_adapter(tmp_path, "a")
    fresh = tiny_model(arch)
    fresh.load_adapter(tmp_path, set_active=True)
    torch.testing.assert_close(_logits(fresh), _logits(model), atol=0, rtol=0)


def test_bin_format_and_load_as(tmp_path):
    model = _trained()
    model.save_adapter(tmp_path, "a", use_safetensors=False)
    assert (tmp_path / WEIGHTS_NAME).is_file() and not (tmp_path / SAFE_WEIGHTS_NAME).exists()
    fresh = tiny_model("bert")
    assert fresh.load_adapter(tmp_path, load_as="b", set_active=True) == "b"
    assert "b" in fresh.heads and fresh.active_head == "b"
    torch.testing.assert_close(_logits(fresh), _logits(model), atol=0, rtol=0)


def test_without_head_and_id2label(tmp_path):
    model = _trained()
    model.save_adapter(tmp_path, "a")
    no_head = tiny_model("bert")
    no_head.load_adapter(tmp_path, with_head=False)
    assert "a" not in no_head.heads
    relabeled = tiny_model("bert")
    relabeled.load_adapter(tmp_path, id2label={0: "neg", 1: "neu", 2: "pos"})
    assert relabeled.get_labels("a") == ["neg", "neu", "pos"]


def test_leave_out_at_load(tmp_path):
    model = _trained()
    model.save_adapter(tmp_path, "a")
    fresh = tiny_model("bert")
    info: dict = {}
    fresh.load_adapter(tmp_path, leave_out=[0], loading_info=info)
    assert 0 not in fresh.get_adapter("a") and 1 in fresh.get_adapter("a")
    assert fresh.adapters_config.get("a").leave_out == [0]
    assert info["unexpected_keys"] and all(".layer.0." in k for k in info["unexpected_keys"])


def test_save_all_adapters(tmp_path):
    model = _trained()
    model.add_adapter("l", config="lora")
    model.save_all_adapters(tmp_path)
    assert (tmp_path / "a" / CONFIG_NAME).is_file() and (tmp_path / "l" / CONFIG_NAME).is_file()
    assert json.loads((tmp_path / "l" / CONFIG_NAME).read_text())["config_id"] == "625403edad0bf919"


def test_adapter_moves_between_adapter_model_and_plain_model(tmp_path):
    from transformers import BertModel

    import adapterkit

    model = _trained()
    model.save_adapter(tmp_path, "a")
    torch.manual_seed(0)
    plain = adapterkit.init(BertModel(model.config, add_pooling_layer=True).eval())
    plain.load_state_dict(model.bert.state_dict(), strict=False)
    plain.load_adapter(tmp_path, set_active=True)
    with torch.no_grad():
        torch.testing.assert_close(
            plain(**tiny_inputs()).last_hidden_state,
            model.bert(**tiny_inputs()).last_hidden_state,
            atol=0,
            rtol=0,
        )


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _unchanged(model, before, adapters):
    after = model.state_dict()
    return (
        set(model.adapters_config) == adapters
        and after.keys() == before.keys()
        and all(torch.equal(after[k], before[k]) for k in before)
    )


@pytest.mark.parametrize(
    "corrupt",
    [
        "config_json",
        "weights",
        "missing_weights",
        "hidden_size",
        "model_type",
        "missing_key",
        "unexpected_key",
        "shape",
    ],
)
def test_failed_load_leaves_model_as_it_was(tmp_path, corrupt):
    model = _trained()
    model.save_adapter(tmp_path, "a")
    weights = load_file(tmp_path / SAFE_WEIGHTS_NAME)
    meta = json.loads((tmp_path / CONFIG_NAME).read_text())
    if corrupt == "config_json":
        (tmp_path / CONFIG_NAME).write_text("{not json")
    elif corrupt == "weights":
        (tmp_path / SAFE_WEIGHTS_NAME).write_bytes(b"garbage")
    elif corrupt == "missing_weights":
        (tmp_path / SAFE_WEIGHTS_NAME).unlink()
    elif corrupt in ("hidden_size", "model_type"):
        meta[corrupt] = 64 if corrupt == "hidden_size" else "gpt2"
        (tmp_path / CONFIG_NAME).write_text(json.dumps(meta))
    else:
        from safetensors.torch import save_file

        key = next(iter(weights))
        if corrupt == "missing_key":
            del weights[key]
        elif corrupt == "unexpected_key":
            weights[key.replace("adapter_down.0", "adapter_sideways")] = weights[key].clone()
        else:
            weights[key] = torch.zeros(3, 3)
        save_file(weights, tmp_path / SAFE_WEIGHTS_NAME)
    target = tiny_model("bert")
    target.add_adapter("a", config="lora")  # an existing adapter of the same name must survive a failed load
    randomize(target, "a")
    before = _state(target)
    with pytest.raises((ValueError, FileNotFoundError)):
        target.load_adapter(tmp_path)
    assert _unchanged(target, before, {"a"})
    assert target.adapters_config.get("a").method == "lora"


class _Evil:
    def __reduce__(self):
        return (print, ("code ran",))


def test_bin_with_code_is_refused(tmp_path):
    model = _trained()
    model.save_adapter(tmp_path, "a", use_safetensors=False, with_head=False)
    with open(tmp_path / WEIGHTS_NAME, "wb") as f:
        pickle.dump({"x": _Evil()}, f)
    with pytest.raises(ValueError, match="only plain tensor files"):
        tiny_model("bert").load_adapter(tmp_path)


def test_legacy_version_fixes(tmp_path):
    model = tiny_model("bert")
    model.add_adapter("a", config="lora[r=4, alpha=16]")
    model.save_adapter(tmp_path, "a")
    meta = json.loads((tmp_path / CONFIG_NAME).read_text())
    meta["version"] = "adapters.1.0.1"
    (tmp_path / CONFIG_NAME).write_text(json.dumps(meta))
    fresh = tiny_model("bert")
    fresh.load_adapter(tmp_path)
    assert fresh.adapters_config.get("a").alpha == 4


def test_plain_transformers_model_saves_and_loads_its_own_head(tmp_path):
    from transformers import BertForSequenceClassification

    import adapterkit

    def fresh():
        torch.manual_seed(0)
        model = BertForSequenceClassification(tiny_model("bert").config)
        model.config.id2label, model.config.label2id = {0: "neg", 1: "pos"}, {"neg": 0, "pos": 1}
        return adapterkit.init(model).eval()

    model = fresh()
    model.add_adapter("a", config="lora", set_active=True)
    randomize(model, "a")
    with torch.no_grad():
        model.classifier.weight.add_(1.0)  # a trained head differs from a fresh model's
        expected = model(**tiny_inputs()).logits
    model.save_adapter(tmp_path, "a")
    meta = json.loads((tmp_path / HEAD_CONFIG_NAME).read_text())
    assert meta["config"] is None and meta["model_class"] == "BertForSequenceClassification"
    assert set(load_file(tmp_path / HEAD_SAFE_WEIGHTS_NAME)) == {"classifier.weight", "classifier.bias"}
    loaded = fresh()
    loaded.config.id2label = {0: "x", 1: "y"}
    loaded.load_adapter(tmp_path, set_active=True)
    with torch.no_grad():
        torch.testing.assert_close(loaded(**tiny_inputs()).logits, expected, atol=0, rtol=0)
    assert loaded.config.id2label == {0: "neg", 1: "pos"}
