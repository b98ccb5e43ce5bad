"""Compacter: PHM layers (methods/phm.py) checked against the Kronecker-sum formula, and Compacter adapters
on every architecture (shared parameters, training, persistence, seeds, leave_out, composition)."""

from __future__ import annotations

import copy

import pytest
import torch

from adapterkit import (
    AdapterSetup,
    AutoAdapterModel,
    Average,
    BatchSplit,
    CompacterConfig,
    CompacterPlusPlusConfig,
    Fuse,
    Parallel,
    Split,
    Stack,
)
from adapterkit.configs import AdapterConfig, BnConfig
from adapterkit.methods.phm import PHMLayer, SharedPHMParameters
from tiny import ARCHS, randomize, tiny_inputs, tiny_model

COMPACTER = "compacter[reduction_factor=4]"
COMPACTER_PP = "compacter++[reduction_factor=4]"


def _config(**kwargs) -> BnConfig:
    return CompacterPlusPlusConfig(**{"reduction_factor": 4, **kwargs})


def _randomized(module: torch.nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in [*module.parameters(), *module.buffers()]:
            t.copy_(torch.randn(t.shape, generator=g))


def _kron_sum(rule: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return sum(torch.kron(rule[i], weight[i]) for i in range(rule.shape[0]))


# ---- the layer ---------------------------------------------------------------------------------
@pytest.mark.parametrize("factorized_w", [True, False])
@pytest.mark.parametrize("factorized_rule", [True, False])
@pytest.mark.parametrize("bias", [True, False])
def test_phm_layer_is_x_times_kronecker_sum_plus_bias(factorized_w, factorized_rule, bias):
    config = _config(
        phm_dim=2, phm_rank=3, shared_phm_rule=False, factorized_phm_W=factorized_w,
        factorized_phm_rule=factorized_rule, phm_bias=bias,
    )
    layer = PHMLayer(8, 6, "down", config)
    _randomized(layer)
    w = layer.W_left @ layer.W_right if factorized_w else layer.W
    rule = layer.phm_rule_left @ layer.phm_rule_right if factorized_rule else layer.phm_rule
    assert w.shape == (2, 4, 3) and rule.shape == (2, 2, 2)
    h = _kron_sum(rule, w)
    torch.testing.assert_close(layer.kernel(), h)
    x = torch.randn(2, 5, 8)
    torch.testing.assert_close(layer(x), x @ h + (layer.b if bias else 0))
    names = {n for n, _ in layer.named_parameters()}
    expected = ({"W_left", "W_right"} if factorized_w else {"W"}) | (
        {"phm_rule_left", "phm_rule_right"} if factorized_rule else {"phm_rule"}
    )
    assert names == expected | ({"b"} if bias else set())


@pytest.mark.parametrize("factorized_w", [True, False])
def test_shared_rule_and_weights_come_from_the_shared_module(factorized_w):
    config = _config(phm_dim=4, phm_rank=2, shared_W_phm=True, factorized_phm_W=factorized_w)
    shared = SharedPHMParameters(32, 8, config)
    _randomized(shared)
    down, up = PHMLayer(32, 8, "down", config, shared), PHMLayer(8, 32, "up", config, shared)
    assert {n for n, _ in down.named_parameters()} == {"b"}  # the shared tensors are not the layer's
    keys = {n for n, _ in shared.named_parameters()}
    if factorized_w:
        assert keys == {"phm_rule", "W_down_left", "W_down_right", "W_up_left", "W_up_right"}
        assert shared.W_up_left.shape == (4, 2, 2) and shared.W_up_right.shape == (4, 2, 8)
        w_down, w_up = shared.W_down_left @ shared.W_down_right, shared.W_up_left @ shared.W_up_right
    else:  # AdapterHub 1.3.0 fails here (UnboundLocalError in init_shared_parameters)
        assert keys == {"phm_rule", "W_down", "W_up"}
        w_down, w_up = shared.W_down, shared.W_up
    torch.testing.assert_close(down.kernel(), _kron_sum(shared.phm_rule, w_down))
    torch.testing.assert_close(up.kernel(), _kron_sum(shared.phm_rule, w_up))


def test_fixed_rule_is_a_buffer_and_sizes_are_checked():
    layer = PHMLayer(8, 4, "up", _config(shared_phm_rule=False, learn_phm=False))
    assert "phm_rule" in dict(layer.named_buffers()) and "phm_rule" in layer.state_dict()
    assert "phm_rule" not in dict(layer.named_parameters())
    with pytest.raises(ValueError, match="phm_dim=4 does not divide .* size 6"):
        PHMLayer(8, 6, "down", _config(shared_phm_rule=False))
    with pytest.raises(ValueError, match="needs the adapter's SharedPHMParameters"):
        PHMLayer(8, 4, "down", _config())
    with pytest.raises(ValueError, match="position='side'"):
        PHMLayer(8, 4, "side", _config(shared_phm_rule=False))


@pytest.mark.parametrize(
    ("kwargs", "check"),
    [
        ({"hypercomplex_nonlinearity": "glorot-uniform"}, lambda w: w.abs().max() <= (6 / (4 + 1)) ** 0.5),
        ({"hypercomplex_nonlinearity": "normal", "phm_init_range": 1e-3}, lambda w: w.std() < 3e-3),
        ({"hypercomplex_nonlinearity": "glorot-normal"}, lambda w: 0.2 < w.std() < 2.0),
    ],
)
def test_weight_initialisation(kwargs, check):
    layer = PHMLayer(64, 16, "down", _config(shared_phm_rule=False, factorized_phm_W=False, **kwargs))
    assert check(layer.W)
    assert torch.equal(layer.b, torch.zeros(16))


def test_rule_initialisation():
    normal = PHMLayer(8, 4, "down", _config(shared_phm_rule=False, phm_init_range=1e-4))
    assert normal.phm_rule.abs().max() < 1e-3
    uniform = PHMLayer(8, 4, "down", _config(shared_phm_rule=False, phm_c_init="uniform"))
    assert uniform.phm_rule.abs().max() <= 0.01


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("phm_dim", 0),
        ("phm_rank", 1.5),
        ("phm_init_range", -1.0),
        ("hypercomplex_nonlinearity", "tanh"),
        ("phm_c_init", "zeros"),
        ("shared_W_phm", "yes"),
    ],
)
def test_phm_keys_are_validated(key, value):
    with pytest.raises(ValueError, match=key):
        _config(**{key: value})
    BnConfig(mh_adapter=True, output_adapter=False, reduction_factor=2, non_linearity="relu", **{key: value})


def test_presets_and_aliases_match_adapterhub():
    c = AdapterConfig.load("compacter")
    assert isinstance(c, CompacterConfig) and c.phm_layer and c.mh_adapter and c.output_adapter
    assert (c.reduction_factor, c.non_linearity, c.original_ln_before) == (32, "gelu", False)
    pp = AdapterConfig.load("compacter++")
    assert isinstance(pp, CompacterPlusPlusConfig) and pp.phm_layer and not pp.mh_adapter
    assert (pp.reduction_factor, pp.non_linearity, pp.original_ln_before) == (32, "gelu", True)


def test_alias_defaults_need_a_bottleneck_phm_dim_divides(bert):
    with pytest.raises(ValueError, match="phm_dim=4 does not divide"):  # 32 // 32 = 1
        bert.add_adapter("c", config="compacter")
    assert not bert.has_adapters() and not hasattr(bert.bert, "shared_parameters")


# ---- Compacter adapters in models ---------------------------------------------------------------
@pytest.mark.parametrize("arch", ARCHS)
def test_compacter_on_every_architecture(arch):
    model = tiny_model(arch)
    with torch.no_grad():
        base = model(**tiny_inputs()).last_hidden_state
    model.add_adapter("c", config=COMPACTER)
    randomize(model, "c")
    prefix = model.base_model_prefix
    shared_keys = [k for k in model.state_dict() if ".shared_parameters." in k]
    assert shared_keys == [f"{prefix}.shared_parameters.c.phm_rule"]
    assert len([m for per_layer in model.get_adapter("c").values() for m in per_layer.values()]) == 4
    model.set_active_adapters("c")
    with torch.no_grad():
        active = model(**tiny_inputs()).last_hidden_state
        model.base_model.shared_parameters["c"].phm_rule.mul_(2)  # every layer reads the one shared rule
        doubled = model(**tiny_inputs()).last_hidden_state
    assert not torch.allclose(active, base, atol=1e-4) and not torch.allclose(active, doubled, atol=1e-5)
    model.delete_adapter("c")
    assert not hasattr(model.base_model, "shared_parameters")
    assert not any("adapters" in k for k in model.state_dict())
    with torch.no_grad():
        assert torch.equal(model(**tiny_inputs()).last_hidden_state, base)


def test_shared_w_needs_one_bottleneck_size(bert):
    with pytest.raises(ValueError, match="shared_W_phm=True needs one bottleneck size"):
        bert.add_adapter("c", config=_config(shared_W_phm=True, reduction_factor={"0": 4, "default": 8}))
    assert not bert.has_adapters() and not hasattr(bert.bert, "shared_parameters")
    bert.add_adapter("c", config=_config(reduction_factor={"0": 4, "default": 8}))  # a shared rule is fine
    assert bert.get_adapter("c")[1]["output_adapter"].adapter_up.in_features == 4


def test_train_adapter_trains_only_that_adapter_and_the_head():
    model = tiny_model("bert")
    model.add_adapter("c", config=_config(shared_W_phm=True))
    model.add_adapter("other", config=COMPACTER)
    model.add_adapter("fixed", config=_config(learn_phm=False, shared_phm_rule=False))
    model.add_classification_head("c", num_labels=2)
    model.train_adapter("c")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert "bert.shared_parameters.c.phm_rule" in trainable and "bert.shared_parameters.c.W_up_left" in trainable
    assert all(".c." in n or n.startswith("heads.c.") for n in trainable)
    assert any(".adapters.c.adapter_down.0.b" in n for n in trainable)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    for _ in range(2):
        loss = model(**tiny_inputs(), labels=torch.tensor([0, 1, 1])).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed <= trainable and "bert.shared_parameters.c.phm_rule" in changed
    assert any(n.startswith("heads.c.") for n in changed)
    model.train_adapter("fixed")  # learn_phm=False: the rules stay constants (buffers)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and not any("phm_rule" in n for n in trainable)
    summary = {row["name"]: row for row in model.adapter_summary(as_dict=True)}
    assert summary["c"]["#param"] == sum(
        p.numel() for n, p in model.named_parameters() if ".c." in n and not n.startswith("heads.")
    )


@pytest.mark.parametrize("arch", ["bert", "gpt2"])
def test_save_load_round_trip_with_shared_parameters(arch, tmp_path):
    model = tiny_model(arch)
    model.add_adapter("c", config=_config(shared_W_phm=True, phm_dim=2, phm_rank=2), set_active=True)
    randomize(model, "c")
    with torch.no_grad():
        for p in model.base_model.shared_parameters["c"].parameters():
            p.add_(torch.randn_like(p))
        expected = model(**tiny_inputs()).last_hidden_state
    model.save_adapter(tmp_path / "c", "c")
    other = tiny_model(arch)
    info: dict = {}
    other.load_adapter(tmp_path / "c", set_active=True, loading_info=info, load_as="d")
    assert info == {"missing_keys": [], "unexpected_keys": []}
    assert f"{other.base_model_prefix}.shared_parameters.d.W_down_left" in other.state_dict()
    with torch.no_grad():
        torch.testing.assert_close(other(**tiny_inputs()).last_hidden_state, expected, atol=1e-6, rtol=0)
    model.save_pretrained(tmp_path / "full")
    full = AutoAdapterModel.from_pretrained(tmp_path / "full").eval()
    full.set_active_adapters("c")
    with torch.no_grad():
        torch.testing.assert_close(full(**tiny_inputs()).last_hidden_state, expected, atol=1e-5, rtol=0)


def test_init_weights_seed_and_leave_out():
    model = tiny_model("llama")
    seeded = _config(init_weights_seed=3, shared_phm_rule=False, mh_adapter=True)
    model.add_adapter("x", config=seeded)
    model.add_adapter("y", config=seeded)
    x, y = model.get_adapter("x"), model.get_adapter("y")
    for layer in x:
        for location in x[layer]:
            for (n, p), q in zip(x[layer][location].named_parameters(), y[layer][location].parameters(), strict=True):
                assert torch.equal(p, q), n
                assert torch.equal(p, dict(x[0]["mh_adapter"].named_parameters())[n])  # across layers too
    model.add_adapter("z", config=_config(leave_out=[0]))
    assert set(model.get_adapter("z")) == {1}
    model.add_adapter("all_out", config=_config(leave_out=[0, 1]))
    assert "all_out" not in model.base_model.shared_parameters  # no layer uses it


def test_compacter_in_composition_blocks():
    model = tiny_model("gpt2")
    for i, name in enumerate(("a", "b")):
        model.add_adapter(name, config=COMPACTER if name == "a" else COMPACTER_PP)
        randomize(model, name, seed=10 + i)
    inputs = tiny_inputs(batch=4)

    def run(setup, **kwargs):
        model.set_active_adapters(setup)
        with torch.no_grad():
            return model(**inputs, **kwargs).last_hidden_state

    base, a, b = run(None), run("a"), run("b")
    assert not torch.allclose(a, b, atol=1e-4)
    parallel = run(Parallel("a", "b"))
    torch.testing.assert_close(parallel, torch.cat([a, b]), atol=1e-5, rtol=0)
    torch.testing.assert_close(run(BatchSplit("b", "a", batch_sizes=[1, 3])), torch.cat([b[:1], a[1:]]))
    per_row = ["a", None, "b", "a"]
    expected = torch.stack([{"a": a, "b": b, None: base}[t][i] for i, t in enumerate(per_row)])
    torch.testing.assert_close(run(None, adapter_names=per_row), expected, atol=1e-5, rtol=0)
    assert not torch.allclose(run(Stack("a", "b")), b, atol=1e-4)
    torch.testing.assert_close(run(Average("a", "a", weights=[0.5, 0.5])), a, atol=1e-5, rtol=0)
    assert run(Split("a", "b", splits=[4, 5])).shape == a.shape
    model.add_adapter_fusion(Fuse("a", "b"), set_active=True)
    with AdapterSetup(Fuse("a", "b")), torch.no_grad():
        assert model(**inputs).last_hidden_state.shape == a.shape


def test_deepcopy_keeps_the_layers_on_the_copied_shared_module():
    model = tiny_model("bert")
    model.add_adapter("c", config=COMPACTER, set_active=True)
    twin = copy.deepcopy(model)
    with torch.no_grad():
        twin.bert.shared_parameters["c"].phm_rule.mul_(1000)
    layer = twin.get_adapter("c")[0]["output_adapter"].adapter_up
    assert layer.shared is twin.bert.shared_parameters["c"]
    with torch.no_grad():
        assert not torch.allclose(twin(**tiny_inputs()).last_hidden_state, model(**tiny_inputs()).last_hidden_state)
