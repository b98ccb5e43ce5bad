"""Tiny configs of encoder-only text models."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from transformers import (
    AlbertConfig,
    BertConfig,
    BertGenerationConfig,
    CamembertConfig,
    DebertaConfig,
    DebertaV2Config,
    DistilBertConfig,
    ElectraConfig,
    ModernBertConfig,
    RobertaConfig,
    XLMRobertaConfig,
    XmodConfig,
)

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
    "camembert": lambda: CamembertConfig(**ENCODER, bos_token_id=1, eos_token_id=2),
    "bert-generation": lambda: BertGenerationConfig(**ENCODER, bos_token_id=1, eos_token_id=2),
    # 2 physical layers (one group of two) run twice each: layer sharing, and embeddings narrower than the layers
    "albert": lambda: AlbertConfig(**ENCODER, embedding_size=16, num_hidden_groups=1, inner_group_num=2),
    # relative attention (content->position and position->content), as the released checkpoints
    "deberta": lambda: DebertaConfig(**ENCODER, relative_attention=True, pos_att_type=["c2p", "p2c"]),
    # DeBERTa-v3's settings: shared q/k projections for the relative positions, log buckets, no absolute positions
    "deberta-v2": lambda: DebertaV2Config(
        **ENCODER,
        relative_attention=True,
        pos_att_type=["p2c", "c2p"],
        share_att_key=True,
        position_buckets=8,
        norm_rel_ebd="layer_norm",
        position_biased_input=False,
    ),
    "xmod": lambda: XmodConfig(**ENCODER, bos_token_id=1, eos_token_id=2, languages=["en_XX", "de_DE"]),
    # layer 0 global attention, layer 1 a sliding window shorter than the inputs
    "modernbert": lambda: ModernBertConfig(
        **ENCODER, bos_token_id=1, eos_token_id=2, cls_token_id=1, sep_token_id=2,
        global_attn_every_n_layers=2, local_attention=4,
    ),
}
INPUTS: dict[str, Callable[..., dict[str, Any]]] = {}
