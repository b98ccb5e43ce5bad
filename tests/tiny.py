"""Tiny random models (hidden 32, 2 layers) for every supported architecture, and test helpers."""

from __future__ import annotations

import torch

from adapterkit import AutoAdapterModel
from tiny_models import decoders, encoders, seq2seq, speech_and_composite, vision

_FAMILIES = (encoders, decoders, seq2seq, vision, speech_and_composite)
TINY_CONFIGS = {arch: make for family in _FAMILIES for arch, make in family.CONFIGS.items()}
_INPUTS = {arch: make for family in _FAMILIES for arch, make in family.INPUTS.items()}
# architectures whose tiny model is not an ``XxxAdapterModel`` (e.g. ``adapterkit.init`` on a composite model)
_MODELS = {arch: make for family in _FAMILIES for arch, make in getattr(family, "MODELS", {}).items()}
# the architectures the method and composition tests run on in depth; tests/integration/test_models.py
# covers every architecture (ALL_ARCHS)
ARCHS = sorted(["bert", "roberta", "xlm-roberta", "electra", "distilbert", "gpt2", "llama", "mistral", "qwen2"])
ALL_ARCHS = sorted(TINY_CONFIGS)
DECODERS = ("gpt2", "llama", "mistral", "qwen2")


def tiny_config(arch: str, attn_implementation: str = "eager"):
    """A tiny random config of ``arch`` with the given attention implementation."""
    config = TINY_CONFIGS[arch]()
    config._attn_implementation = attn_implementation
    return config


def tiny_model(arch: str, attn_implementation: str = "eager", seed: int = 0):
    """A tiny random ``XxxAdapterModel`` in eval mode (for an ``arch`` in a family's ``MODELS``, the model
    that factory builds from the config, with adapters enabled)."""
    torch.manual_seed(seed)
    if arch in _MODELS:
        return _MODELS[arch](tiny_config(arch, attn_implementation)).eval()
    return AutoAdapterModel.from_config(tiny_config(arch, attn_implementation)).eval()


def tiny_inputs(batch: int = 3, seq: int = 9, seed: int = 42, arch: str | None = None) -> dict[str, torch.Tensor]:
    """Right-padded random inputs: row 0 full, later rows with 2 and 4 padding positions; for an ``arch``
    with other inputs (encoder-decoder, vision, speech), that family's inputs of ``batch`` rows."""
    if arch in _INPUTS:
        return _INPUTS[arch](batch=batch, seq=seq, seed=seed)
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 99, (batch, seq), generator=g)
    mask = torch.ones(batch, seq, dtype=torch.long)
    for row, pad in zip(range(1, batch), (2, 4), strict=False):
        mask[row, seq - pad :] = 0
    return {"input_ids": ids * mask, "attention_mask": mask}


def randomize(model, name: str, seed: int = 1) -> None:
    """Give adapter ``name`` random weights (many adapters start as the identity, hiding errors)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for per_layer in model.get_adapter(name).values():
            for module in per_layer.values():
                for p in module.parameters():
                    p.add_(torch.randn(p.shape, generator=g) * 0.1)
