"""Whisper and ``EncoderDecoderModel`` parity with AdapterHub 1.3.0: adapters it saved (tests/fixtures/golden/models,
made by make_golden_speech.py) load unchanged into adapterkit's models with the same base weights, and reproduce
its encoder and decoder outputs and LM logits (Whisper: of its ``seq2seq_lm`` head) to 1e-5."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import EncoderDecoderModel

import adapterkit
from adapterkit import AutoAdapterModel

MODELS = Path(__file__).parents[1] / "fixtures" / "golden" / "models"
CASES = {
    "whisper": ["seq_bn", "double_seq_bn", "seq_bn_cross", "lora", "lora_all", "ia3", "prefix_tuning"],
    "encoder-decoder": ["seq_bn", "double_seq_bn", "lora", "lora_all", "prefix_tuning"],
}
_INPUT_KEYS = ("input_features", "input_ids", "attention_mask", "decoder_input_ids", "decoder_attention_mask")


def _model(arch: str):
    base = MODELS / arch / "base"
    if arch == "whisper":
        return AutoAdapterModel.from_pretrained(base, attn_implementation="eager").eval()
    return adapterkit.init(EncoderDecoderModel.from_pretrained(base, attn_implementation="eager").eval())


def _outputs(arch: str, model, expected: dict) -> dict[str, torch.Tensor]:
    inputs = {k: v for k, v in expected.items() if k in _INPUT_KEYS}
    with torch.no_grad():
        if arch == "whisper":
            out = model.base_model(**inputs)
            found = {
                "encoder_last_hidden_state": out.encoder_last_hidden_state,
                "last_hidden_state": out.last_hidden_state,
            }
            if "logits" in expected:
                found["logits"] = model(**inputs, head="a").logits
            return found
        out = model(**inputs)
        return {"encoder_last_hidden_state": out.encoder_last_hidden_state, "logits": out.logits}


def _assert_close(found: dict, expected: dict) -> None:
    assert found
    for key, value in found.items():
        torch.testing.assert_close(value, expected[key], atol=1e-5, rtol=0)


@pytest.mark.parametrize("arch", sorted(CASES))
def test_base_model_matches(arch):
    expected = load_file(MODELS / arch / "base" / "expected.safetensors")
    _assert_close(_outputs(arch, _model(arch), expected), expected)


@pytest.mark.parametrize(("arch", "case"), [(a, c) for a, cases in CASES.items() for c in cases])
def test_adapterhub_adapter_reproduces_outputs(arch, case):
    case_dir = MODELS / arch / case
    expected = load_file(case_dir / "expected.safetensors")
    model = _model(arch)
    info: dict = {}
    name = model.load_adapter(str(case_dir), set_active=True, loading_info=info)
    assert name == "a" and info == {"missing_keys": [], "unexpected_keys": []}
    if arch == "whisper":
        assert "a" in model.heads and "logits" in expected
    _assert_close(_outputs(arch, model, expected), expected)
