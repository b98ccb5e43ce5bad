"""Tiny configs of speech models (Whisper) and composite models (``EncoderDecoderModel``, BERT to BERT)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from transformers import BertConfig, EncoderDecoderConfig, EncoderDecoderModel, WhisperConfig

import adapterkit

from .encoders import COMMON, ENCODER

WHISPER_FRAMES = 16  # input frames: 2 * max_source_positions (the encoder's second convolution halves them)


def whisper_config() -> WhisperConfig:
    """A 2 + 2 layer Whisper (hidden 32) over 8 mel bins."""
    return WhisperConfig(
        d_model=32,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=37,
        decoder_ffn_dim=37,
        num_mel_bins=8,
        max_source_positions=WHISPER_FRAMES // 2,
        max_target_positions=32,
        bos_token_id=1,
        eos_token_id=2,
        decoder_start_token_id=1,
        suppress_tokens=None,
        begin_suppress_tokens=None,
        **COMMON,
    )


def bert2bert_config() -> EncoderDecoderConfig:
    """An ``EncoderDecoderModel`` config: a 2-layer BERT encoder and a 2-layer BERT decoder with cross-attention."""
    decoder = BertConfig(**ENCODER, is_decoder=True, add_cross_attention=True)
    config = EncoderDecoderConfig.from_encoder_decoder_configs(BertConfig(**ENCODER), decoder)
    config.decoder_start_token_id = 1
    config.pad_token_id = COMMON["pad_token_id"]
    config.eos_token_id = 2
    return config


def _decoder_inputs(batch: int, seq: int, g: torch.Generator) -> dict[str, torch.Tensor]:
    """Right-padded decoder inputs starting with the start token 1: row 0 full, later rows with padding."""
    length = max(3, seq // 2)
    ids = torch.randint(3, 99, (batch, length), generator=g)
    ids[:, 0] = 1
    mask = torch.ones(batch, length, dtype=torch.long)
    for row in range(1, batch):
        mask[row, length - row :] = 0
    return {"decoder_input_ids": ids * mask, "decoder_attention_mask": mask}


def whisper_inputs(batch: int = 3, seq: int = 9, seed: int = 42) -> dict[str, torch.Tensor]:
    """Random log-mel features ``(batch, 8, 16)`` and padded decoder inputs."""
    g = torch.Generator().manual_seed(seed)
    features = torch.randn(batch, 8, WHISPER_FRAMES, generator=g)
    return {"input_features": features, **_decoder_inputs(batch, seq, g)}


def encoder_decoder_inputs(batch: int = 3, seq: int = 9, seed: int = 42) -> dict[str, torch.Tensor]:
    """Padded encoder token inputs and padded decoder inputs."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 99, (batch, seq), generator=g)
    mask = torch.ones(batch, seq, dtype=torch.long)
    for row, pad in zip(range(1, batch), (2, 4), strict=False):
        mask[row, seq - pad :] = 0
    return {"input_ids": ids * mask, "attention_mask": mask, **_decoder_inputs(batch, seq, g)}


def encoder_decoder_model(config: EncoderDecoderConfig) -> EncoderDecoderModel:
    """An ``EncoderDecoderModel`` with adapters enabled (AdapterHub has no adapter model class for it)."""
    return adapterkit.init(EncoderDecoderModel(config))


CONFIGS: dict[str, Callable[[], Any]] = {"whisper": whisper_config, "encoder-decoder": bert2bert_config}
INPUTS: dict[str, Callable[..., dict[str, Any]]] = {
    "whisper": whisper_inputs,
    "encoder-decoder": encoder_decoder_inputs,
}
MODELS: dict[str, Callable[[Any], Any]] = {"encoder-decoder": encoder_decoder_model}


def greedy_decode(model: Any, inputs: dict[str, Any], steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy decoding by hand, as ``generate(do_sample=False)`` does it but without a cache: each step runs the
    model on the whole decoder prefix (from ``config.decoder_start_token_id``) and appends the argmax token; rows
    that produced ``eos_token_id`` get ``pad_token_id`` from then on.

    Returns:
        The sequences ``(batch, 1 + steps)`` and the raw logits of each step ``(batch, steps, vocab)``.
    """
    config = model.config
    batch = next(iter(inputs.values())).shape[0]
    ids = torch.full((batch, 1), config.decoder_start_token_id)
    finished = torch.zeros(batch, dtype=torch.bool)
    logits = []
    with torch.no_grad():
        for _ in range(steps):
            step = model(**inputs, decoder_input_ids=ids).logits[:, -1]
            logits.append(step)
            token = step.argmax(-1).masked_fill(finished, config.pad_token_id)
            finished |= token == config.eos_token_id
            ids = torch.cat([ids, token[:, None]], dim=1)
    return ids, torch.stack(logits, dim=1)
