"""Tiny configs of decoder-only (causal) text models."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from transformers import (
    Gemma2Config,
    Gemma3Config,
    Gemma3TextConfig,
    GemmaConfig,
    GPT2Config,
    GPTJConfig,
    GPTNeoXConfig,
    LlamaConfig,
    MistralConfig,
    Olmo2Config,
    Phi3Config,
    Qwen2Config,
    Qwen3Config,
)

from .encoders import COMMON

DECODER = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    intermediate_size=37,
    max_position_embeddings=64,
    bos_token_id=1,
    eos_token_id=2,
    **COMMON,
)
# explicit head size (these models default to 128 or 256); layer 0 attends in a window shorter than the inputs
HEAD_DIM = dict(head_dim=8)
SANDWICH = dict(
    **DECODER, **HEAD_DIM, query_pre_attn_scalar=8, sliding_window=4,
    layer_types=["sliding_attention", "full_attention"],
)


def gemma3_text() -> Gemma3TextConfig:
    """Gemma-3's language model (its own model type, ``gemma3_text``)."""
    return Gemma3TextConfig(**SANDWICH)


def gemma3() -> Gemma3Config:
    """The multimodal Gemma-3 with a tiny SigLIP vision tower; the tests feed it text only."""
    vision = dict(
        model_type="siglip_vision_model",
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=1,
        num_attention_heads=4,
        image_size=16,
        patch_size=4,
    )
    return Gemma3Config(text_config=SANDWICH, vision_config=vision, mm_tokens_per_image=4, image_token_index=98)


CONFIGS: dict[str, Callable[[], Any]] = {
    "gpt2": lambda: GPT2Config(
        n_embd=32, n_layer=2, n_head=4, n_inner=37, n_positions=64, bos_token_id=1, eos_token_id=2, **COMMON
    ),
    "llama": lambda: LlamaConfig(**DECODER),
    "mistral": lambda: MistralConfig(**DECODER),
    "qwen2": lambda: Qwen2Config(**DECODER),
    "gptj": lambda: GPTJConfig(
        n_embd=32, n_layer=2, n_head=4, n_inner=37, rotary_dim=4, n_positions=64, bos_token_id=1, eos_token_id=2,
        **COMMON,
    ),
    # parallel residual (the default); tests/integration/test_decoders.py also runs the sequential form
    "gpt_neox": lambda: GPTNeoXConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37, max_position_embeddings=64,
        bos_token_id=1, eos_token_id=2, **COMMON,
    ),
    "qwen3": lambda: Qwen3Config(**DECODER, **HEAD_DIM),
    "gemma": lambda: GemmaConfig(**DECODER, **HEAD_DIM),
    "gemma2": lambda: Gemma2Config(**SANDWICH),
    "gemma3_text": gemma3_text,
    "gemma3": gemma3,
    # grouped-query attention: the fused qkv_proj has 32 query and 2 x 16 key/value outputs
    "phi3": lambda: Phi3Config(**DECODER),
    "olmo2": lambda: Olmo2Config(**DECODER),
}
INPUTS: dict[str, Callable[..., dict[str, Any]]] = {}
