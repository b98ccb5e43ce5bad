"""Table entries of encoder-only text models.

Family notes (see docs/models_encoders.md): ALBERT's adapters are numbered by physical layer and run at every
use of a shared layer; DeBERTa computes attention itself, so prefix tuning is refused there; X-MOD's built-in
language adapters give way to adapterkit's (`prepare_xmod`), as in AdapterHub.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..spec import ArchitectureSpec, LayerStack, SubBlock


def bert_like(attention_norm: str | None = "attention.output.LayerNorm", **overrides: Any) -> LayerStack:
    """The layer stack of a BERT-style model (``encoder.layer``, post-LN, separate q/k/v).

    Args:
        attention_norm: the attention sub-block's post-LN norm (None where the model applies it outside the
            sub-block, as X-MOD does).
        **overrides: other `LayerStack` fields.
    """
    fields: dict[str, Any] = dict(
        layers="encoder.layer",
        attention=SubBlock(
            output="attention.output.dropout",
            residual_input="attention",
            layer_norm=attention_norm,
            adapter_host="attention.output",
        ),
        ffn=SubBlock(
            output="output.dropout",
            residual_input="intermediate",
            layer_norm="output.LayerNorm",
            adapter_host="output",
        ),
        attn_projections={
            "q": "attention.self.query",
            "k": "attention.self.key",
            "v": "attention.self.value",
        },
        ffn_intermediate="intermediate.dense",
        ffn_output="output.dense",
        name="encoder",
    )
    fields.update(overrides)
    return LayerStack(**fields)


def _entry(model_type: str, stack: LayerStack, **fields: Any) -> ArchitectureSpec:
    return ArchitectureSpec(model_type=model_type, stacks=(stack,), embeddings="embeddings", **fields)


# ---- X-MOD ---------------------------------------------------------------------------------------------------
_XMOD_PREPARED = "_adapterkit_xmod_prepared"
# the X-MOD settings under which AdapterHub's placement (and ours) is defined: post-LN layers, and the language
# adapter reusing the FFN's LayerNorm before the adapter (the model applies that LayerNorm again after it)
_XMOD_REQUIRED = {
    "pre_norm": False,
    "adapter_reuse_layer_norm": True,
    "adapter_layer_norm": False,
    "ln_before_adapter": True,
}


def prepare_xmod(base_model: nn.Module) -> None:
    """Make an X-MOD base model work as AdapterHub's X-MOD does: its built-in language adapters
    (``output.adapter_modules``) are removed, so bottleneck adapters take their place in each FFN sub-block
    (convert a language adapter into an adapterkit one: docs/models_encoders.md), and ``lang_ids`` is refused
    (activate a language adapter instead).

    Raises:
        ValueError: for an X-MOD configuration other than the released checkpoints' (post-LN, the language
            adapter reusing the FFN LayerNorm, applied before it).
    """
    if getattr(base_model, _XMOD_PREPARED, False):
        return
    config = base_model.config
    wrong = {k: getattr(config, k, None) for k, v in _XMOD_REQUIRED.items() if getattr(config, k, None) != v}
    if wrong:
        raise ValueError(
            f"adapterkit supports X-MOD models configured as the released checkpoints ({_XMOD_REQUIRED}); this "
            f"model has {wrong}"
        )
    for layer in base_model.encoder.layer:
        # an empty dict: the model's language-adapter step then keeps LayerNorm(x) and adds nothing
        layer.output.adapter_modules = nn.ModuleDict()
    base_model.register_forward_pre_hook(_refuse_lang_ids, with_kwargs=True)
    setattr(base_model, _XMOD_PREPARED, True)


def _refuse_lang_ids(module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> tuple[tuple, dict[str, Any]]:
    """Forward pre-hook of an X-MOD base model: no ``lang_ids``; the model gets a placeholder (it only indexes
    the removed language adapters with it)."""
    given = kwargs.get("lang_ids")
    if given is None and len(args) > 1:
        given = args[1]
    if given is not None:
        raise ValueError(
            "X-MOD with adapterkit takes no lang_ids: its built-in language adapters are replaced by adapters; "
            "activate a language adapter with set_active_adapters (or AdapterSetup) instead"
        )
    kwargs["lang_ids"] = torch.zeros((), dtype=torch.long)
    return args, kwargs


# ---- entries -------------------------------------------------------------------------------------------------
_ALBERT = LayerStack(
    # one AlbertLayer per group and inner position; the model runs them num_hidden_layers times in all, and
    # AdapterHub numbers (and names) adapters by these physical layers
    layers="encoder.albert_layer_groups.*.albert_layers",
    attention=SubBlock(
        output="attention.output_dropout",
        residual_input="attention",
        layer_norm="attention.LayerNorm",
        adapter_host="attention.attention_adapters",
    ),
    ffn=SubBlock(
        output="ffn_output",
        residual_input="ffn",
        layer_norm="full_layer_layer_norm",
        adapter_host="output_adapters",
    ),
    attn_projections={"q": "attention.query", "k": "attention.key", "v": "attention.value"},
    ffn_intermediate="ffn",
    ffn_output="ffn_output",
    name="encoder",
)

_MODERNBERT = LayerStack(
    layers="layers",
    # pre-LN: the residual stream enters the norms; layer 0's attn_norm is an Identity, still called with it
    attention=SubBlock(output="attn", residual_input="attn_norm", layer_norm=None, adapter_host="attention_adapters"),
    ffn=SubBlock(output="mlp", residual_input="mlp_norm", layer_norm=None, adapter_host="output_adapters"),
    fused_qkv="attn.Wqkv",
    ffn_intermediate="mlp.Wi",
    ffn_output="mlp.Wo",
    name="encoder",
)

# DeBERTa's DisentangledSelfAttention computes attention itself (relative-position terms), not through
# transformers' AttentionInterface
_DEBERTA = {"attention_interface": False}

ENTRIES: list[ArchitectureSpec] = [
    *(_entry(t, bert_like()) for t in ("bert", "roberta", "xlm-roberta", "electra", "camembert", "bert-generation")),
    ArchitectureSpec(
        model_type="distilbert",
        stacks=(
            LayerStack(
                layers="transformer.layer",
                attention=SubBlock(
                    output="attention",
                    residual_input="attention",
                    layer_norm="sa_layer_norm",
                    adapter_host="attention_adapters",
                ),
                ffn=SubBlock(
                    output="ffn", residual_input="ffn", layer_norm="output_layer_norm", adapter_host="output_adapters"
                ),
                attn_projections={"q": "attention.q_lin", "k": "attention.k_lin", "v": "attention.v_lin"},
                ffn_intermediate="ffn.lin1",
                ffn_output="ffn.lin2",
                hidden_size_attr="dim",
                prefix_location="self",
                name="encoder",
            ),
        ),
        embeddings="embeddings",
    ),
    _entry("albert", _ALBERT),
    _entry(
        "deberta",
        bert_like(attn_projections={}, fused_qkv="attention.self.in_proj", fused_qkv_layout="per_head", **_DEBERTA),
    ),
    _entry(
        "deberta-v2",
        bert_like(
            attn_projections={
                "q": "attention.self.query_proj",
                "k": "attention.self.key_proj",
                "v": "attention.self.value_proj",
            },
            **_DEBERTA,
        ),
    ),
    # X-MOD's attention output adds the residual without a norm and XmodAttention normalises afterwards, so the
    # adapter sees h + r, not its norm (AdapterHub's placement); its FFN norm runs inside the sub-block
    _entry("xmod", bert_like(attention_norm=None), prepare=prepare_xmod),
    _entry("modernbert", _MODERNBERT),
]
