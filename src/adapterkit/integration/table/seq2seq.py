"""Table entries of encoder-decoder text models (T5, mT5, BART, mBART, PLBart).

Each has two stacks, the encoder's layers numbered first, then the decoder's (AdapterHub's numbering). The
decoder stack has a cross-attention sub-block (bottleneck ``cross_adapter``, LoRA on its projections, prefix
location ``cross_prefix``); the encoder's self-attention prefix location is ``encoder_prefix`` and the decoder's
``self_prefix``. Adapter hosts and projection paths give AdapterHub's weight keys (its ``mixin_t5.py`` /
``mixin_bart.py``): T5 keeps the adapters on its ``layer.N`` sub-layers, the BART family on
``attention_adapters``, ``cross_attention_adapters`` and ``output_adapters``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from torch import nn

from ..spec import ArchitectureSpec, LayerStack, SubBlock


def _t5_sub_layer(index: int) -> SubBlock:
    """T5's sub-layer ``layer.<index>``: ``x + dropout(f(layer_norm(x)))`` (pre-LN); the adapters live on the
    sub-layer itself (AdapterHub's ``T5LayerSelfAttention`` / ``T5LayerCrossAttention`` / ``T5LayerFF`` are its
    bottleneck layers)."""
    return SubBlock(
        output=f"layer.{index}.dropout",
        residual_input=f"layer.{index}",
        layer_norm=None,
        adapter_host=f"layer.{index}",
    )


def _t5_stack(name: str) -> LayerStack:
    decoder = name == "decoder"
    ffn = 2 if decoder else 1
    dense = f"layer.{ffn}.DenseReluDense"
    return LayerStack(
        layers=f"{name}.block",
        attention=_t5_sub_layer(0),
        ffn=_t5_sub_layer(ffn),
        attn_projections={q: f"layer.0.SelfAttention.{q}" for q in ("q", "k", "v")},
        cross_attention=_t5_sub_layer(1) if decoder else None,
        cross_attn_projections={q: f"layer.1.EncDecAttention.{q}" for q in ("q", "k", "v")} if decoder else {},
        # gated feed-forward (T5 v1.1, Flan-T5, mT5) has wi_0 (gate) and wi_1; AdapterHub adapts wi_1
        ffn_intermediate=f"{dense}.wi|{dense}.wi_1",
        ffn_output=f"{dense}.wo",
        prefix_location="self_prefix" if decoder else "encoder_prefix",
        hidden_size_attr="d_model",
        padding_mask="decoder_attention_mask" if decoder else "attention_mask",
        name=name,
    )


def t5_like(model_type: str, lm_tie_attr: str | None = "scale_decoder_outputs") -> ArchitectureSpec:
    """The entry of a T5-style model (``encoder.block`` / ``decoder.block`` of ``layer.N`` sub-layers, pre-LN).

    Invertible adapters and prompt tuning act on the encoder's token embeddings (T5 has no position embeddings;
    the decoder has its own embedding module, so it is untouched).

    Args:
        model_type: the transformers model type.
        lm_tie_attr: whether LM heads are tied (and then scale the decoder output): transformers 5 forces T5's
            ``tie_word_embeddings`` to True and keeps the saved value (False: T5 v1.1, Flan-T5) as
            ``scale_decoder_outputs``; mT5 keeps nothing and never ties nor scales (None).
    """
    return ArchitectureSpec(
        model_type=model_type,
        stacks=(_t5_stack("encoder"), _t5_stack("decoder")),
        embeddings="shared",
        embedding_output="encoder.embed_tokens",
        invertible_host="encoder",
        scale_tied_lm_output=True,
        lm_tie_attr=lm_tie_attr,
    )


def _bart_stack(name: str, post_ln: bool) -> LayerStack:
    """A BART-family stack. Post-LN (BART, PLBart): ``norm(x + dropout(f(x)))``, pre-LN (mBART):
    ``x + dropout(f(norm(x)))``; the dropout is functional, so a sub-block's output is its module's output."""
    decoder = name == "decoder"

    def block(module: str, norm: str, host: str) -> SubBlock:
        if post_ln:
            return SubBlock(output=module, residual_input=module, layer_norm=norm, adapter_host=host)
        return SubBlock(output=module, residual_input=norm, layer_norm=None, adapter_host=host)

    ffn = (
        SubBlock(output="fc2", residual_input="fc1", layer_norm="final_layer_norm", adapter_host="output_adapters")
        if post_ln
        else SubBlock(output="fc2", residual_input="final_layer_norm", layer_norm=None, adapter_host="output_adapters")
    )
    return LayerStack(
        layers=f"{name}.layers",
        attention=block("self_attn", "self_attn_layer_norm", "attention_adapters"),
        ffn=ffn,
        attn_projections={q: f"self_attn.{q}_proj" for q in ("q", "k", "v")},
        cross_attention=(
            block("encoder_attn", "encoder_attn_layer_norm", "cross_attention_adapters") if decoder else None
        ),
        cross_attn_projections={q: f"encoder_attn.{q}_proj" for q in ("q", "k", "v")} if decoder else {},
        ffn_intermediate="fc1",
        ffn_output="fc2",
        prefix_location="self_prefix" if decoder else "encoder_prefix",
        hidden_size_attr="d_model",
        padding_mask="decoder_attention_mask" if decoder else "attention_mask",
        name=name,
    )


def bart_like(model_type: str, post_ln: bool = True) -> ArchitectureSpec:
    """The entry of a BART-style model (``encoder.layers`` / ``decoder.layers``).

    Invertible adapters act on the encoder's embedding output after its LayerNorm (``encoder.layernorm_embedding``,
    where AdapterHub hooks them). Prompts go into the encoder's token embeddings (``encoder.embed_tokens``): the
    encoder derives its mask and position embeddings from them, so the prompts get positions like tokens.
    """
    return ArchitectureSpec(
        model_type=model_type,
        stacks=(_bart_stack("encoder", post_ln), _bart_stack("decoder", post_ln)),
        embeddings="shared",
        embedding_output="encoder.layernorm_embedding",
        prompt_output="encoder.embed_tokens",
        invertible_host="encoder",
    )


ENTRIES: list[ArchitectureSpec] = [
    t5_like("t5"),
    t5_like("mt5", lm_tie_attr=None),
    bart_like("bart"),
    bart_like("plbart"),
    bart_like("mbart", post_ln=False),
]


def _has_module(root: nn.Module, path: str) -> bool:
    try:
        root.get_submodule(path)
    except AttributeError:
        return False
    return True


def present_half(spec: ArchitectureSpec, base_model: nn.Module) -> ArchitectureSpec:
    """``spec`` for a model class holding one half of the encoder-decoder: the encoder alone (``T5EncoderModel``,
    ``MT5ForTokenClassification``), or the decoder alone (``BartForCausalLM``'s ``BartDecoderWrapper``: a causal
    decoder whose forward takes ``attention_mask``; its layers are numbered from 0, as AdapterHub's wrapper does).

    Raises:
        ValueError: if the model has neither stack.
    """
    encoder, decoder = spec.stacks
    has_encoder, has_decoder = _has_module(base_model, encoder.layers), _has_module(base_model, decoder.layers)
    if has_encoder and has_decoder:
        return spec
    if has_encoder:
        return dataclasses.replace(spec, stacks=(encoder,))
    if has_decoder:
        stack = dataclasses.replace(decoder, padding_mask="attention_mask")
        return dataclasses.replace(
            spec,
            stacks=(stack,),
            embeddings="decoder.embed_tokens",
            embedding_output="decoder.layernorm_embedding" if _has_module(base_model, "decoder.layernorm_embedding")
            else "decoder.embed_tokens",
            prompt_output=None,
            invertible_host="",
            decoder_only=True,
        )
    raise ValueError(
        f"{type(base_model).__name__} has none of the layer stacks of {spec.model_type!r} "
        f"({[s.layers for s in spec.stacks]})"
    )


def _resolver(spec: ArchitectureSpec) -> Callable[[nn.Module], ArchitectureSpec]:
    return lambda base_model: present_half(spec, base_model)


RESOLVERS: dict[str, Callable[[nn.Module], ArchitectureSpec]] = {spec.model_type: _resolver(spec) for spec in ENTRIES}
