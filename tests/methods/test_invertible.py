"""Invertible adapters (``BnConfig.inv_adapter``): NICE and GLOW couplings on the embedding output, their inverse
before LM heads' vocabulary projection, every architecture, per-row composition, persistence and training."""

from __future__ import annotations

import pytest
import torch
from transformers import BertForMaskedLM, GPT2LMHeadModel

import adapterkit
from adapterkit import (
    AdapterConfig,
    AdapterSetup,
    AutoAdapterModel,
    BatchSplit,
    DoubleSeqBnInvConfig,
    MultiTask,
    Parallel,
    SeqBnConfig,
    SeqBnInvConfig,
    Stack,
)
from adapterkit.methods.invertible import GLOWCouplingBlock, NICECouplingBlock
from tiny import ARCHS, randomize, tiny_config, tiny_inputs, tiny_model

B, T = 4, 9


def _close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=0)


def _embedding_outputs(model) -> list[torch.Tensor]:
    """What the first layer receives, one entry per forward."""
    seen: list[torch.Tensor] = []
    model._adapter_target.layers[0].register_forward_pre_hook(
        lambda m, args, kwargs: seen.append((args[0] if args else kwargs["hidden_states"]).detach()), with_kwargs=True
    )
    return seen


def _hidden(model, **kwargs) -> torch.Tensor:
    with torch.no_grad():
        return model.base_model(**tiny_inputs(batch=B, seq=T), **kwargs).last_hidden_state


def _randomized(block: torch.nn.Module) -> torch.nn.Module:
    with torch.no_grad():
        for p in block.parameters():
            p.normal_(0, 0.3)
    return block


# ---- the coupling blocks --------------------------------------------------------------------------------
@pytest.mark.parametrize("cls", [NICECouplingBlock, GLOWCouplingBlock])
@pytest.mark.parametrize("size", [32, 33])
def test_blocks_are_invertible(cls, size):
    torch.manual_seed(0)
    block = _randomized(cls(size, "relu", 2))
    x = torch.randn(3, 5, size)
    y = block(x)
    assert y.shape == x.shape and not torch.allclose(x, y, atol=1e-3)
    _close(block(y, rev=True), x)


def test_nice_and_glow_formulas():
    torch.manual_seed(0)
    x = torch.randn(2, 4, 32)
    x1, x2 = x[..., :16], x[..., 16:]
    nice = _randomized(NICECouplingBlock(32, "tanh", 4))
    y1 = x1 + nice.F(x2)
    _close(nice(x), torch.cat([y1, x2 + nice.G(y1)], -1))
    glow = _randomized(GLOWCouplingBlock(32, "relu", 2))

    def e(s):
        return torch.exp(5.0 * 0.636 * torch.atan(s / 5.0))

    s2, t2 = glow.s2(x2).split(16, -1)
    y1 = e(s2) * x1 + t2
    s1, t1 = glow.s1(y1).split(16, -1)
    _close(glow(x), torch.cat([y1, e(s1) * x2 + t1], -1))
    assert glow.s1[0].in_features == 16 and glow.s1[2].out_features == 32  # AdapterHub's shapes


def test_configs_and_aliases():
    assert (
        AdapterConfig.load("seq_bn_inv")
        == SeqBnInvConfig()
        == SeqBnConfig(inv_adapter="nice", inv_adapter_reduction_factor=2)
    )
    assert AdapterConfig.load("houlsby+inv") == DoubleSeqBnInvConfig()
    assert AdapterConfig.load(SeqBnInvConfig().to_dict()) == SeqBnInvConfig()


def test_missing_reduction_factor_is_refused_at_add():
    model = tiny_model("bert")
    with pytest.raises(ValueError, match=r"inv_adapter_reduction_factor=None is not allowed with inv_adapter='glow'"):
        model.add_adapter("a", config=SeqBnConfig(inv_adapter="glow"))
    assert "a" not in model.adapters_config and not hasattr(model.base_model, "invertible_adapters")


# ---- every architecture --------------------------------------------------------------------------------
@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("arch", ARCHS)
def test_forward_activation_and_delete(arch, attn):
    model = tiny_model(arch, attn)
    base = _hidden(model)
    model.add_adapter("a", config="seq_bn_inv[inv_adapter='glow']" if arch in ("gpt2", "qwen2") else "seq_bn_inv")
    randomize(model, "a")
    assert set(model.get_adapter("a")[-1]) == {"invertible"}
    assert torch.equal(_hidden(model), base)
    with AdapterSetup("a"):
        in_context = _hidden(model)
    model.set_active_adapters("a")
    seen = _embedding_outputs(model)
    active = _hidden(model)
    assert torch.equal(in_context, active) and not torch.allclose(active, base, atol=1e-4)
    model.set_active_adapters(None)
    _hidden(model)
    assert not torch.allclose(seen[0], seen[1], atol=1e-4), "the embedding output goes through the coupling"
    model.delete_adapter("a")
    assert torch.equal(_hidden(model), base)
    assert not hasattr(model.base_model, "invertible_adapters")
    guards = {id(model.base_model), *map(id, model._adapter_target.layers)}
    hooked = [
        m for m in model.base_model.modules() if (m._forward_hooks or m._forward_pre_hooks) and id(m) not in guards
    ]
    assert hooked == []
    assert model._adapter_target.input_hooks == {}


# ---- the inverse inside LM heads ----------------------------------------------------------------------------
def _manual_lm_logits(head_layers, projection, inv, hidden):
    x = hidden
    for layer in head_layers:
        x = layer(x)
    return projection(inv(x, rev=True))


@pytest.mark.parametrize(("arch", "head"), [("gpt2", "causal_lm"), ("llama", "causal_lm"), ("bert", "masked_lm")])
def test_lm_heads_apply_the_inverse_before_the_vocabulary(arch, head):
    model = tiny_model(arch)
    model.add_adapter("a", config="seq_bn_inv")
    getattr(model, f"add_{head}_head")("a")
    randomize(model, "a")
    model.set_active_adapters("a")
    inputs = tiny_inputs(batch=B, seq=T)
    with torch.no_grad():
        logits = model(**inputs).logits
        hidden = model.base_model(**inputs).last_hidden_state
        lm = model.heads["a"]
        expected = _manual_lm_logits(list(lm)[:-1], lm[len(lm) - 1], model.base_model.invertible_adapters["a"], hidden)
    _close(logits, expected)


@pytest.mark.parametrize("cls", [GPT2LMHeadModel, BertForMaskedLM])
def test_plain_transformers_lm_models_apply_the_inverse(cls):
    torch.manual_seed(0)
    model = adapterkit.init(cls(tiny_config("gpt2" if cls is GPT2LMHeadModel else "bert"))).eval()
    model.add_adapter("a", config="double_seq_bn_inv", set_active=True)
    randomize(model, "a")
    inputs = tiny_inputs(batch=B, seq=T)
    inv = model.base_model.invertible_adapters["a"]
    with torch.no_grad():
        logits = model(**inputs).logits
        hidden = model.base_model(**inputs).last_hidden_state
        if cls is GPT2LMHeadModel:
            expected = model.lm_head(inv(hidden, rev=True))
        else:
            transform = model.cls.predictions.transform
            expected = model.cls.predictions.decoder(inv(transform(hidden), rev=True))
    _close(logits, expected)


# ---- composition: the first adapter of each row's setup -----------------------------------------------------
def _lm_model():
    model = tiny_model("llama")
    for name, config in (("a", "seq_bn_inv"), ("b", "seq_bn_inv[inv_adapter='glow']"), ("t", "seq_bn")):
        model.add_adapter(name, config=config)
        model.add_causal_lm_head(name)
        randomize(model, name, seed=ord(name))
    return model


def _run(model, setup, **kwargs):
    model.set_active_adapters(setup)
    with torch.no_grad():
        return model(**tiny_inputs(batch=B, seq=T), **kwargs)


def test_stack_uses_its_first_adapters_module():
    model = _lm_model()
    seen = _embedding_outputs(model)
    for setup in (None, Stack("a", "t"), "a", Stack("t", "a"), "t"):
        _run(model, setup, head="t")
    base, stacked, a, t_first, t = seen
    _close(stacked, a)
    _close(t_first, base)  # AdapterHub's first(): "t" has no invertible module, so none runs
    _close(t, base)


def test_rows_use_their_own_adapters_module():
    model = _lm_model()
    alone = {name: _run(model, name, head=name) for name in ("a", "b")}
    base_logits = _run(model, None, head="a").logits
    parallel = _run(model, Parallel("a", "b"))
    assert len(parallel.head_outputs) == 2
    _close(parallel.head_outputs[0].logits, alone["a"].logits)
    _close(parallel.head_outputs[1].logits, alone["b"].logits)
    split = _run(model, BatchSplit("b", "a", batch_sizes=[1, 3]))
    _close(split.head_outputs[0].logits, alone["b"].logits[:1])
    _close(split.head_outputs[1].logits, alone["a"].logits[1:])
    per_row = ["b", "a", None, "b"]
    expected = torch.stack(
        [{"a": alone["a"].logits, "b": alone["b"].logits, None: base_logits}[t][i] for i, t in enumerate(per_row)]
    )
    model.active_head = "a"  # the head of the row without adapter
    _close(_run(model, None, adapter_names=per_row).logits, expected)
    through_a = {t: _run(model, t, head="a").logits for t in ("a", "b", None)}  # every row through head "a"
    expected = torch.stack([through_a[t][i] for i, t in enumerate(per_row)])
    _close(_run(model, MultiTask("a", "b", None), task_ids=per_row, head="a").logits, expected)


def test_parallel_with_one_module_replicates_at_the_layers():
    model = _lm_model()
    rows = []
    model.base_model.embed_tokens.register_forward_hook(lambda m, args, out: rows.append(out.shape[0]))
    out = _run(model, Stack("a", Parallel("t", "b")), head=["t", "b"])
    assert rows == [B], "all channels share a's module: the embeddings run once"
    assert len(out.head_outputs) == 2
    _run(model, Parallel("a", "b"), head=["a", "b"])
    assert rows == [B, 2 * B], "the channels' modules differ: the input is replicated"


# ---- persistence, seeds, training ------------------------------------------------------------------------------
def test_save_load_round_trip_and_keys(tmp_path):
    model = tiny_model("gpt2")
    model.add_adapter("a", config="double_seq_bn_inv[inv_adapter='glow']")
    model.add_causal_lm_head("a")
    randomize(model, "a")
    model.set_active_adapters("a")
    keys = [k for k in model.state_dict() if ".invertible_adapters." in k]
    assert (
        "transformer.invertible_adapters.a.s1.0.weight" in keys
        and "transformer.invertible_adapters.a.s2.2.bias" in keys
    )
    expected = _run(model, "a").logits
    model.save_adapter(tmp_path / "a", "a")
    other = tiny_model("gpt2")
    info: dict = {}
    other.load_adapter(tmp_path / "a", load_as="x", set_active=True, loading_info=info)
    assert info == {"missing_keys": [], "unexpected_keys": []}
    assert "x" in other.base_model.invertible_adapters
    _close(_run(other, "x").logits, expected)
    model.save_pretrained(tmp_path / "full")
    full = AutoAdapterModel.from_pretrained(tmp_path / "full").eval()
    _close(_run(full, "a").logits, expected)


def test_init_weights_seed_and_training():
    model = tiny_model("bert")
    model.add_adapter("a", config="seq_bn_inv[init_weights_seed=5]")
    model.add_adapter("b", config="seq_bn_inv[init_weights_seed=5]")
    inv = model.base_model.invertible_adapters
    assert all(torch.equal(p, q) for p, q in zip(inv["a"].parameters(), inv["b"].parameters(), strict=True))
    model.add_masked_lm_head("a")
    model.train_adapter("a")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert "bert.invertible_adapters.a.F.0.weight" in trainable
    assert all(".a." in n or n.startswith("heads.a.") for n in trainable)
    inputs = tiny_inputs(batch=B, seq=T)
    model(**inputs, labels=inputs["input_ids"]).loss.backward()
    assert inv["a"].F[0].weight.grad is not None and inv["b"].F[0].weight.grad is None


def test_legacy_key_names_and_load_leave_out(tmp_path):
    """adapter-transformers named the modules ``invertible_lang_adapters``; the module stays with leave_out."""
    from safetensors.torch import load_file, save_file

    model = tiny_model("bert")
    model.add_adapter("a", config="seq_bn_inv")
    randomize(model, "a")
    model.save_adapter(tmp_path, "a")
    weights = load_file(tmp_path / "adapter.safetensors")
    save_file(
        {k.replace(".invertible_adapters.", ".invertible_lang_adapters."): v for k, v in weights.items()},
        tmp_path / "adapter.safetensors",
    )
    other = tiny_model("bert")
    other.load_adapter(tmp_path, leave_out=[0])
    assert set(other.get_adapter("a")) == {-1, 1}
    assert torch.equal(
        other.base_model.invertible_adapters["a"].G[2].bias, model.base_model.invertible_adapters["a"].G[2].bias
    )
