"""Tiny random models (hidden 32, 2 layers) for every supported architecture, and test helpers."""

from __future__ import annotations

import torch
from transformers import (
    BertConfig,
    DistilBertConfig,
    ElectraConfig,
    GPT2Config,
    LlamaConfig,
    MistralConfig,
    Qwen2Config,
    RobertaConfig,
    XLMRobertaConfig,
)

from adapterkit import AutoAdapterModel

_COMMON = dict(vocab_size=99, pad_token_id=0)
_ENCODER = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=37,
    max_position_embeddings=64,
    **_COMMON,
)
_DECODER = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    intermediate_size=37,
    max_position_embeddings=64,
    bos_token_id=1,
    eos_token_id=2,
    **_COMMON,
)

TINY_CONFIGS = {
    "bert": lambda: BertConfig(**_ENCODER),
    "roberta": lambda: RobertaConfig(**_ENCODER, bos_token_id=1, eos_token_id=2),
    "xlm-roberta": lambda: XLMRobertaConfig(**_ENCODER, bos_token_id=1, eos_token_id=2),
    "electra": lambda: ElectraConfig(**_ENCODER, embedding_size=32),
    "distilbert": lambda: DistilBertConfig(
        dim=32, n_layers=2, n_heads=4, hidden_dim=37, max_position_embeddings=64, **_COMMON
    ),
    "gpt2": lambda: GPT2Config(
        n_embd=32, n_layer=2, n_head=4, n_inner=37, n_positions=64, bos_token_id=1, eos_token_id=2, **_COMMON
    ),
    "llama": lambda: LlamaConfig(**_DECODER),
    "mistral": lambda: MistralConfig(**_DECODER),
    "qwen2": lambda: Qwen2Config(**_DECODER),
}
ARCHS = sorted(TINY_CONFIGS)
DECODERS = ("gpt2", "llama", "mistral", "qwen2")


def tiny_config(arch: str, attn_implementation: str = "eager"):
    """A tiny random config of ``arch`` with the given attention implementation."""
    config = TINY_CONFIGS[arch]()
    config._attn_implementation = attn_implementation
    return config


def tiny_model(arch: str, attn_implementation: str = "eager", seed: int = 0):
    """A tiny random ``XxxAdapterModel`` in eval mode."""
    torch.manual_seed(seed)
    return AutoAdapterModel.from_config(tiny_config(arch, attn_implementation)).eval()


def tiny_inputs(batch: int = 3, seq: int = 9, seed: int = 42) -> dict[str, torch.Tensor]:
    """Right-padded random inputs: row 0 full, later rows with 2 and 4 padding positions."""
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
