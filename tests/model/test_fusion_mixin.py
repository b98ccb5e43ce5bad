"""AdapterFusion model API: add/delete/validate, train_adapter_fusion, the regularization loss, devices,
and full-model round trips."""

from __future__ import annotations

import pytest
import torch
from transformers import BertForSequenceClassification

import adapterkit
from adapterkit import AutoAdapterModel, Fuse, Stack
from adapterkit.configs import DynamicAdapterFusionConfig, StaticAdapterFusionConfig
from tiny import randomize, tiny_inputs, tiny_model


def _model(names=("a", "b", "c"), head: str | None = None):
    model = tiny_model("bert")
    for i, name in enumerate(names):
        model.add_adapter(name)
        randomize(model, name, seed=i + 1)
    if head is not None:
        model.add_classification_head(head, num_labels=2)
    return model


def _fusion_params(model, name):
    return [p for per_layer in model.get_adapter_fusion(name).values() for m in per_layer.values()
            for p in m.parameters()]


@pytest.mark.parametrize(
    ("spec", "name"),
    [(Fuse("a", "b"), "a,b"), (["a", "b"], "a,b"), ("a,b", "a,b"), (Fuse("a", "b", name="ab"), "ab")],
)
def test_add_forms_and_names(spec, name):
    model = _model()
    model.add_adapter_fusion(spec, set_active=True)
    assert model.adapters_config.get_fusion(name) == (DynamicAdapterFusionConfig(), ["a", "b"])
    assert set(model.get_adapter_fusion(name)) == {0, 1}
    assert "adapter_fusion_layer" in dict(model.bert.encoder.layer[0].output.named_children())
    assert model.active_adapters.name == name
    keys = [k for k in model.state_dict() if ".adapter_fusion_layer." in k]
    assert f"bert.encoder.layer.0.output.adapter_fusion_layer.{name}.query.weight" in keys
    assert len(keys) == 2 * 5  # query w/b, key w/b, value w per layer


def test_custom_name_argument_and_config_forms():
    model = _model()
    model.add_adapter_fusion(["a", "c"], config="static", name="mine")
    model.add_adapter_fusion(Fuse("b", "c"), config=StaticAdapterFusionConfig().to_dict())
    assert model.adapters_config.get_fusion("mine") == (StaticAdapterFusionConfig(), ["a", "c"])
    assert not hasattr(model.get_adapter_fusion("b,c")[0]["output_adapter"], "value")


def test_add_errors_leave_the_model_unchanged():
    model = _model()
    model.add_adapter("lo", config="lora")
    model.add_adapter("mh", config="double_seq_bn[output_adapter=False]")
    cases = [
        (["a", "x"], {}, "cannot fuse adapter 'x': this model has no adapter of that name"),
        (["a", "lo"], {}, "cannot fuse adapter 'lo': lora adapters do not support Fuse"),
        (["a", "a"], {}, "names an adapter twice"),
        (["a", "mh"], {}, r"share no adapter site"),
        (["a", "b"], {"config": "fancy"}, "unknown AdapterFusion config 'fancy'"),
        (["a", "b"], {"name": "a.b"}, "AdapterFusion name 'a.b' is not allowed"),
    ]
    before = set(model.state_dict())
    for spec, kwargs, message in cases:
        with pytest.raises(ValueError, match=message):
            model.add_adapter_fusion(spec, **kwargs)
    assert set(model.state_dict()) == before and not model.adapters_config.fusions


def test_duplicate_and_overwrite():
    model = _model()
    model.add_adapter_fusion(["a", "b"])
    with pytest.raises(ValueError, match="an AdapterFusion named 'a,b' exists already"):
        model.add_adapter_fusion(["a", "b"], config="static")
    model.add_adapter_fusion(["a", "b"], config="static", overwrite_ok=True)
    assert model.adapters_config.fusions["a,b"] == StaticAdapterFusionConfig()


def test_a_fuse_needs_its_fusion_layer():
    model = _model()
    with pytest.raises(ValueError, match=r"needs an AdapterFusion named 'a,b'.*add_adapter_fusion"):
        model.set_active_adapters(Fuse("a", "b"))
    with pytest.raises(ValueError, match="needs an AdapterFusion named 'f'"):
        model.set_active_adapters(Stack("c", Fuse("a", "b", name="f")))
    model.add_adapter_fusion(["a", "b"], name="f")
    with pytest.raises(ValueError, match=r"fuses \['a', 'c'\], but AdapterFusion 'f' was added for \['a', 'b'\]"):
        model.set_active_adapters(Fuse("a", "c", name="f"))
    model.set_active_adapters(Stack("c", Fuse("a", "b", name="f")))
    assert model.active_adapters is not None
    assert model.active_adapters == Stack("c", Fuse("a", "b", name="f"))


def test_delete_fusion_removes_layers_and_deactivates():
    model = _model()
    model.add_adapter_fusion(Fuse("a", "b"), set_active=True)
    model.delete_adapter_fusion(Fuse("a", "b"))
    assert not model.adapters_config.fusions and model.active_adapters is None
    assert not any(".adapter_fusion_layer." in k for k in model.state_dict())
    model.delete_adapter_fusion("a,b")  # unknown: ignored


def test_deleting_an_adapter_deletes_its_fusions_but_reloading_keeps_them(tmp_path):
    model = _model()
    model.add_adapter_fusion(["a", "b"])
    model.add_adapter_fusion(["b", "c"], name="bc")
    fusion_state = {k: v.clone() for k, v in model.state_dict().items() if ".adapter_fusion_layer.bc." in k}
    model.save_adapter(tmp_path / "c", "c")
    model.load_adapter(tmp_path / "c")  # reload: fusion "bc" is kept, with its weights
    assert set(model.adapters_config.fusions) == {"a,b", "bc"}
    for key, value in fusion_state.items():
        torch.testing.assert_close(model.state_dict()[key], value)
    model.delete_adapter("a")
    assert set(model.adapters_config.fusions) == {"bc"}
    assert not any(".adapter_fusion_layer.a,b." in k for k in model.state_dict())


def test_train_adapter_fusion_trains_only_fusion_and_head():
    model = _model(head="task")
    model.add_adapter_fusion(["a", "b", "c"])
    model.add_adapter_fusion(["a", "b"])  # not in the setup: stays frozen
    model.train_adapter_fusion(Fuse("a", "b", "c"))
    assert model.training and model.active_adapters == Fuse("a", "b", "c")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".adapter_fusion_layer.a,b,c." in n or n.startswith("heads.task.") for n in trainable)
    assert any(n.startswith("heads.task.") for n in trainable)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    labels = torch.tensor([0, 1, 1])
    for _ in range(3):
        loss = model(**tiny_inputs(), labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and changed <= trainable
    assert any(".adapter_fusion_layer.a,b,c." in n for n in changed)


def test_train_adapter_fusion_can_unfreeze_adapters():
    model = _model(head="task")
    model.add_adapter_fusion(["a", "b"])
    model.train_adapter_fusion(Stack("c", Fuse("a", "b")), unfreeze_adapters=True)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    for name in ("a", "b", "c"):
        assert any(f".adapters.{name}." in n for n in trainable)
    assert any(".adapter_fusion_layer.a,b." in n for n in trainable)


def test_train_adapter_fusion_needs_a_fuse():
    model = _model()
    with pytest.raises(ValueError, match="train_adapter_fusion needs a setup with a Fuse block"):
        model.train_adapter_fusion("a")


def test_train_adapter_fusion_on_a_static_head_model():
    torch.manual_seed(0)
    model = adapterkit.init(BertForSequenceClassification(tiny_model("bert").config))
    model.add_adapter("a")
    model.add_adapter("b")
    model.add_adapter_fusion(["a", "b"])
    model.train_adapter_fusion(Fuse("a", "b"))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert "classifier.weight" in trainable and any(".adapter_fusion_layer." in n for n in trainable)
    assert not any(".adapters." in n for n in trainable)


def test_regularization_loss():
    model = _model()
    model.add_adapter_fusion(["a", "b"])  # dynamic: value initialised to the identity (+1e-6)
    model.add_adapter_fusion(["b", "c"], config="static")  # no value
    model.add_adapter_fusion(["a", "c"], config=DynamicAdapterFusionConfig(regularization=False))
    assert model.get_fusion_regularization_loss() is not None  # all trainable after add, like AdapterHub
    model.train_adapter_fusion(Fuse("a", "b"))
    values = [m.value.weight for per_layer in model.get_adapter_fusion("a,b").values() for m in per_layer.values()]
    with torch.no_grad():
        for v in values:
            v.add_(0.1)
    expected = sum(0.01 * (torch.eye(32) - v).pow(2).sum() for v in values)
    torch.testing.assert_close(model.get_fusion_regularization_loss(), expected)
    model.freeze_model(True)
    assert model.get_fusion_regularization_loss() is None


def test_adapter_fusion_to_casts_only_that_fusion():
    model = _model()
    model.add_adapter_fusion(["a", "b"])
    model.add_adapter_fusion(["b", "c"])
    model.adapter_fusion_to("a,b", dtype=torch.float64)
    assert all(p.dtype == torch.float64 for p in _fusion_params(model, "a,b"))
    assert all(p.dtype == torch.float32 for p in _fusion_params(model, "b,c"))


def test_adapters_config_schema():
    model = _model()
    model.add_adapter_fusion(["a", "b"])
    model.add_adapter_fusion(["b", "c"], config=DynamicAdapterFusionConfig(temperature=True), name="custom")
    data = model.adapters_config.to_dict()
    [key] = data["fusion_config_map"]
    assert data["fusions"] == {"a,b": "dynamic", "custom": key}
    assert data["fusion_config_map"][key]["temperature"] is True
    assert data["fusion_name_map"] == {"custom": ["b", "c"]}


def test_full_model_round_trip_with_fusions(tmp_path):
    model = _model(head="task")
    model.add_adapter_fusion(["a", "b", "c"], config="static")
    model.add_adapter_fusion(Fuse("c", "a", name="mine"))
    for name in ("a,b,c", "mine"):
        with torch.no_grad():
            for p in _fusion_params(model, name):
                p.add_(torch.randn_like(p) * 0.3)
    setup = Stack("b", Fuse("c", "a", name="mine"))
    model.set_active_adapters(setup)
    with torch.no_grad():
        expected = model(**tiny_inputs(), head="task").logits
    model.save_pretrained(tmp_path)
    loaded = AutoAdapterModel.from_pretrained(tmp_path).eval()
    assert loaded.adapters_config.fusion_adapters == {"a,b,c": ("a", "b", "c"), "mine": ("c", "a")}
    assert loaded.adapters_config.fusions["a,b,c"] == StaticAdapterFusionConfig()
    loaded.set_active_adapters(setup)
    with torch.no_grad():
        torch.testing.assert_close(loaded(**tiny_inputs(), head="task").logits, expected)


def test_legacy_v1_fusion_config_keys():
    config = tiny_model("bert").config
    config.adapters = {"adapters": {"a": "seq_bn", "b": "seq_bn"}, "config_map": {}}
    config.adapter_fusion_models = [["a", "b"]]
    config.adapter_fusion = StaticAdapterFusionConfig().to_dict()
    model = AutoAdapterModel.from_config(config)
    assert model.adapters_config.get_fusion("a,b") == (StaticAdapterFusionConfig(), ["a", "b"])
