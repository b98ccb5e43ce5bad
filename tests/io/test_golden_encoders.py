"""Encoder-family parity with AdapterHub 1.3.0: adapters it saved on ALBERT, DeBERTa, DeBERTa-v2, BERT-Generation,
X-MOD and ModernBERT (tests/fixtures/golden/models, made by make_golden_encoders.py) load unchanged and reproduce
its hidden states and head logits to 1e-5, except where adapterkit deliberately differs (docs/models_encoders.md):
DeBERTa's fused q/k/v LoRA and its prompts' view of padding. CamemBERT, which AdapterHub lacks, is checked
against its RoBERTa fixtures (the same modules and key names)."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import CamembertConfig, RobertaConfig

from adapterkit import AutoAdapterModel
from adapterkit.integration import architectures

GOLDEN = Path(__file__).parents[1] / "fixtures" / "golden"
MODELS = GOLDEN / "models"
CASES = {
    "albert": ["seq_bn", "seq_bn_both", "lora", "prefix_tuning", "prompt_tuning", "seq_bn_inv"],
    "deberta": ["seq_bn", "double_seq_bn", "lora_ffn"],
    "deberta-v2": ["seq_bn", "double_seq_bn", "lora", "ia3"],
    "bert-generation": ["seq_bn", "double_seq_bn", "lora", "prefix_tuning"],
    "xmod": ["seq_bn", "double_seq_bn", "lora", "prefix_tuning", "language_adapter"],
    "modernbert": ["lora", "ia3", "lora_all"],
}


def _model(arch: str):
    return AutoAdapterModel.from_pretrained(MODELS / arch / "base", attn_implementation="eager").eval()


def _assert_close(outputs: dict, expected: dict) -> None:
    for key, value in outputs.items():
        torch.testing.assert_close(value, expected[key], atol=1e-5, rtol=0)


def _run(model, case_dir: Path) -> tuple[dict, dict]:
    """Load the AdapterHub adapter of ``case_dir`` and run its inputs: (expected, outputs)."""
    expected = load_file(case_dir / "expected.safetensors")
    info: dict = {}
    name = model.load_adapter(str(case_dir), set_active=True, loading_info=info)
    assert name == "a" and info == {"missing_keys": [], "unexpected_keys": []}
    inputs = {"input_ids": expected["input_ids"], "attention_mask": expected["attention_mask"]}
    with torch.no_grad():
        outputs = {"last_hidden_state": model.base_model(**inputs).last_hidden_state}
        if "logits" in expected:
            outputs["logits"] = model(**inputs).logits
    return expected, outputs


@pytest.mark.parametrize("arch", sorted(CASES))
def test_base_model_matches(arch):
    expected = load_file(MODELS / arch / "base" / "expected.safetensors")
    with torch.no_grad():
        out = _model(arch)(input_ids=expected["input_ids"], attention_mask=expected["attention_mask"])
    torch.testing.assert_close(out.last_hidden_state, expected["last_hidden_state"], atol=1e-5, rtol=0)


@pytest.mark.parametrize(("arch", "case"), [(a, c) for a, cases in CASES.items() for c in cases])
def test_adapterhub_adapter_reproduces_outputs(arch, case):
    expected, outputs = _run(_model(arch), MODELS / arch / case)
    _assert_close(outputs, expected)


@pytest.fixture
def adapterhub_fused_layout(monkeypatch):
    """DeBERTa's entry with AdapterHub's reading of ``in_proj``: q, k and v as three consecutive blocks."""
    spec = architectures.ARCHITECTURES["deberta"]
    stack = dataclasses.replace(spec.stack, fused_qkv_layout="qkv")
    monkeypatch.setitem(architectures.ARCHITECTURES, "deberta", dataclasses.replace(spec, stacks=(stack,)))


@pytest.mark.parametrize("case", ["lora", "ia3"])
def test_deberta_fused_lora_matches_with_adapterhub_layout(adapterhub_fused_layout, case):
    expected, outputs = _run(_model("deberta"), MODELS / "deberta" / case)
    _assert_close(outputs, expected)


@pytest.mark.parametrize("case", ["lora", "ia3"])
def test_deberta_fused_lora_differs_by_default(case):
    """By default the q/k/v updates go to DeBERTa's real q/k/v rows (per head), where AdapterHub's do not."""
    expected, outputs = _run(_model("deberta"), MODELS / "deberta" / case)
    assert (outputs["last_hidden_state"] - expected["last_hidden_state"]).abs().max() > 1e-2


@pytest.mark.parametrize("arch", ["deberta", "deberta-v2"])
def test_deberta_prompt_tuning_matches_on_rows_without_padding(arch):
    """AdapterHub's DeBERTa lets prompt tokens attend to padding; rows without padding must agree exactly."""
    expected, outputs = _run(_model(arch), MODELS / arch / "prompt_tuning")
    full = expected["attention_mask"].all(dim=1)
    assert full.any() and not full.all()
    for key, value in outputs.items():
        torch.testing.assert_close(value[full], expected[key][full], atol=1e-5, rtol=0)


@pytest.mark.parametrize("case", ["seq_bn", "lora", "double_seq_bn"])
def test_camembert_takes_roberta_adapters(case, tmp_path):
    """CamemBERT has RoBERTa's modules: AdapterHub's RoBERTa adapters, relabelled for CamemBERT (AdapterHub has no
    CamemBERT), load into it and give RoBERTa's outputs."""
    shutil.copytree(GOLDEN / "roberta" / case, tmp_path / case)
    config_file = tmp_path / case / "adapter_config.json"
    saved = json.loads(config_file.read_text())
    config_file.write_text(json.dumps({**saved, "model_type": "camembert"}))
    roberta = RobertaConfig.from_pretrained(GOLDEN / "roberta" / "base").to_dict()
    config = CamembertConfig(**{k: v for k, v in roberta.items() if k != "model_type"})
    config._attn_implementation = "eager"
    model = AutoAdapterModel.from_config(config).eval()
    model.base_model.load_state_dict(load_file(GOLDEN / "roberta" / "base" / "model.safetensors"))
    assert type(model.base_model).__name__ == "CamembertModel"
    expected, outputs = _run(model, tmp_path / case)
    _assert_close(outputs, expected)
