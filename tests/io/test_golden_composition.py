"""Composition gives the same numbers as AdapterHub: adapters, fusions and expected outputs saved by
adapters==1.3.0 (tests/fixtures/golden/composition, made by make_golden_composition.py) load unchanged
and every block (Stack, Fuse, Parallel, BatchSplit, Split, Average) reproduces AdapterHub's hidden
states and head logits to 1e-5. See tests/fixtures/golden/README.md, "Composition fixtures"."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from adapterkit import AutoAdapterModel, Average, BatchSplit, Fuse, Parallel, Split, Stack

GOLDEN = Path(__file__).parents[1] / "fixtures" / "golden"
COMP = GOLDEN / "composition"

BN_ARCHS = ["bert", "gpt2"]  # seq_bn adapters a, b, c; classification heads a, b (3 labels)
HEADS = {"a", "b"}
BATCH_SIZES = [1, 3]
SPLITS = [4, 5]
# AdapterHub's Average computes torch.mean(stack(h_i) * w) = (1/N) * sum_i w_i h_i with w normalised
# to sum 1 (methods/bottleneck.py and methods/lora.py, `mean`). adapterkit applies the weights once,
# so AdapterHub's Average("a", "b", weights=[0.3, 0.7]) is adapterkit's weights w_i / N, unnormalised.
# Bottleneck child states include the adapter residual (AdapterHub scales it by 1/N too); LoRA child
# states are the deltas only (W x + b is never scaled): W x + b + sum_i (w_i / N) * delta_i.
AH_AVERAGE_WEIGHTS = [0.3, 0.7]
AVERAGE_WEIGHTS = [w / len(AH_AVERAGE_WEIGHTS) for w in AH_AVERAGE_WEIGHTS]


def _base(arch: str):
    return AutoAdapterModel.from_pretrained(GOLDEN / arch / "base", attn_implementation="eager").eval()


def _load(model, arch: str, names, with_head: bool = False) -> None:
    for name in names:
        info: dict = {}
        loaded = model.load_adapter(
            COMP / arch / "adapters" / name, load_as=name, with_head=with_head and name in HEADS, loading_info=info
        )
        assert loaded == name
        assert info == {"missing_keys": [], "unexpected_keys": []}


def _expected(arch: str, case: str) -> dict[str, torch.Tensor]:
    return load_file(COMP / arch / case / "expected.safetensors")


def _inputs(expected: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {"input_ids": expected["input_ids"], "attention_mask": expected["attention_mask"]}


def _hidden(model, expected):
    with torch.no_grad():
        return model.base_model(**_inputs(expected)).last_hidden_state


def _close(actual, expected):
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=0)


# ---- individual adapters (no composition: loading and single activation) -------------------------

SINGLE = [(arch, name) for arch in BN_ARCHS for name in ("a", "b", "c")] + [
    (arch, name) for arch in ("bert", "llama") for name in ("la", "lb")
]


@pytest.mark.parametrize(("arch", "name"), SINGLE)
def test_single_adapter_matches(arch, name):
    model = _base(arch)
    _load(model, arch, [name], with_head=True)
    model.set_active_adapters(name)
    expected = load_file(COMP / arch / "adapters" / name / "expected.safetensors")
    _close(_hidden(model, expected), expected["last_hidden_state"])


# ---- bottleneck composition ----------------------------------------------------------------------


@pytest.mark.parametrize("arch", BN_ARCHS)
def test_stack(arch):
    model = _base(arch)
    _load(model, arch, ["a", "b"], with_head=True)
    model.set_active_adapters(Stack("a", "b"))
    expected = _expected(arch, "stack_ab")
    _close(_hidden(model, expected), expected["last_hidden_state"])
    with torch.no_grad():
        logits = model(**_inputs(expected), head="b").logits
    _close(logits, expected["logits"])


FUSIONS = {
    # fixture dir: (block activated, name AdapterHub gave the fusion)
    "fusion_static": (lambda: Fuse("a", "b", "c"), "a,b,c"),
    "fusion_dynamic": (lambda: Fuse("a", "b", "c"), "a,b,c"),
    "fusion_dynamic_safetensors": (lambda: Fuse("a", "b", "c"), "a,b,c"),
    "fusion_custom_name": (lambda: Fuse("c", "a", name="my_fusion"), "my_fusion"),
}


def _fusion_model(arch: str, case: str):
    model = _base(arch)
    _load(model, arch, ["a", "b", "c"])
    name = model.load_adapter_fusion(COMP / arch / case, set_active=True)
    assert name == FUSIONS[case][1]
    return model


@pytest.mark.parametrize("case", list(FUSIONS))
@pytest.mark.parametrize("arch", BN_ARCHS)
def test_fuse(arch, case):
    model = _fusion_model(arch, case)
    block = FUSIONS[case][0]()
    assert model.active_adapters == block  # load_adapter_fusion(set_active=True) activates the Fuse
    expected = _expected(arch, case.removesuffix("_safetensors"))
    _close(_hidden(model, expected), expected["last_hidden_state"])
    model.set_active_adapters(None)
    model.set_active_adapters(block)
    _close(_hidden(model, expected), expected["last_hidden_state"])


@pytest.mark.parametrize("case", ["fusion_static", "fusion_dynamic", "fusion_custom_name"])
@pytest.mark.parametrize("arch", BN_ARCHS)
def test_fusion_attentions(arch, case):
    """AdapterHub: output_adapter_fusion_attentions=True adds `adapter_fusion_attentions`,
    {fusion name: {layer index: {location: (batch, seq, n_adapters) probabilities}}}."""
    model = _fusion_model(arch, case)
    expected = _expected(arch, case)
    with torch.no_grad():
        out = model(**_inputs(expected), output_adapter_fusion_attentions=True)
    attentions = out.adapter_fusion_attentions[FUSIONS[case][1]]
    keys = sorted(k for k in expected if k.startswith("fusion_attn."))
    assert keys == ["fusion_attn.0.output_adapter", "fusion_attn.1.output_adapter"]
    for key in keys:
        _, layer, location = key.split(".")
        _close(torch.as_tensor(attentions[int(layer)][location]), expected[key])


@pytest.mark.parametrize("arch", BN_ARCHS)
def test_parallel(arch):
    model = _base(arch)
    _load(model, arch, ["a", "b"], with_head=True)
    model.set_active_adapters(Parallel("a", "b"))
    expected = _expected(arch, "parallel_ab")
    hidden = _hidden(model, expected)
    assert hidden.shape[0] == 2 * expected["input_ids"].shape[0]  # channel-major: rows [a-batch; b-batch]
    _close(hidden, expected["last_hidden_state"])


@pytest.mark.parametrize("arch", BN_ARCHS)
def test_parallel_heads(arch):
    model = _base(arch)
    _load(model, arch, ["a", "b"], with_head=True)
    model.set_active_adapters(Parallel("a", "b"))
    expected = _expected(arch, "parallel_ab")
    with torch.no_grad():
        out = model(**_inputs(expected))
    assert len(out.head_outputs) == 2
    _close(out.head_outputs[0].logits, expected["logits.a"])
    _close(out[1].logits, expected["logits.b"])


@pytest.mark.parametrize("arch", BN_ARCHS)
def test_batch_split(arch):
    model = _base(arch)
    _load(model, arch, ["a", "b"], with_head=True)
    model.set_active_adapters(BatchSplit("a", "b", batch_sizes=BATCH_SIZES))
    expected = _expected(arch, "batchsplit_ab")
    _close(_hidden(model, expected), expected["last_hidden_state"])


@pytest.mark.parametrize("arch", BN_ARCHS)
def test_batch_split_heads(arch):
    """AdapterHub turns BatchSplit("a", "b") into a BatchSplit of heads: head i sees its rows only."""
    model = _base(arch)
    _load(model, arch, ["a", "b"], with_head=True)
    model.set_active_adapters(BatchSplit("a", "b", batch_sizes=BATCH_SIZES))
    expected = _expected(arch, "batchsplit_ab")
    with torch.no_grad():
        out = model(**_inputs(expected))
    assert len(out.head_outputs) == 2
    _close(out[0].logits, expected["logits.a"])  # (1, 3)
    _close(out[1].logits, expected["logits.b"])  # (3, 3)


@pytest.mark.parametrize("arch", BN_ARCHS)
def test_split(arch):
    model = _base(arch)
    _load(model, arch, ["a", "b"])
    model.set_active_adapters(Split("a", "b", splits=SPLITS))
    expected = _expected(arch, "split_ab")
    _close(_hidden(model, expected), expected["last_hidden_state"])


@pytest.mark.parametrize("arch", BN_ARCHS)
def test_average(arch):
    model = _base(arch)
    _load(model, arch, ["a", "b"])
    model.set_active_adapters(Average("a", "b", weights=AVERAGE_WEIGHTS, normalize_weights=False))
    expected = _expected(arch, "average_ab")
    _close(_hidden(model, expected), expected["last_hidden_state"])


# ---- LoRA composition (gpt2's fused c_attn: AdapterHub composes nothing; bert: no Parallel) --------


def test_lora_parallel_llama():
    model = _base("llama")
    _load(model, "llama", ["la", "lb"])
    model.set_active_adapters(Parallel("la", "lb"))
    expected = _expected("llama", "lora_parallel")
    _close(_hidden(model, expected), expected["last_hidden_state"])


@pytest.mark.parametrize("arch", ["bert", "llama"])
def test_lora_batch_split(arch):
    model = _base(arch)
    _load(model, arch, ["la", "lb"])
    model.set_active_adapters(BatchSplit("la", "lb", batch_sizes=BATCH_SIZES))
    expected = _expected(arch, "lora_batchsplit")
    _close(_hidden(model, expected), expected["last_hidden_state"])


@pytest.mark.parametrize("arch", ["bert", "llama"])
def test_lora_average(arch):
    model = _base(arch)
    _load(model, arch, ["la", "lb"])
    model.set_active_adapters(Average("la", "lb", weights=AVERAGE_WEIGHTS, normalize_weights=False))
    expected = _expected(arch, "lora_average")
    _close(_hidden(model, expected), expected["last_hidden_state"])
