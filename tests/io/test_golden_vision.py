"""ViT, BEiT and CLIP adapters saved by AdapterHub 1.3.0 (transformers 4.57; tests/fixtures/golden/models/<arch>,
made by make_golden_vision.py) load unchanged into the transformers 5 models, whose modules were renamed
(`ArchitectureSpec.saved_names`), and reproduce AdapterHub's hidden states, pooled outputs, CLIP embeddings and
logits, and image-classification head logits to 1e-5; saving writes AdapterHub's key names again.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from adapterkit import AutoAdapterModel

MODELS = Path(__file__).parents[1] / "fixtures" / "golden" / "models"
ARCHS = ("vit", "beit", "clip")
CASES = [
    (arch, case, info["base"])
    for arch in ARCHS
    for case, info in json.loads((MODELS / arch / "MANIFEST.json").read_text())["cases"].items()
]
INPUT_NAMES = ("input_ids", "attention_mask", "pixel_values")


def _base(arch: str, base: str):
    return AutoAdapterModel.from_pretrained(MODELS / arch / base, attn_implementation="eager").eval()


def _outputs(model, inputs: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The outputs named like the expected ones (see make_golden_vision.outputs)."""
    with torch.no_grad():
        out = model.base_model(**inputs)
        found = {
            "last_hidden_state": out.get("last_hidden_state"),
            "pooler_output": out.get("pooler_output"),
            "text_embeds": out.get("text_embeds"),
            "image_embeds": out.get("image_embeds"),
            "logits_per_image": out.get("logits_per_image"),
        }
        if "text_model_output" in out:
            found["text_last_hidden_state"] = out.text_model_output.last_hidden_state
            found["vision_last_hidden_state"] = out.vision_model_output.last_hidden_state
        if "logits" in expected:
            found["logits"] = model(**inputs, head="a").logits
    return {k: found[k] for k in expected if k not in INPUT_NAMES}


def _split(expected: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    inputs = {k: v for k, v in expected.items() if k in INPUT_NAMES}
    return inputs, {k: v for k, v in expected.items() if k not in INPUT_NAMES}


@pytest.mark.parametrize(("arch", "base"), sorted({(a, b) for a, _, b in CASES}))
def test_base_model_converts(arch, base):
    """The transformers 4 base checkpoints load into transformers 5 (renamed modules) with the same outputs."""
    inputs, expected = _split(load_file(MODELS / arch / base / "expected.safetensors"))
    found = _outputs(_base(arch, base), inputs, expected)
    for key, value in expected.items():
        torch.testing.assert_close(found[key], value, atol=1e-5, rtol=0, msg=key)


@pytest.mark.parametrize(("arch", "case", "base"), CASES)
def test_adapterhub_adapter_reproduces_outputs(arch, case, base, tmp_path):
    model = _base(arch, base)
    inputs, expected = _split(load_file(MODELS / arch / case / "expected.safetensors"))
    info: dict = {}
    assert model.load_adapter(MODELS / arch / case, load_as="a", loading_info=info, set_active=True) == "a"
    assert info == {"missing_keys": [], "unexpected_keys": []}
    found = _outputs(model, inputs, expected)
    for key, value in expected.items():
        torch.testing.assert_close(found[key], value, atol=1e-5, rtol=0, msg=key)

    # saving writes AdapterHub's names again (its files, less the copies of the prefix pool it keeps per layer)
    model.save_adapter(tmp_path, "a", use_safetensors=False)
    ours = set(torch.load(tmp_path / "pytorch_adapter.bin", weights_only=True))
    theirs = set(torch.load(MODELS / arch / case / "pytorch_adapter.bin", weights_only=True))
    assert ours == {k for k in theirs if ".prefix_tuning.pool." not in k}
