"""Tiny configs of decoder-only (causal) text models."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from transformers import GPT2Config, LlamaConfig, MistralConfig, Qwen2Config

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

CONFIGS: dict[str, Callable[[], Any]] = {
    "gpt2": lambda: GPT2Config(
        n_embd=32, n_layer=2, n_head=4, n_inner=37, n_positions=64, bos_token_id=1, eos_token_id=2, **COMMON
    ),
    "llama": lambda: LlamaConfig(**DECODER),
    "mistral": lambda: MistralConfig(**DECODER),
    "qwen2": lambda: Qwen2Config(**DECODER),
}
INPUTS: dict[str, Callable[..., dict[str, Any]]] = {}
