"""Tiny configs of encoder-decoder models (hidden 32, 2 encoder + 2 decoder layers) and their inputs: encoder
``input_ids`` / ``attention_mask`` (right-padded, each row ending in eos) plus ``decoder_input_ids``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from transformers import BartConfig, MBartConfig, MT5Config, PLBartConfig, T5Config

PAD, BOS, EOS = 0, 1, 2
T5 = dict(
    vocab_size=99,
    d_model=32,
    d_kv=8,
    d_ff=37,
    num_layers=2,
    num_decoder_layers=2,
    num_heads=4,
    relative_attention_num_buckets=8,
    relative_attention_max_distance=16,
    pad_token_id=PAD,
    eos_token_id=EOS,
    decoder_start_token_id=PAD,
)
BART = dict(
    vocab_size=99,
    d_model=32,
    encoder_layers=2,
    decoder_layers=2,
    encoder_attention_heads=4,
    decoder_attention_heads=4,
    encoder_ffn_dim=37,
    decoder_ffn_dim=37,
    max_position_embeddings=64,
    pad_token_id=PAD,
    bos_token_id=BOS,
    eos_token_id=EOS,
    decoder_start_token_id=EOS,
    forced_eos_token_id=None,
)

CONFIGS: dict[str, Callable[[], Any]] = {
    "t5": lambda: T5Config(**T5),
    # gated-gelu feed-forward (wi_0, wi_1) and untied LM head, as mT5 and T5 v1.1
    "mt5": lambda: MT5Config(**T5),
    "bart": lambda: BartConfig(**BART),
    "mbart": lambda: MBartConfig(**BART),
    "plbart": lambda: PLBartConfig(**BART),
}


def seq2seq_inputs(batch: int = 3, seq: int = 9, seed: int = 42) -> dict[str, torch.Tensor]:
    """Right-padded encoder inputs (row 0 full, later rows 2 and 4 padding positions), each row's last real token
    eos; decoder inputs of as many tokens (transformers' sequence classification classes need that), starting with
    eos (BART's decoder start token)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 99, (batch, seq), generator=g)
    mask = torch.ones(batch, seq, dtype=torch.long)
    for row, pad in zip(range(1, batch), (2, 4), strict=False):
        mask[row, seq - pad :] = 0
    ids = ids * mask
    ids[torch.arange(batch), mask.sum(-1) - 1] = EOS
    decoder = torch.randint(3, 99, (batch, seq), generator=g)
    decoder[:, 0] = EOS
    return {"input_ids": ids, "attention_mask": mask, "decoder_input_ids": decoder}


INPUTS: dict[str, Callable[..., dict[str, Any]]] = {arch: seq2seq_inputs for arch in CONFIGS}
