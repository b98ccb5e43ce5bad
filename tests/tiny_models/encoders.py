"""Tiny configs of encoder-only text models."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from transformers import BertConfig, DistilBertConfig, ElectraConfig, RobertaConfig, XLMRobertaConfig

COMMON = dict(vocab_size=99, pad_token_id=0)
ENCODER = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=37,
    max_position_embeddings=64,
    **COMMON,
)

CONFIGS: dict[str, Callable[[], Any]] = {
    "bert": lambda: BertConfig(**ENCODER),
    "roberta": lambda: RobertaConfig(**ENCODER, bos_token_id=1, eos_token_id=2),
    "xlm-roberta": lambda: XLMRobertaConfig(**ENCODER, bos_token_id=1, eos_token_id=2),
    "electra": lambda: ElectraConfig(**ENCODER, embedding_size=32),
    "distilbert": lambda: DistilBertConfig(
        dim=32, n_layers=2, n_heads=4, hidden_dim=37, max_position_embeddings=64, **COMMON
    ),
}
INPUTS: dict[str, Callable[..., dict[str, Any]]] = {}
