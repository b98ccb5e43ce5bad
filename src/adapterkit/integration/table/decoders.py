"""Table entries of decoder-only (causal) text models.

Family notes (details in docs/models_decoders.md):

- GPT-J and GPT-NeoX (``use_parallel_residual``) run attention and feed-forward side by side on the same layer
  input (``x + attn(ln(x)) + mlp(ln(x))``). As AdapterHub does for GPT-J, the feed-forward adapters see as their
  residual stream ``x`` plus the attention sub-block's (adapted) output (`SubBlock.parallel_to`).
- Gemma-2 and Gemma-3 normalise each sub-block's output before the residual add (sandwich norms). Their bottleneck
  adapters follow AdapterHub's plugin interface for these models, so its checkpoints give its outputs: the adapter
  sees the attention (feed-forward) output, normalises ``output + residual`` with the post-sub-block norm as its
  input, and the model's own post norm and residual add follow (`SubBlock.adapter_norm`).
- OLMo-2 has the same norms after each sub-block but no norm before it; AdapterHub has no entry, so its adapters
  see the normalised sub-block output, the value the model adds to the residual stream.
"""

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


def _sandwich_stack(layers: str = "layers", **overrides: object) -> dict[str, object]:
    """`LayerStack` fields of a Gemma-2/3 layer: ``r + post_norm(block(pre_norm(r)))`` for both sub-blocks.

    The bottleneck sites are AdapterHub's plugin interface's (``layer_ln_1``/``layer_ln_2`` = the post norms).
    """
    fields: dict[str, object] = dict(
        layers=layers,
        attention=SubBlock(
            output="self_attn",
            residual_input="input_layernorm",
            layer_norm=None,
            adapter_host="attention_adapters",
            adapter_norm="post_attention_layernorm",
        ),
        ffn=SubBlock(
            output="mlp",
            residual_input="pre_feedforward_layernorm",
            layer_norm=None,
            adapter_host="output_adapters",
            adapter_norm="post_feedforward_layernorm",
        ),
        attn_projections={"q": "self_attn.q_proj", "k": "self_attn.k_proj", "v": "self_attn.v_proj"},
        ffn_intermediate="mlp.up_proj",
        ffn_output="mlp.down_proj",
        name="decoder",
    )
    fields.update(overrides)
    return fields


def _sandwich(model_type: str) -> ArchitectureSpec:
    return ArchitectureSpec(
        model_type=model_type,
        stacks=(LayerStack(**_sandwich_stack()),),  # type: ignore[arg-type]
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
    # AdapterHub's native GPT-J: hidden = attention_adapters(attn, x) then output_adapters(mlp, that)
    ArchitectureSpec(
        model_type="gptj",
        stacks=(
            LayerStack(
                layers="h",
                attention=SubBlock(
                    output="attn", residual_input="ln_1", layer_norm=None, adapter_host="attention_adapters"
                ),
                ffn=SubBlock(
                    output="mlp",
                    residual_input="ln_1",
                    layer_norm=None,
                    adapter_host="output_adapters",
                    parallel_to="attention",
                ),
                attn_projections={"q": "attn.q_proj", "k": "attn.k_proj", "v": "attn.v_proj"},
                ffn_intermediate="mlp.fc_in",
                ffn_output="mlp.fc_out",
                hidden_size_attr="n_embd",
                # GPTJAttention computes attention in its own `_attn`, not through AttentionInterface
                attention_interface=False,
                name="decoder",
            ),
        ),
        embeddings="wte",
        embedding_output="drop",
        decoder_only=True,
    ),
    ArchitectureSpec(
        model_type="gpt_neox",
        stacks=(
            LayerStack(
                layers="layers",
                attention=SubBlock(
                    output="post_attention_dropout",
                    residual_input="input_layernorm",
                    layer_norm=None,
                    adapter_host="attention_adapters",
                ),
                # sequential layers (use_parallel_residual=False) give this norm attn + x, parallel ones x
                ffn=SubBlock(
                    output="post_mlp_dropout",
                    residual_input="post_attention_layernorm",
                    layer_norm=None,
                    adapter_host="output_adapters",
                    parallel_to="attention",
                    parallel_if="use_parallel_residual",
                ),
                fused_qkv="attention.query_key_value",
                fused_qkv_layout="per_head",  # viewed as (heads, 3 * head_size), then split into q, k, v
                ffn_intermediate="mlp.dense_h_to_4h",
                ffn_output="mlp.dense_4h_to_h",
                name="decoder",
            ),
        ),
        embeddings="embed_in",
        embedding_output="emb_dropout",
        decoder_only=True,
    ),
    llama_like("llama", adapterhub_mlp_names=True),
    llama_like("mistral", adapterhub_mlp_names=True),
    llama_like("qwen2"),
    llama_like("qwen3"),  # q_norm / k_norm sit inside the attention module
    llama_like("gemma"),
    _sandwich("gemma2"),
    _sandwich("gemma3_text"),
    # the multimodal Gemma-3: adapters in its language model (the vision tower keeps none)
    ArchitectureSpec(
        model_type="gemma3",
        stacks=(
            LayerStack(**_sandwich_stack("language_model.layers", config_attr="text_config")),  # type: ignore[arg-type]
        ),
        embeddings="language_model.embed_tokens",
        decoder_only=True,
    ),
    llama_like(
        "phi3",
        attention=SubBlock(
            output="resid_attn_dropout",
            residual_input="input_layernorm",
            layer_norm=None,
            adapter_host="attention_adapters",
        ),
        ffn=SubBlock(
            output="resid_mlp_dropout",
            residual_input="post_attention_layernorm",
            layer_norm=None,
            adapter_host="output_adapters",
        ),
        attn_projections={},
        fused_qkv="self_attn.qkv_proj",  # [q | k | v], k and v narrower than q with grouped-query attention
        ffn_intermediate="mlp.gate_up_proj",
        ffn_output="mlp.down_proj",
    ),
    # OLMo-2: r + post_norm(block(r)); the adapters see the normalised output the model adds to r
    llama_like(
        "olmo2",
        attention=SubBlock(
            output="post_attention_layernorm",
            residual_input="self_attn",
            layer_norm=None,
            adapter_host="attention_adapters",
        ),
        ffn=SubBlock(
            output="post_feedforward_layernorm",
            residual_input="mlp",
            layer_norm=None,
            adapter_host="output_adapters",
        ),
    ),
]
