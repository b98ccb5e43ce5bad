"""AdapterFusion math: the layer against the formula written out by hand, and in a model (static and
dynamic configs, fusion attentions, left-out layers, Fuse inside other blocks)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from adapterkit import Average, Fuse, Parallel, Stack
from adapterkit.configs import AdapterFusionConfig, DynamicAdapterFusionConfig, StaticAdapterFusionConfig
from adapterkit.methods.fusion import AdapterFusionLayer, attention_dropout_of
from tiny import randomize, tiny_inputs, tiny_model

B, T, N, H = 2, 5, 3, 8


def _layer(config: AdapterFusionConfig, seed: int = 0) -> AdapterFusionLayer:
    torch.manual_seed(seed)
    layer = AdapterFusionLayer(config, H, 0.0, ["a", "b", "c"])
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    return layer.eval()


def _reference(layer: AdapterFusionLayer, q, ups, res, temperature: float = 1.0):
    """AdapterFusion written out per token with explicit sums."""
    cfg = layer.config
    if cfg.residual_before:
        ups = ups + res[:, :, None, :]
    qq = q @ layer.query.weight.T + layer.query.bias if cfg.query else q
    kk = ups @ layer.key.weight.T + layer.key.bias if cfg.key else ups
    vv = ups @ layer.value.weight.T if cfg.value and cfg.value_before_softmax else ups
    scores = torch.einsum("bth,btnh->btn", qq, kk)
    probs = torch.exp(scores / temperature) / torch.exp(scores / temperature).sum(-1, keepdim=True)
    out = torch.einsum("btn,btnh->bth", probs, vv)
    if cfg.value and not cfg.value_before_softmax:
        out = out @ layer.value.weight.T
    if not cfg.residual_before:
        out = out + res
    return out, probs


INPUTS = (torch.randn(B, T, H), torch.randn(B, T, N, H), torch.randn(B, T, H))
CONFIGS = {
    "static": StaticAdapterFusionConfig(),
    "dynamic": DynamicAdapterFusionConfig(),
    "residual_before": DynamicAdapterFusionConfig(residual_before=True),
    "value_after_softmax": DynamicAdapterFusionConfig(value_before_softmax=False),
    "no_query_key": StaticAdapterFusionConfig(query=False, key=False),
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_layer_matches_formula(name):
    layer = _layer(CONFIGS[name])
    out, probs = layer(*INPUTS)
    want_out, want_probs = _reference(layer, *INPUTS)
    torch.testing.assert_close(out, want_out)
    torch.testing.assert_close(probs, want_probs)
    assert probs.shape == (B, T, N)
    torch.testing.assert_close(probs.sum(-1), torch.ones(B, T))


def test_parameters_and_initialisation():
    dynamic = AdapterFusionLayer(DynamicAdapterFusionConfig(), H, 0.0, ["a", "b"])
    assert sorted(n for n, _ in dynamic.named_parameters()) == ["key.bias", "key.weight", "query.bias",
                                                               "query.weight", "value.weight"]
    expected = torch.full((H, H), 1e-6).fill_diagonal_(1.0)
    torch.testing.assert_close(dynamic.value.weight, expected, atol=0, rtol=0)
    static = AdapterFusionLayer(StaticAdapterFusionConfig(), H, 0.0, ["a", "b"])
    assert not hasattr(static, "value")
    # AdapterHub creates an unused Linear(h, 1) when no projection is enabled; its checkpoints name it
    bare = AdapterFusionLayer(StaticAdapterFusionConfig(query=False, key=False), H, 0.0, ["a"])
    assert sorted(n for n, _ in bare.named_parameters()) == ["dense.bias", "dense.weight"]


def test_temperature_steps_only_in_training():
    layer = _layer(DynamicAdapterFusionConfig(temperature=True))
    assert layer.T == 50.0
    layer(*INPUTS)
    assert layer.T == 50.0  # eval: no step (AdapterHub steps on every forward)
    layer.train()
    out, probs = layer(*INPUTS)
    want_out, want_probs = _reference(layer, *INPUTS, temperature=50.0)
    torch.testing.assert_close(probs, want_probs)
    assert layer.T == pytest.approx(49.95)
    for _ in range(2000):
        layer.T = max(layer.T - layer.reduction, 1.0)
    assert layer.T == 1.0


def test_attention_dropout_comes_from_the_model_config():
    assert attention_dropout_of(tiny_model("bert").config) == 0.1
    assert attention_dropout_of(tiny_model("gpt2").config) == 0.1  # attn_pdrop
    assert attention_dropout_of(object()) == 0.0
    model = tiny_model("bert")
    model.add_adapter("a")
    model.add_adapter_fusion(["a"], {**StaticAdapterFusionConfig().to_dict(), "dropout_prob": 0.0})
    assert model.get_adapter_fusion("a")[0]["output_adapter"].dropout.p == 0.0


# ---- in a model -------------------------------------------------------------------------------


def _fused_model(config="dynamic", adapter_config="seq_bn", names=("a", "b", "c")):
    model = tiny_model("bert")
    for i, name in enumerate(names):
        model.add_adapter(name, config=adapter_config)
        randomize(model, name, seed=i + 1)
    model.add_adapter_fusion(Fuse(*names), config=config, set_active=True)
    with torch.no_grad():
        for per_layer in model.get_adapter_fusion(Fuse(*names)).values():
            for layer in per_layer.values():
                for p in layer.parameters():
                    p.add_(torch.randn_like(p) * 0.3)
    return model


@pytest.mark.parametrize("config", ["static", "dynamic"])
def test_model_site_matches_formula(config):
    """Each BERT output sub-block computes LN(fusion(q = LN(h + r), u_i = f_i(q), res = h) + r)."""
    model = _fused_model(config)
    seen = []
    hooks = []
    for layer in model.bert.encoder.layer:
        out = layer.output
        hooks.append(out.register_forward_hook(lambda m, args, o: seen.append((m, args[0], args[1], o))))
    with torch.no_grad():
        model(**tiny_inputs())
    for h in hooks:
        h.remove()
    assert len(seen) == 2
    with torch.no_grad():
        for module, intermediate, r, got in seen:
            h = module.dense(intermediate)
            z = module.LayerNorm(h + r)
            ups = torch.stack([_f(module.adapters[n], z) for n in "abc"], dim=2)
            fused, _ = _reference(module.adapter_fusion_layer["a,b,c"], z, ups, h)
            torch.testing.assert_close(got, module.LayerNorm(fused + r))


def _f(adapter, x):
    return adapter.adapter_up(adapter.adapter_down(x)) * adapter.scaling


def test_uniform_identity_fusion_equals_average():
    """Zero query/key weights give uniform attention; with the identity value, Fuse = Average."""
    model = _fused_model("dynamic", names=("a", "b"))
    with torch.no_grad():
        for per_layer in model.get_adapter_fusion("a,b").values():
            for layer in per_layer.values():
                for p in [*layer.query.parameters(), *layer.key.parameters()]:
                    p.zero_()
                layer.value.weight.copy_(torch.eye(32))
        fused = model.bert(**tiny_inputs()).last_hidden_state
        model.set_active_adapters(Average("a", "b"))
        averaged = model.bert(**tiny_inputs()).last_hidden_state
    torch.testing.assert_close(fused, averaged)


def test_attentions_output_is_numpy_per_fusion_layer_location():
    model = _fused_model("dynamic", adapter_config="double_seq_bn")
    inputs = tiny_inputs(batch=3, seq=7)
    with torch.no_grad():
        plain = model(**inputs)
        out = model(**inputs, output_adapter_fusion_attentions=True)
    assert "adapter_fusion_attentions" not in plain
    torch.testing.assert_close(out.logits if "logits" in out else out.last_hidden_state,
                               plain.logits if "logits" in plain else plain.last_hidden_state)
    attentions = out.adapter_fusion_attentions
    assert set(attentions) == {"a,b,c"}
    assert set(attentions["a,b,c"]) == {0, 1}
    for per_location in attentions["a,b,c"].values():
        assert set(per_location) == {"mh_adapter", "output_adapter"}
        for probs in per_location.values():
            assert isinstance(probs, np.ndarray) and probs.shape == (3, 7, 3)
            np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-5)


def test_left_out_layer_has_no_fusion_and_runs_no_adapter():
    model = tiny_model("bert")
    model.add_adapter("a", config="seq_bn[leave_out=[0]]")
    model.add_adapter("b")
    randomize(model, "a")
    randomize(model, "b", seed=2)
    model.add_adapter_fusion(Fuse("a", "b"), set_active=True)
    assert set(model.get_adapter_fusion("a,b")) == {1}
    with torch.no_grad():
        out = model(**tiny_inputs(), output_adapter_fusion_attentions=True)
    assert set(out.adapter_fusion_attentions["a,b"]) == {1}
    # layer 0 runs nothing: the same as a model whose adapters exist only in layer 1
    other = tiny_model("bert")
    other.add_adapter("a", config="seq_bn[leave_out=[0]]")
    other.add_adapter("b", config="seq_bn[leave_out=[0]]")
    other.load_state_dict(model.state_dict(), strict=False)
    other.add_adapter_fusion(Fuse("a", "b"), set_active=True)
    other.load_state_dict(model.state_dict(), strict=False)
    with torch.no_grad():
        torch.testing.assert_close(other(**tiny_inputs()).last_hidden_state, out.last_hidden_state)


def test_fuse_of_a_stack_fuses_the_stack_output():
    model = tiny_model("bert")
    for i, name in enumerate(("lang", "a", "b")):
        model.add_adapter(name)
        randomize(model, name, seed=i)
    model.add_adapter_fusion(Fuse(Stack("lang", "a"), "b"), set_active=True)
    assert model.adapters_config.get_fusion("a,b") == (model.adapters_config.fusions["a,b"], ["a", "b"])
    with torch.no_grad():
        stacked = model.bert(**tiny_inputs()).last_hidden_state
        model.set_active_adapters(Fuse("a", "b"))
        plain = model.bert(**tiny_inputs()).last_hidden_state
    assert not torch.allclose(stacked, plain)


def test_fuse_inside_parallel_concatenates_attention_rows():
    model = _fused_model("dynamic", names=("a", "b"))
    model.add_adapter("c")
    model.set_active_adapters(Parallel(Fuse("a", "b"), "c"))
    with torch.no_grad():
        out = model.bert(**tiny_inputs(batch=2), output_adapter_fusion_attentions=True)
        model.set_active_adapters(Fuse("a", "b"))
        alone = model.bert(**tiny_inputs(batch=2)).last_hidden_state
    assert out.last_hidden_state.shape[0] == 4
    torch.testing.assert_close(out.last_hidden_state[:2], alone)
    assert out.adapter_fusion_attentions["a,b"][0]["output_adapter"].shape == (2, 9, 2)
