"""Table entries of decoder-only (causal) text models."""

from __future__ import annotations

from ..spec import ArchitectureSpec, LayerStack, SubBlock


def llama_like(model_type: str, *, adapterhub_mlp_names: bool = False, **overrides: object) -> ArchitectureSpec:
    """The entry of a Llama-style model (``layers``, pre-LN, separate q/k/v, gated MLP).

    Args:
        model_type: the transformers model type.
        adapterhub_mlp_names: AdapterHub's native Llama/Mistral code adapts ``down_proj`` for
            ``intermediate_lora`` and ``up_proj`` for ``output_lora``; their saved checkpoints name those
            modules, so those model types keep that mapping.
        overrides: `LayerStack` fields that differ.
    """
    intermediate, output = (
        ("mlp.down_proj", "mlp.up_proj") if adapterhub_mlp_names else ("mlp.up_proj", "mlp.down_proj")
    )
    fields: dict[str, object] = dict(
        layers="layers",
        attention=SubBlock(
            output="self_attn",
            residual_input="input_layernorm",
            layer_norm=None,
            adapter_host="attention_adapters",
        ),
        ffn=SubBlock(
            output="mlp",
            residual_input="post_attention_layernorm",
            layer_norm=None,
            adapter_host="output_adapters",
        ),
        attn_projections={"q": "self_attn.q_proj", "k": "self_attn.k_proj", "v": "self_attn.v_proj"},
        ffn_intermediate=intermediate,
        ffn_output=output,
        name="decoder",
    )
    fields.update(overrides)
    return ArchitectureSpec(
        model_type=model_type,
        stacks=(LayerStack(**fields),),  # type: ignore[arg-type]
        embeddings="embed_tokens",
        decoder_only=True,
    )


ENTRIES: list[ArchitectureSpec] = [
    ArchitectureSpec(
        model_type="gpt2",
        stacks=(
            LayerStack(
                layers="h",
                attention=SubBlock(
                    output="attn", residual_input="ln_1", layer_norm=None, adapter_host="attention_adapters"
                ),
                ffn=SubBlock(output="mlp", residual_input="ln_2", layer_norm=None, adapter_host="output_adapters"),
                fused_qkv="attn.c_attn",
                ffn_intermediate="mlp.c_fc",
                ffn_output="mlp.c_proj",
                hidden_size_attr="n_embd",
                name="decoder",
            ),
        ),
        embeddings="wte",
        embedding_output="drop",
        decoder_only=True,
    ),
    llama_like("llama", adapterhub_mlp_names=True),
    llama_like("mistral", adapterhub_mlp_names=True),
    llama_like("qwen2"),
]
