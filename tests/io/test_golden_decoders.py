"""Same numbers as AdapterHub for the decoder family: adapters saved by AdapterHub 1.3.0 (GPT-J natively; Gemma-2,
Gemma-3 text, Qwen-3 and Phi-3 through its plugin interface, keys ``model.layers.{i}...``; fixtures made by
tests/fixtures/golden/make_golden_decoders.py) load unchanged and reproduce its hidden states, GPT-J's head logits
and the plugin models' causal LM logits to 1e-5."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import transformers
from safetensors.torch import load_file

import adapterkit
from adapterkit import AutoAdapterModel

GOLDEN = Path(__file__).parents[1] / "fixtures" / "golden" / "models"
ARCHS = ["gptj", "gemma2", "gemma3_text", "qwen3", "phi3"]
LM_CLASSES = {
    "gemma2": "Gemma2ForCausalLM",
    "gemma3_text": "Gemma3ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
    "phi3": "Phi3ForCausalLM",
}
CASES = [
    (arch, case)
    for arch in ARCHS
    for case in sorted(json.loads((GOLDEN / arch / "MANIFEST.json").read_text())["cases"])
]


def _inputs(expected: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {"input_ids": expected["input_ids"], "attention_mask": expected["attention_mask"]}


@pytest.mark.parametrize("arch", ARCHS)
def test_base_model_matches(arch):
    model = AutoAdapterModel.from_pretrained(GOLDEN / arch / "base", attn_implementation="eager").eval()
    expected = load_file(GOLDEN / arch / "base" / "expected.safetensors")
    with torch.no_grad():
        out = model(**_inputs(expected))
    torch.testing.assert_close(out.last_hidden_state, expected["last_hidden_state"], atol=1e-5, rtol=0)


@pytest.mark.parametrize(("arch", "case"), CASES)
def test_adapterhub_adapter_reproduces_outputs(arch, case):
    model = AutoAdapterModel.from_pretrained(GOLDEN / arch / "base", attn_implementation="eager").eval()
    expected = load_file(GOLDEN / arch / case / "expected.safetensors")
    info: dict = {}
    name = model.load_adapter(GOLDEN / arch / case, set_active=True, loading_info=info)
    assert name == "a" and info == {"missing_keys": [], "unexpected_keys": []}
    with torch.no_grad():
        hidden = model.base_model(**_inputs(expected)).last_hidden_state
        out = model(**_inputs(expected))
    torch.testing.assert_close(hidden, expected["last_hidden_state"], atol=1e-5, rtol=0)
    if arch == "gptj":  # AdapterHub's classification head, saved with the adapter
        torch.testing.assert_close(out.logits, expected["logits"], atol=1e-5, rtol=0)


@pytest.mark.parametrize(("arch", "case"), [c for c in CASES if c[0] in LM_CLASSES])
def test_plugin_adapter_in_plain_causal_lm(arch, case):
    """AdapterHub saved these from ``adapters.init(XxxForCausalLM)``; ``adapterkit.init`` on the same class gives
    its causal LM logits (Gemma-2's final logit soft-capping included)."""
    lm_class = getattr(transformers, LM_CLASSES[arch])
    model = adapterkit.init(lm_class.from_pretrained(GOLDEN / arch / "base", attn_implementation="eager").eval())
    expected = load_file(GOLDEN / arch / case / "expected.safetensors")
    model.load_adapter(GOLDEN / arch / case, set_active=True)
    with torch.no_grad():
        logits = model(**_inputs(expected)).logits
    torch.testing.assert_close(logits, expected["logits"], atol=1e-5, rtol=0)
