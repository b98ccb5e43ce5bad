"""Same numbers as AdapterHub: its saved adapters (tests/fixtures/golden, made by make_golden.py with
adapters==1.3.0) load unchanged and reproduce its hidden states and head logits to 1e-5."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from adapterkit import AutoAdapterModel

GOLDEN = Path(__file__).parents[1] / "fixtures" / "golden"
ARCHS = ["bert", "roberta", "distilbert", "gpt2", "llama"]
METHODS = [
    "seq_bn",
    "double_seq_bn",
    "par_bn",
    "scaled_par_bn",
    "lora",
    "ia3",
    "seq_bn_safetensors",
    "lora_safetensors",
]


@pytest.mark.parametrize("arch", ARCHS)
def test_base_model_matches(arch):
    model = AutoAdapterModel.from_pretrained(GOLDEN / arch / "base", attn_implementation="eager").eval()
    expected = load_file(GOLDEN / arch / "base" / "expected.safetensors")
    with torch.no_grad():
        out = model(input_ids=expected["input_ids"], attention_mask=expected["attention_mask"])
    torch.testing.assert_close(out.last_hidden_state, expected["last_hidden_state"], atol=1e-5, rtol=0)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("arch", ARCHS)
def test_adapterhub_adapter_reproduces_logits(arch, method):
    model = AutoAdapterModel.from_pretrained(GOLDEN / arch / "base", attn_implementation="eager").eval()
    expected = load_file(GOLDEN / arch / method.removesuffix("_safetensors") / "expected.safetensors")
    info: dict = {}
    name = model.load_adapter(GOLDEN / arch / method, set_active=True, loading_info=info)
    assert name == "a" and info == {"missing_keys": [], "unexpected_keys": []}
    inputs = {"input_ids": expected["input_ids"], "attention_mask": expected["attention_mask"]}
    with torch.no_grad():
        logits = model(**inputs).logits
        hidden = model.base_model(**inputs).last_hidden_state
    torch.testing.assert_close(hidden, expected["last_hidden_state"], atol=1e-5, rtol=0)
    torch.testing.assert_close(logits, expected["logits"], atol=1e-5, rtol=0)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_adapterhub_causal_lm_head_tied_to_embeddings_loads(arch):
    """AdapterHub saves the tied LM-head weight with the head; loading writes it through the tie."""
    model = AutoAdapterModel.from_pretrained(GOLDEN / arch / "base", attn_implementation="eager").eval()
    case = GOLDEN / "methods" / arch / "lora_for_generate"
    expected = load_file(case / "expected.safetensors")
    model.load_adapter(case, set_active=True)
    with torch.no_grad():
        logits = model(input_ids=expected["input_ids"], attention_mask=expected["attention_mask"]).logits
    torch.testing.assert_close(logits, expected["logits"], atol=1e-5, rtol=0)
