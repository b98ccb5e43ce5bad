"""More methods give AdapterHub's numbers: adapters saved by adapters==1.3.0
(tests/fixtures/golden/methods, made by make_golden_methods.py; see the "Method fixtures" section of
tests/fixtures/golden/README.md) load unchanged and reproduce AdapterHub's hidden states and head
logits to 1e-5.

Table-driven: add an ``(arch, case)`` pair to ``CASES`` for a fixture with one adapter ``a`` and head
``a`` (``expected.safetensors`` with ``last_hidden_state`` and ``logits``); cases with several adapters
get their own table and test (``MTL_CASES``).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from adapterkit import AutoAdapterModel, MultiTask

GOLDEN = Path(__file__).parents[1] / "fixtures" / "golden"
METHODS = GOLDEN / "methods"

CASES: list[tuple[str, str]] = [
    # LoRA family (DoRA: the norm uses the unscaled B A, the bias is rescaled; VeRA: AdapterHub's
    # vera_D / vera_B are dense trained matrices, loaded in that form)
    ("bert", "dora"),
    ("llama", "dora"),
    ("bert", "dora_alpha16"),
    ("llama", "dora_alpha16"),
    ("bert", "vera"),
    ("llama", "vera_q"),
    ("bert", "dvora"),
    ("llama", "dvora_q"),
]

MTL_CASES: list[tuple[str, str]] = [("bert", "mtl_lora"), ("llama", "mtl_lora")]


def _base(arch: str):
    return AutoAdapterModel.from_pretrained(GOLDEN / arch / "base", attn_implementation="eager").eval()


def _inputs(expected: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {"input_ids": expected["input_ids"], "attention_mask": expected["attention_mask"]}


def _close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=0)


def _load(model, path: Path, name: str) -> None:
    info: dict = {}
    assert model.load_adapter(path, load_as=name, loading_info=info) == name
    assert info == {"missing_keys": [], "unexpected_keys": []}


@pytest.mark.parametrize(("arch", "case"), CASES)
def test_adapterhub_adapter_reproduces_outputs(arch, case):
    model = _base(arch)
    expected = load_file(METHODS / arch / case / "expected.safetensors")
    _load(model, METHODS / arch / case, "a")
    model.set_active_adapters("a")
    inputs = _inputs(expected)
    with torch.no_grad():
        _close(model.base_model(**inputs).last_hidden_state, expected["last_hidden_state"])
        _close(model(**inputs).logits, expected["logits"])


@pytest.mark.parametrize(("arch", "case"), MTL_CASES)
def test_adapterhub_multitask_adapters_reproduce_outputs(arch, case):
    """Two MTL-LoRA task adapters t0, t1 (saved with their shared A and B), shared again after loading,
    run as ``MultiTask("t0", "t1")`` with ``task_ids``; each task alone too."""
    model = _base(arch)
    expected = load_file(METHODS / arch / case / "expected.safetensors")
    for task in ("t0", "t1"):
        _load(model, METHODS / arch / case / task, task)
    model.share_parameters(MultiTask("t0", "t1"))
    model.set_active_adapters(MultiTask("t0", "t1"))
    inputs = _inputs(expected)
    task_ids = expected["task_ids"]
    with torch.no_grad():
        _close(model.base_model(**inputs, task_ids=task_ids).last_hidden_state, expected["last_hidden_state"])
        for task in ("t0", "t1"):
            _close(model(**inputs, task_ids=task_ids, head=task).logits, expected[f"logits.{task}"])
        for task in ("t0", "t1"):
            model.set_active_adapters(task)
            _close(model.base_model(**inputs).last_hidden_state, expected[f"last_hidden_state.{task}"])


# Bottleneck family and gating scores (Compacter / PHM layers, AdapterPlus with original_ln_after=False,
# gated seq_bn, LoRA and prefix tuning): bert (post-LN), gpt2 and llama (pre-LN)
BOTTLENECK_CASES: list[tuple[str, str]] = [
    (arch, case)
    for arch in ("bert", "gpt2", "llama")
    for case in (
        "compacter",  # double_seq_bn + PHM, shared rule, factorized W
        "compacter_pp",  # seq_bn + PHM
        "compacter_pp_shared_W",  # shared factorized W (phm_dim 2, rank 2)
        "compacter_unshared_rule",  # per-layer factorized rule, unfactorized W
        "adapterplus",  # the adapter output replaces the sub-block's LN(h + r) / h + r
        "seq_bn_gating",  # gating.a.<layer>.output_adapter (3,)
        "lora_gating",  # gating.a.<layer>.selfattn_lora (3, 2): q and v (gpt2: one 2-output gate)
        "prefix_tuning_gating",  # gating.a.<layer>.self_prefix (3,): one shared key/value gate
        "prefix_tuning_gating_unshared",  # gating.a.<layer>.self_prefix (3, 2): key and value gates
    )
]


@pytest.mark.parametrize(("arch", "case"), BOTTLENECK_CASES)
def test_adapterhub_bottleneck_family_and_gating_scores(arch, case):
    model = _base(arch)
    expected = load_file(METHODS / arch / case / "expected.safetensors")
    _load(model, METHODS / arch / case, "a")
    model.set_active_adapters("a")
    inputs = _inputs(expected)
    gating = {k: v for k, v in expected.items() if k.startswith("gating.")}
    with torch.no_grad():
        out = model.base_model(**inputs, output_adapter_gating_scores=True)
        _close(out.last_hidden_state, expected["last_hidden_state"])
        _close(model(**inputs).logits, expected["logits"])
        assert torch.equal(model.base_model(**inputs).last_hidden_state, out.last_hidden_state)
    scores = out.adapter_gating_scores
    assert {f"gating.{a}.{layer}.{loc}" for a in scores for layer in scores[a] for loc in scores[a][layer]} == set(
        gating
    )
    for key, value in gating.items():
        _, adapter, layer, location = key.split(".")
        score = scores[adapter][int(layer)][location]
        assert score.shape == tuple(value.shape)
        _close(torch.from_numpy(score), value)


# ReFT (LoReFT through torch's orthogonal parametrization, whose saved `original` and `base` load as they are),
# invertible adapters (NICE on the embeddings; the inverse runs inside the causal LM head of gpt2/llama) and prompt
# tuning (bert only: AdapterHub refuses it on gpt2/llama; the hidden states are 3 x 13 with the 4-token prompt)
REFT_INV_PROMPT_CASES: list[tuple[str, str]] = [
    *(
        (arch, case)
        for arch in ("bert", "gpt2", "llama")
        for case in (
            "loreft",  # prefix_positions 3, r 1, orthogonal
            "noreft",
            "loreft_prefix_suffix",  # suffix positions overlap a prefix position in the 5-token row
            "noreft_layer1_tanh",  # layers=[1], tanh
            "seq_bn_inv",
            "double_seq_bn_inv",
        )
    ),
    ("bert", "prompt_tuning"),  # combine="prefix": the head reads the first prompt vector
    ("bert", "prompt_tuning_after_bos"),
]


@pytest.mark.parametrize(("arch", "case"), REFT_INV_PROMPT_CASES)
def test_adapterhub_reft_invertible_and_prompt_adapters(arch, case):
    model = _base(arch)
    expected = load_file(METHODS / arch / case / "expected.safetensors")
    _load(model, METHODS / arch / case, "a")
    model.set_active_adapters("a")
    inputs = _inputs(expected)
    with torch.no_grad():
        _close(model.base_model(**inputs).last_hidden_state, expected["last_hidden_state"])
        _close(model(**inputs).logits, expected["logits"])


DIREFT_CASES = [(arch, case) for arch in ("bert", "gpt2", "llama") for case in ("direft", "direft_tied")]


@pytest.mark.parametrize(("arch", "case"), DIREFT_CASES)
def test_adapterhub_direft_files(arch, case, tmp_path):
    """AdapterHub does not save DiReFT's ``subtract_projection=False`` (a class attribute there), so its DiReFT
    files equal NoReFT files and AdapterHub reloads them with the projection subtracted (``*.after_reload``). A
    file without the key loads the same way here; with ``"subtract_projection": false`` added it gives the DiReFT
    that AdapterHub had in memory before saving."""
    expected = load_file(METHODS / arch / case / "expected.safetensors")
    inputs = _inputs(expected)
    saved = tmp_path / case
    shutil.copytree(METHODS / arch / case, saved)
    meta = json.loads((saved / "adapter_config.json").read_text())
    assert "subtract_projection" not in meta["config"]
    meta["config"]["subtract_projection"] = False
    (saved / "adapter_config.json").write_text(json.dumps(meta))
    for path, suffix, subtract in ((METHODS / arch / case, ".after_reload", True), (saved, "", False)):
        model = _base(arch)
        _load(model, path, "a")
        assert model.adapters_config.get("a").subtract_projection is subtract
        model.set_active_adapters("a")
        with torch.no_grad():
            _close(model.base_model(**inputs).last_hidden_state, expected[f"last_hidden_state{suffix}"])
            _close(model(**inputs).logits, expected[f"logits{suffix}"])


# Config unions (one adapter name served by several methods): MAM = prefix tuning + parallel bottleneck; UniPELT =
# gated prefix tuning + gated seq_bn + gated LoRA (the gate replaces alpha / r), gating scores of all three parts
UNION_CASES: list[tuple[str, str]] = [(arch, case) for arch in ("bert", "gpt2", "llama") for case in ("mam", "unipelt")]


@pytest.mark.parametrize(("arch", "case"), UNION_CASES)
def test_adapterhub_config_unions_and_gating_scores(arch, case):
    model = _base(arch)
    saved = json.loads((METHODS / arch / case / "adapter_config.json").read_text())["config"]
    _load(model, METHODS / arch / case, "a")
    assert model.adapters_config.get("a").to_dict() == saved
    del model
    test_adapterhub_bottleneck_family_and_gating_scores(arch, case)
