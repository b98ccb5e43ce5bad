"""Prefix tuning: config, every architecture (eager and sdpa), AdapterHub parity, composition, generate,
training, persistence, eject."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from adapterkit import (
    ADAPTER_CONFIG_MAP,
    AdapterSetup,
    AutoAdapterModel,
    Average,
    BatchSplit,
    Fuse,
    MultiTask,
    Parallel,
    PrefixTuningConfig,
    Split,
    Stack,
)
from adapterkit.configs import AdapterConfig, config_hash
from adapterkit.methods.prefix_tuning import FlatPrefixTuning, PrefixTuning
from tiny import ARCHS, randomize, tiny_inputs, tiny_model

GOLDEN = Path(__file__).parents[1] / "fixtures" / "golden"
SMALL = "prefix_tuning[prefix_length=4, bottleneck_size=8]"


def _hidden(model, inputs=None, **kwargs):
    with torch.no_grad():
        return model(**(inputs or tiny_inputs()), **kwargs).last_hidden_state


def _prefix(model, name) -> PrefixTuning | FlatPrefixTuning:
    return model.base_model.prefix_tuning.prefix_tunings[name][model._adapter_target.spec.stack.prefix_location]


def _hooks(model) -> dict[str, int]:
    return {n: len(m._forward_hooks) + len(m._forward_pre_hooks) for n, m in model.named_modules()}


# ---- config ------------------------------------------------------------------------------------
def test_config_keys_defaults_aliases_and_validation():
    config = PrefixTuningConfig()
    assert config.to_dict() == {
        "architecture": "prefix_tuning",
        "encoder_prefix": True,
        "cross_prefix": True,
        "leave_out": [],
        "flat": False,
        "prefix_length": 30,
        "bottleneck_size": 512,
        "non_linearity": "tanh",
        "dropout": 0.0,
        "use_gating": False,
        "shared_gating": True,
        "init_weights_seed": None,
    }
    assert ADAPTER_CONFIG_MAP["prefix_tuning"]() == config
    assert ADAPTER_CONFIG_MAP["prefix_tuning_flat"]() == config.replace(flat=True)
    assert AdapterConfig.load(config.to_dict()) == config  # the "architecture" key picks the class
    assert AdapterConfig.load("prefix_tuning[prefix_length=8]").prefix_length == 8
    assert config_hash(config) == config_hash(dict(config.to_dict()))
    for bad in (dict(prefix_length=0), dict(bottleneck_size=1.5), dict(dropout=1.0), dict(flat="yes")):
        with pytest.raises(ValueError, match="PrefixTuningConfig"):
            PrefixTuningConfig(**bad)


# ---- every architecture --------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ARCHS)
def test_forward_activation_delete_and_eager_equals_sdpa(arch):
    actives = []
    for attn in ("eager", "sdpa"):
        model = tiny_model(arch, attn)
        base = _hidden(model)
        hooks = _hooks(model)
        model.add_adapter("a", config="prefix_tuning[prefix_length=4, bottleneck_size=8, use_gating=True]")
        randomize(model, "a")
        assert model.config._attn_implementation == f"adapterkit_{attn}"
        assert torch.equal(_hidden(model), base), "an inactive prefix must not change the output"
        with AdapterSetup("a"):
            in_context = _hidden(model)
        model.set_active_adapters("a")
        actives.append(_hidden(model))
        assert torch.equal(in_context, actives[-1]) and not torch.allclose(actives[-1], base, atol=1e-4)
        model.delete_adapter("a")
        assert model.config._attn_implementation == attn
        assert torch.equal(_hidden(model), base)
        assert not any("prefix" in n for n, _ in model.named_modules())
        assert _hooks(model) == hooks, "deleting the last prefix removes its hooks"
        assert not any(k.startswith("_adapterkit") for m in model.modules() for k in m.__dict__)
    torch.testing.assert_close(actives[0], actives[1], atol=1e-5, rtol=1e-5)


# ---- AdapterHub parity -----------------------------------------------------------------------------
# AdapterHub 1.3.0 fixtures: methods/<arch>/prefix_tuning* (make_golden_methods.py: bert, gpt2, llama, with a
# head and generate()) and prefix_tuning/<arch>/<case> (make_golden_prefix.py: distilbert, leave_out on llama)
GOLDEN_PREFIX = sorted(
    [p.parent for p in (GOLDEN / "methods").glob("*/prefix_tuning*/expected.safetensors")]
    + [p.parent for p in (GOLDEN / "prefix_tuning").glob("*/*/expected.safetensors")]
)


def _load_head(model, path: Path) -> None:
    """The saved head, put in place directly (its weights are plain tensors: no tied-weight handling needed)."""
    config = json.loads((path / "head_config.json").read_text())["config"]
    model.add_prediction_head_from_config("a", config, overwrite_ok=True)
    state = torch.load(path / "pytorch_model_head.bin", weights_only=True)
    model.heads["a"].load_state_dict({k.removeprefix("heads.a."): v for k, v in state.items()})


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("path", GOLDEN_PREFIX, ids=lambda p: f"{p.parents[1].name}-{p.parent.name}-{p.name}")
def test_adapterhub_prefix_reproduces_outputs(path, attn):
    arch = path.parent.name
    model = AutoAdapterModel.from_pretrained(GOLDEN / arch / "base", attn_implementation=attn).eval()
    info: dict = {}
    assert model.load_adapter(path, set_active=True, loading_info=info, with_head=False) == "a"
    assert info == {"missing_keys": [], "unexpected_keys": []}
    expected = load_file(path / "expected.safetensors")
    inputs = load_file(GOLDEN / arch / "base" / "expected.safetensors")
    inputs = {"input_ids": inputs["input_ids"], "attention_mask": inputs["attention_mask"]}
    with torch.no_grad():
        hidden = model.base_model(**inputs).last_hidden_state
    torch.testing.assert_close(hidden, expected["last_hidden_state"], atol=1e-5, rtol=0)
    if "logits" not in expected:
        return
    _load_head(model, path)
    with torch.no_grad():
        torch.testing.assert_close(model(**inputs, head="a").logits, expected["logits"], atol=1e-4, rtol=0)
    if "generated_ids" in expected:
        # AdapterHub's greedy reference: full forwards, positions cumsum(mask) - 1 (transformers 4.57's
        # generate() convention for right-padded rows), new tokens attended
        ids, mask = inputs["input_ids"], inputs["attention_mask"]
        with torch.no_grad():
            for _ in range(expected["generated_ids"].shape[1] - ids.shape[1]):
                positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)
                logits = model(input_ids=ids, attention_mask=mask, position_ids=positions, head="a").logits
                ids = torch.cat([ids, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
                mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        assert torch.equal(ids, expected["generated_ids"])


# ---- composition -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def llama():
    """GQA llama with prefixes of different lengths: a (4), b (2, gated), c (3, flat)."""
    model = tiny_model("llama")
    model.add_adapter("a", config=SMALL)
    model.add_adapter("b", config="prefix_tuning[prefix_length=2, bottleneck_size=8, use_gating=True]")
    model.add_adapter("c", config="prefix_tuning_flat[prefix_length=3]")
    model.add_adapter("l", config="lora")
    for name in "abcl":
        randomize(model, name)
    return model


def _alone(model, name, rows):
    model.set_active_adapters(name)
    inputs = {k: v[rows] for k, v in tiny_inputs(batch=4).items()}
    return _hidden(model, inputs)


def test_stack_prepends_each_prefix_in_turn(llama):
    """Stack(a, c) gives keys [c; a; x]: the same as one flat prefix holding c's slots, then a's."""
    model = llama
    model.set_active_adapters(Stack("a", "c"))
    stacked = _hidden(model, tiny_inputs(batch=4))
    model.add_adapter("ac", config="prefix_tuning_flat[prefix_length=7]")
    with torch.no_grad():
        kv = torch.cat([_prefix(model, "c").key_values(), _prefix(model, "a").key_values()], dim=2)
        _prefix(model, "ac").control_trans.copy_(kv.permute(2, 0, 1, 3).reshape(-1))  # back to (L, layers*2, h, d)
    model.set_active_adapters("ac")
    torch.testing.assert_close(_hidden(model, tiny_inputs(batch=4)), stacked, atol=1e-5, rtol=1e-5)
    model.delete_adapter("ac")


@pytest.mark.parametrize(
    "setup, expected",
    [
        (BatchSplit("a", "b", batch_sizes=[1, 3]), [("a", slice(0, 1)), ("b", slice(1, 4))]),
        (
            BatchSplit(Stack("a", "c"), None, "b", batch_sizes=[2, 1, 1]),
            [(Stack("a", "c"), slice(0, 2)), (None, slice(2, 3)), ("b", slice(3, 4))],
        ),
        (BatchSplit(Stack("l", "a"), "b", batch_sizes=[2, 2]), [(Stack("l", "a"), slice(0, 2)), ("b", slice(2, 4))]),
    ],
    ids=["two", "stack-none", "with-lora"],
)
def test_batch_split_rows_equal_their_adapters_alone(llama, setup, expected):
    llama.set_active_adapters(setup)
    out = _hidden(llama, tiny_inputs(batch=4))
    for name, rows in expected:
        torch.testing.assert_close(out[rows], _alone(llama, name, rows), atol=1e-5, rtol=1e-5)


def test_parallel_channels_equal_their_adapters_alone(llama):
    llama.set_active_adapters(Parallel("a", "b", None))
    out = _hidden(llama, tiny_inputs(batch=4))
    assert out.shape[0] == 12
    for i, name in enumerate(["a", "b", None]):
        torch.testing.assert_close(out[4 * i : 4 * (i + 1)], _alone(llama, name, slice(0, 4)), atol=1e-5, rtol=1e-5)


def test_row_routing_and_multitask(llama):
    routed = _hidden(llama, tiny_inputs(batch=4), adapter_names=["b", "a", None, "b"])
    llama.set_active_adapters(MultiTask("a", "b", None))
    by_task = _hidden(llama, tiny_inputs(batch=4), task_ids=torch.tensor([1, 0, 2, 1]))
    torch.testing.assert_close(by_task, routed)
    for row, name in enumerate(["b", "a", None, "b"]):
        torch.testing.assert_close(
            routed[row : row + 1], _alone(llama, name, slice(row, row + 1)), atol=1e-5, rtol=1e-5
        )


@pytest.mark.parametrize("block", [Average("a", "b"), Split("a", "b", splits=[4, 5]), Fuse("a", "b")])
def test_average_split_and_fuse_are_refused_at_activation(llama, block):
    with pytest.raises(ValueError, match="prefix_tuning adapters can sit in"):
        llama.set_active_adapters(block)


# ---- generate --------------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_greedy_generate_equals_full_forwards(arch):
    torch.manual_seed(0)
    model = tiny_model(arch, "sdpa")
    model.add_causal_lm_head("lm")
    model.add_adapter("a", config=SMALL)
    model.add_adapter("b", config="prefix_tuning_flat[prefix_length=2]")
    randomize(model, "a")
    randomize(model, "b")
    model.set_active_adapters(Stack("a", "b"))
    prompt = tiny_inputs(batch=2, seq=5)["input_ids"].clamp(min=3)
    ids = prompt
    with torch.no_grad():
        for _ in range(6):  # no cache: every step is a full forward
            logits = model(input_ids=ids, head="lm", use_cache=False).logits
            ids = torch.cat([ids, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    generated = model.generate(input_ids=prompt, max_new_tokens=6, do_sample=False, head="lm")
    assert torch.equal(generated, ids)
    routed = model.generate(
        input_ids=prompt, max_new_tokens=6, do_sample=False, head="lm", adapter_names=[Stack("a", "b"), None]
    )
    assert torch.equal(routed[0], ids[0])
    model.add_causal_lm_head("a")
    model.add_causal_lm_head("b")
    model.set_active_adapters(Parallel("a", "b"))  # channel i generates with adapter i and head i
    parallel = model.generate(input_ids=prompt, max_new_tokens=4, do_sample=False)
    for i, name in enumerate("ab"):
        model.set_active_adapters(name)
        alone = model.generate(input_ids=prompt, max_new_tokens=4, do_sample=False, head=name)
        assert torch.equal(parallel[2 * i : 2 * i + 2], alone)


# ---- leave_out, seeds, training, persistence ---------------------------------------------------
def test_leave_out_sizes_the_prefix_to_the_remaining_layers():
    model = tiny_model("bert")
    model.add_adapter("a", config="prefix_tuning[prefix_length=4, bottleneck_size=8, leave_out=[0], use_gating=True]")
    modules = model.get_adapter("a")
    assert set(modules) == {1} and set(modules[1]["self_prefix"]) == {"prefix", "gate"}
    assert _prefix(model, "a").n_layers == 1
    assert not hasattr(model.bert.encoder.layer[0].attention.self, "prefix_tuning")


def test_init_weights_seed_gives_identical_weights():
    model = tiny_model("bert")
    for name in ("x", "y"):
        model.add_adapter(name, config="prefix_tuning[bottleneck_size=8, use_gating=True, init_weights_seed=0]")
    state = model.state_dict()
    x = {k.replace(".x.", "."): v for k, v in state.items() if ".x." in k}
    y = {k.replace(".y.", "."): v for k, v in state.items() if ".y." in k}
    assert x.keys() == y.keys() and len(x) == 9 and all(torch.equal(x[k], y[k]) for k in x)
    gates = [v for k, v in x.items() if "prefix_gates" in k and k.endswith("weight")]
    assert torch.equal(gates[0], gates[1])


def test_train_adapter_trains_only_the_prefix_and_head():
    model = tiny_model("gpt2")
    model.add_adapter("a", config="prefix_tuning[prefix_length=4, bottleneck_size=8, use_gating=True]")
    model.add_adapter("other", config=SMALL)
    model.add_classification_head("a", num_labels=2)
    model.train_adapter("a")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(
        ".prefix_tunings.a." in n or ".prefix_gates.a." in n or n.startswith("heads.a.") for n in trainable
    )
    assert any("prefix_gates" in n for n in trainable)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model(**tiny_inputs(), labels=torch.tensor([0, 1, 0])).loss.backward()
    optimizer.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and changed <= trainable and any("wte" in n for n in changed)


def test_gradient_checkpointing_gives_same_gradients():
    grads = []
    for checkpointing in (False, True):
        model = tiny_model("llama")
        model.add_adapter("a", config="prefix_tuning[prefix_length=4, bottleneck_size=8, use_gating=True]")
        randomize(model, "a")
        model.train_adapter("a")
        if checkpointing:
            model.activation_checkpointing_enable()
        model(**tiny_inputs()).last_hidden_state.pow(2).sum().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad})
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("config", [SMALL, "prefix_tuning_flat[prefix_length=3, use_gating=True, shared_gating=False]"])
def test_save_load_round_trip(tmp_path, config):
    model = tiny_model("distilbert")
    model.add_adapter("a", config=config, set_active=True)
    randomize(model, "a")
    expected = _hidden(model)
    model.save_adapter(tmp_path, "a")
    other = tiny_model("distilbert")
    info: dict = {}
    assert other.load_adapter(tmp_path, load_as="b", set_active=True, loading_info=info) == "b"
    assert info == {"missing_keys": [], "unexpected_keys": []}
    torch.testing.assert_close(_hidden(other), expected)


def test_full_model_round_trip_keeps_the_original_attention_in_config_json(tmp_path):
    model = tiny_model("llama", "eager")
    model.add_adapter("a", config=SMALL, set_active=True)
    randomize(model, "a")
    expected = _hidden(model)
    model.save_pretrained(tmp_path)
    assert "adapterkit_" not in (tmp_path / "config.json").read_text()
    loaded = AutoAdapterModel.from_pretrained(tmp_path, attn_implementation="eager").eval()
    assert loaded.config._attn_implementation == "adapterkit_eager"
    loaded.set_active_adapters("a")
    torch.testing.assert_close(_hidden(loaded), expected)


def test_eject_keeps_outputs_and_reloads_as_flat(tmp_path):
    model = tiny_model("llama")
    model.add_adapter("a", config="prefix_tuning[prefix_length=4, bottleneck_size=8, use_gating=True]", set_active=True)
    randomize(model, "a")
    expected = _hidden(model)
    model.eject_prefix_tuning("a")
    assert isinstance(_prefix(model, "a"), FlatPrefixTuning) and model.adapters_config.get("a").flat
    assert not any("control_trans.0" in n or "wte" in n for n, _ in model.named_parameters())
    torch.testing.assert_close(_hidden(model), expected, atol=1e-6, rtol=1e-6)
    model.save_adapter(tmp_path, "a")
    assert json.loads((tmp_path / "adapter_config.json").read_text())["config"]["flat"] is True
    other = tiny_model("llama")
    other.load_adapter(tmp_path, set_active=True)
    torch.testing.assert_close(_hidden(other), expected, atol=1e-6, rtol=1e-6)
    model.add_adapter("l", config="lora")
    with pytest.raises(ValueError, match="only prefix tuning"):
        model.eject_prefix_tuning("l")


def test_refuses_attention_it_cannot_extend_and_empty_layers():
    model = tiny_model("bert")
    model.config._attn_implementation = "flex_attention"
    with pytest.raises(ValueError, match="attn_implementation"):
        model.add_adapter("a", config=SMALL)
    assert "a" not in model.adapters_config and not hasattr(model.bert, "prefix_tuning")
    model.config._attn_implementation = "eager"
    with pytest.raises(ValueError, match="leaves no attention of the 2 layers"):
        model.add_adapter("a", config="prefix_tuning[leave_out=[0, 1]]")
    assert model.config._attn_implementation == "eager"


def test_guide_snippets_run():
    """docs/prefix_tuning.md's python blocks run, in order, in one namespace."""
    text = (Path(__file__).parents[2] / "docs" / "prefix_tuning.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)
    assert blocks
    namespace: dict = {"__name__": "docs.prefix_tuning"}
    for i, block in enumerate(blocks):
        exec(compile(block, f"prefix_tuning.md snippet {i + 1}", "exec"), namespace)
