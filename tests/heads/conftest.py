"""Tiny random BERT and GPT-2 adapter models for the head tests."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from transformers import BertConfig, GPT2Config

from adapterkit import AutoAdapterModel

VOCAB = 99
HIDDEN = 32


def _config(kind: str, **overrides: Any) -> Any:
    if kind == "bert":
        return BertConfig(
            hidden_size=HIDDEN,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=37,
            vocab_size=VOCAB,
            **overrides,
        )
    return GPT2Config(
        n_embd=HIDDEN,
        n_layer=2,
        n_head=4,
        n_inner=37,
        vocab_size=VOCAB,
        n_positions=64,
        bos_token_id=VOCAB - 1,
        eos_token_id=VOCAB - 1,
        **overrides,
    )


@pytest.fixture
def make_model() -> Callable[..., Any]:
    """Factory: ``make_model("bert" | "gpt2", **config_overrides)`` -> a seeded tiny adapter model
    in eval mode."""

    def make(kind: str = "bert", **overrides: Any) -> Any:
        torch.manual_seed(0)
        return AutoAdapterModel.from_config(_config(kind, **overrides)).eval()

    return make


@pytest.fixture
def bert(make_model: Callable[..., Any]) -> Any:
    """A tiny random BERT adapter model."""
    return make_model("bert")


@pytest.fixture
def gpt2(make_model: Callable[..., Any]) -> Any:
    """A tiny random GPT-2 adapter model."""
    return make_model("gpt2")


@pytest.fixture
def ids() -> torch.Tensor:
    """Random token ids, shape ``(2, 7)``."""
    return torch.randint(1, VOCAB, (2, 7), generator=torch.Generator().manual_seed(1))
