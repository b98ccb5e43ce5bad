"""Tiny configs of vision and multimodal models: 8x8 images in 4x4 patches (5 tokens with the class token).

BEiT has its released checkpoints' settings (layer scale, a relative position bias per layer, mean pooling) and
4 layers.
CLIP's towers have different hidden sizes (text 32, vision 24), so every test on ``clip`` also checks that each
tower is sized by its own sub-config.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from transformers import BeitConfig, CLIPConfig, CLIPTextConfig, CLIPVisionConfig, ViTConfig

IMAGE = dict(image_size=8, patch_size=4, num_channels=3)
LAYERS = dict(num_hidden_layers=2, num_attention_heads=4, intermediate_size=37)
CLIP_TEXT = dict(hidden_size=32, vocab_size=99, max_position_embeddings=64, pad_token_id=0, bos_token_id=1,
                 eos_token_id=2, projection_dim=16, **LAYERS)
CLIP_VISION = dict(hidden_size=24, projection_dim=16, **IMAGE, **LAYERS)

CONFIGS: dict[str, Callable[[], Any]] = {
    "vit": lambda: ViTConfig(hidden_size=32, **IMAGE, **LAYERS),
    # 4 layers: BeitForSemanticSegmentation reads the features of four of them (out_indices)
    "beit": lambda: BeitConfig(
        hidden_size=32, vocab_size=99, use_relative_position_bias=True, layer_scale_init_value=0.1,
        use_mean_pooling=True, **IMAGE, **{**LAYERS, "num_hidden_layers": 4}, out_indices=[1, 2, 3, 4],
    ),
    "clip": lambda: CLIPConfig(text_config=CLIP_TEXT, vision_config=CLIP_VISION, projection_dim=16),
    "clip_text_model": lambda: CLIPTextConfig(**CLIP_TEXT),
    "clip_vision_model": lambda: CLIPVisionConfig(**CLIP_VISION),
}


def pixel_values(batch: int, seed: int) -> torch.Tensor:
    """Random ``(batch, 3, 8, 8)`` images."""
    return torch.randn(batch, 3, 8, 8, generator=torch.Generator().manual_seed(seed))


def text(batch: int, seq: int, seed: int) -> dict[str, torch.Tensor]:
    """CLIP text inputs: right-padded random ids, each row ending in the end-of-text token (id 2, which CLIP pools)
    before its padding; rows 1 and 2 have 2 and 4 padding positions."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 99, (batch, seq), generator=g)
    mask = torch.ones(batch, seq, dtype=torch.long)
    for row, pad in zip(range(1, batch), (2, 4), strict=False):
        mask[row, seq - pad :] = 0
    ids = ids * mask
    ids[torch.arange(batch), mask.sum(-1) - 1] = 2
    return {"input_ids": ids, "attention_mask": mask}


INPUTS: dict[str, Callable[..., dict[str, Any]]] = {
    "vit": lambda batch, seq, seed: {"pixel_values": pixel_values(batch, seed)},
    "beit": lambda batch, seq, seed: {"pixel_values": pixel_values(batch, seed)},
    "clip": lambda batch, seq, seed: {**text(batch, seq, seed), "pixel_values": pixel_values(batch, seed)},
    "clip_text_model": text,
    "clip_vision_model": lambda batch, seq, seed: {"pixel_values": pixel_values(batch, seed)},
}
