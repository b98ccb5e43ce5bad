"""AdapterPlus and ``original_ln_after=False`` (the adapter output replaces the sub-block's ``LN(h + r)`` or
``h + r``) on every architecture, checked against the formula with values captured from the model; stochastic
depth; composition (the last adapter of each row decides); hooks come and go with the adapters."""

from __future__ import annotations

import pytest
import torch

from adapterkit import AdapterPlusConfig, AdapterSetup, BatchSplit, Parallel, SeqBnConfig, Stack
from adapterkit.configs import AdapterConfig
from adapterkit.integration.modules import first_input, get_submodule, main_output
from adapterkit.methods.bottleneck import BottleneckAdapter, drop_path
from tiny import ARCHS, randomize, tiny_inputs, tiny_model

PLUS = AdapterPlusConfig(mh_adapter=True, reduction_factor=4)
NO_LN = SeqBnConfig(mh_adapter=True, original_ln_before=False, original_ln_after=False, reduction_factor=4)


def _capture(model) -> dict:
    """Per layer and location: ``h`` (sub-block output), ``r`` (its residual input) and ``final`` (what the
    next sub-block receives: the FFN's residual input for attention, the layer output for the FFN)."""
    target = model._adapter_target
    seen = {}
    for idx, layer in enumerate(target.layers):
        stack = target.stack(idx)
        for location, block in (("mh_adapter", stack.attention), ("output_adapter", stack.ffn)):

            def grab_h(m, a, o, key=(idx, location)):
                seen.setdefault(key, {})["h"] = main_output(o)

            def grab_r(m, a, kw, key=(idx, location)):
                seen.setdefault(key, {})["r"] = first_input(a, kw)
                if key[1] == "output_adapter":
                    seen.setdefault((key[0], "mh_adapter"), {})["final"] = first_input(a, kw)

            get_submodule(layer, block.output).register_forward_hook(grab_h, prepend=True)
            get_submodule(layer, block.residual_input).register_forward_pre_hook(grab_r, with_kwargs=True)

        def grab_out(m, a, o, key=(idx, "output_adapter")):
            seen.setdefault(key, {})["final"] = main_output(o)

        layer.register_forward_hook(grab_out)
    return seen


def _f(adapter: BottleneckAdapter, z: torch.Tensor) -> torch.Tensor:
    return adapter.adapter_up(adapter.adapter_down(z)) * adapter.scaling


@pytest.mark.parametrize("config", [PLUS, NO_LN], ids=["adapterplus", "no_original_ln"])
@pytest.mark.parametrize("arch", ARCHS)
def test_adapter_output_replaces_the_sub_block_result(arch, config):
    model = tiny_model(arch)
    seen = _capture(model)
    model.add_adapter("p", config=config, set_active=True)
    randomize(model, "p")
    with torch.no_grad():
        model(**tiny_inputs())
        for (idx, location), v in seen.items():
            adapter = model.get_adapter("p")[idx][location]
            stack = model._adapter_target.stack(idx)
            block = stack.attention if location == "mh_adapter" else stack.ffn
            norm = model._adapter_target.layer_module(idx, block.layer_norm) if block.layer_norm else None
            if config.original_ln_before:  # AdapterPlus: z = LN(h + r), out = z + c * f(z)
                z = v["h"] + v["r"]
                z = norm(z) if norm is not None else z
            else:  # out = h + f(h): no residual stream at all (AdapterHub does the same)
                z = v["h"]
            torch.testing.assert_close(v["final"], z + _f(adapter, z), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("arch", ["bert", "llama"])
def test_last_adapter_of_a_stack_decides(arch):
    model = tiny_model(arch)
    seen = _capture(model)
    model.add_adapter("p", config=AdapterPlusConfig(reduction_factor=4))
    model.add_adapter("s", config="seq_bn[reduction_factor=4]")
    randomize(model, "p", seed=1)
    randomize(model, "s", seed=2)
    v = seen.setdefault((0, "output_adapter"), {})
    p, s = model.get_adapter("p")[0]["output_adapter"], model.get_adapter("s")[0]["output_adapter"]
    norm = model.bert.encoder.layer[0].output.LayerNorm if arch == "bert" else torch.nn.Identity()
    with torch.no_grad():
        model.set_active_adapters(Stack("s", "p"))  # p last: its output is final
        model(**tiny_inputs())
        h, r = v["h"], v["r"]
        hs = _f(s, norm(h + r)) + h
        z = norm(hs + r)
        torch.testing.assert_close(v["final"], z + _f(p, z), atol=1e-5, rtol=1e-5)
        model.set_active_adapters(Stack("p", "s"))  # s last: the model's own add and norm follow
        model(**tiny_inputs())
        h, r = v["h"], v["r"]
        z = norm(h + r)
        hp = z + _f(p, z)
        torch.testing.assert_close(v["final"], norm(_f(s, norm(hp + r)) + hp + r), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("arch", ["bert", "gpt2"])
def test_each_row_follows_its_own_last_adapter(arch):
    model = tiny_model(arch)
    model.add_adapter("p", config=AdapterPlusConfig(reduction_factor=4))
    model.add_adapter("s", config="seq_bn[reduction_factor=4]")
    randomize(model, "p", seed=1)
    randomize(model, "s", seed=2)
    inputs = tiny_inputs(batch=4)

    def run(setup, **kwargs):
        model.set_active_adapters(setup)
        with torch.no_grad():
            return model(**inputs, **kwargs).last_hidden_state

    base, p, s = run(None), run("p"), run("s")
    close = {"atol": 1e-5, "rtol": 0}
    torch.testing.assert_close(run(Parallel("p", "s", None)), torch.cat([p, s, base]), **close)
    torch.testing.assert_close(run(Parallel("s", "p")), torch.cat([s, p]), **close)
    torch.testing.assert_close(run(BatchSplit("s", "p", batch_sizes=[3, 1])), torch.cat([s[:3], p[3:]]), **close)
    per_row = ["p", "s", None, "p"]
    expected = torch.stack([{"p": p, "s": s, None: base}[t][i] for i, t in enumerate(per_row)])
    torch.testing.assert_close(run(None, adapter_names=per_row), expected, **close)
    torch.testing.assert_close(run(None, adapter_names=["p"] * 4), p, **close)


def test_norm_hook_only_while_needed():
    model = tiny_model("bert")
    norm = model.bert.encoder.layer[0].output.LayerNorm
    model.add_adapter("s", config="seq_bn")
    assert not norm._forward_hooks  # the default path pays nothing
    model.add_adapter("p", config=AdapterPlusConfig())
    model.add_adapter("q", config=AdapterPlusConfig())
    assert len(norm._forward_hooks) == 1
    model.delete_adapter("p")
    assert len(norm._forward_hooks) == 1
    model.delete_adapter("q")
    assert not norm._forward_hooks and len(norm._forward_pre_hooks) == 1
    model.delete_adapter("s")
    assert not norm._forward_pre_hooks


def test_adapterplus_defaults_and_init():
    config = AdapterPlusConfig()
    assert (config.original_ln_after, config.original_ln_before, config.residual_before_ln) == (False, True, False)
    assert (config.stochastic_depth, config.init_weights, config.scaling) == (0.1, "houlsby", "channel")
    assert (config.reduction_factor, config.non_linearity, config.mh_adapter) == (96, "gelu", False)
    assert AdapterConfig.load(config.to_dict()) == config
    model = tiny_model("bert")
    model.add_adapter("p", config=config)
    adapter = model.get_adapter("p")[0]["output_adapter"]
    assert adapter.adapter_up.in_features == 1  # 32 // 96 = 0, at least 1
    assert torch.equal(adapter.scaling, torch.ones(32))
    for w in (adapter.adapter_down[0].weight, adapter.adapter_up.weight):
        assert w.abs().max() <= 2e-2 and w.abs().max() > 0  # houlsby: truncated normal
    with pytest.raises(ValueError, match="stochastic_depth"):
        AdapterPlusConfig(stochastic_depth=1.5)


def test_drop_path_drops_whole_rows():
    torch.manual_seed(0)
    x = torch.ones(4000, 3, 2)
    y = drop_path(x, 0.25)
    rows = y[:, 0, 0]
    assert set(rows.unique().tolist()) == {0.0, torch.tensor(1 / 0.75).item()}
    assert torch.equal(y, rows.view(-1, 1, 1).expand_as(y))
    assert abs((rows == 0).float().mean().item() - 0.25) < 0.03
    assert torch.equal(drop_path(x, 1.0), torch.zeros_like(x))


def test_stochastic_depth_only_in_training():
    model = tiny_model("bert")
    model.add_adapter("p", config=AdapterPlusConfig(reduction_factor=4, stochastic_depth=0.5), set_active=True)
    model.add_adapter("q", config=AdapterPlusConfig(reduction_factor=4, stochastic_depth=0.0))
    model.get_adapter("q")[0]["output_adapter"].load_state_dict(model.get_adapter("p")[0]["output_adapter"].state_dict())
    model.get_adapter("q")[1]["output_adapter"].load_state_dict(model.get_adapter("p")[1]["output_adapter"].state_dict())
    with torch.no_grad():
        p = model(**tiny_inputs()).last_hidden_state
        with AdapterSetup("q"):
            q = model(**tiny_inputs()).last_hidden_state
    assert torch.equal(p, q)  # eval: identity
    adapter = model.get_adapter("p")[0]["output_adapter"].train()
    x = torch.randn(64, 5, 32)
    torch.manual_seed(1)
    up = adapter.up(x)
    full = adapter.adapter_up(adapter.adapter_down(x)) * adapter.scaling
    dropped = up.abs().sum(dim=(1, 2)) == 0
    assert 0 < dropped.sum() < 64
    torch.testing.assert_close(up[~dropped], full[~dropped] * 2)


def test_training_changes_only_the_adapter_and_survives_save_load(tmp_path):
    model = tiny_model("gpt2")
    model.add_adapter("p", config=AdapterPlusConfig(reduction_factor=4))
    model.add_causal_lm_head("p")
    model.train_adapter("p")
    before = {n: t.detach().clone() for n, t in model.named_parameters()}
    opt = torch.optim.SGD([t for t in model.parameters() if t.requires_grad], lr=0.5)
    inputs = tiny_inputs()
    for _ in range(2):
        model(**inputs, labels=inputs["input_ids"]).loss.backward()
        opt.step()
        opt.zero_grad()
    changed = {n for n, t in model.named_parameters() if not torch.equal(t, before[n])}
    assert changed and all(".adapters.p." in n or n.startswith("heads.p.") for n in changed)
    assert any("scaling" in n for n in changed)
    model.eval()
    with torch.no_grad():
        expected = model(**inputs).logits
    model.save_adapter(tmp_path, "p")
    other = tiny_model("gpt2")
    other.load_adapter(tmp_path, set_active=True)
    with torch.no_grad():
        torch.testing.assert_close(other(**inputs).logits, expected, atol=1e-6, rtol=0)
