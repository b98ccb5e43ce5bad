"""Table entries of speech models (Whisper) and of composite models (transformers' ``EncoderDecoderModel``).

Family notes (see docs/models_speech_and_composite.md):

- Whisper: a pre-LN encoder over audio features (a convolutional front end, no token embeddings) and a pre-LN
  decoder with cross-attention; AdapterHub's module names (``attention_adapters``, ``output_adapters``,
  ``cross_attention_adapters``) and prefix location keys (``encoder_prefix``, ``self_prefix``, ``cross_prefix``).
  ``embeddings=None``: invertible adapters and prompt tuning, which act on token embeddings at the encoder's
  input, are refused.
- ``EncoderDecoderModel``: its entry is derived from the entries of its two halves (`composite_architecture`):
  the encoder's stacks under ``encoder.``, then the decoder's under ``decoder.<base model prefix>.``, so decoder
  layers are numbered after the encoder's. Each half keeps its own prefix-tuning pool, as in AdapterHub.
- BERT-family decoders (``is_decoder`` and ``add_cross_attention``) get their ``crossattention`` as a
  cross-attention sub-block (`bert_decoder_architecture`); its bottleneck adapters follow ``mh_adapter`` there,
  as AdapterHub's ``BertSelfOutput`` does.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from torch import nn

from ..spec import ArchitectureSpec, LayerStack, SubBlock
from .seq2seq import present_half


# ---- Whisper -------------------------------------------------------------------------------------------------
def _whisper_stack(name: str, prefix_location: str, **fields: Any) -> LayerStack:
    return LayerStack(
        layers=f"{name}.layers",
        # pre-LN: the residual stream enters the norms
        attention=SubBlock(
            output="self_attn",
            residual_input="self_attn_layer_norm",
            layer_norm=None,
            adapter_host="attention_adapters",
        ),
        ffn=SubBlock(output="fc2", residual_input="final_layer_norm", layer_norm=None, adapter_host="output_adapters"),
        attn_projections={"q": "self_attn.q_proj", "k": "self_attn.k_proj", "v": "self_attn.v_proj"},
        ffn_intermediate="fc1",
        ffn_output="fc2",
        prefix_location=prefix_location,
        hidden_size_attr="d_model",
        name=name,
        **fields,
    )


WHISPER = ArchitectureSpec(
    model_type="whisper",
    stacks=(
        _whisper_stack("encoder", "encoder_prefix"),
        _whisper_stack(
            "decoder",
            "self_prefix",
            cross_attention=SubBlock(
                output="encoder_attn",
                residual_input="encoder_attn_layer_norm",
                layer_norm=None,
                adapter_host="cross_attention_adapters",
            ),
            cross_attn_projections={"q": "encoder_attn.q_proj", "k": "encoder_attn.k_proj", "v": "encoder_attn.v_proj"},
            padding_mask="decoder_attention_mask",
        ),
    ),
    # the encoder reads audio features through convolutions: no token embeddings to adapt
    embeddings=None,
)


# ---- BERT-family decoders with cross-attention ---------------------------------------------------------------
def _swap_prefix(path: str, old: str, new: str) -> str:
    if path == old or path.startswith(old + "."):
        return new + path[len(old) :]
    raise ValueError(f"cannot mirror {path!r} onto the cross-attention: it is not below {old!r}")


def mirrored_cross_attention(
    stack: LayerStack, self_attention: str, cross_attention: str, adapter_flag: str | None = None
) -> LayerStack:
    """``stack`` with a cross-attention sub-block whose paths are the self-attention's, with the self-attention
    module ``self_attention`` replaced by ``cross_attention`` (BERT's ``attention`` -> ``crossattention``).

    Args:
        stack: a stack whose self-attention sub-block and projections lie below ``self_attention``.
        self_attention: path of the self-attention module in a layer.
        cross_attention: path of the cross-attention module, a copy of the self-attention's structure.
        adapter_flag: the `SubBlock.adapter_flag` of the cross-attention sub-block.

    Raises:
        ValueError: if the stack has no self-attention sub-block or separate q/k/v projections, or one of their
            paths is not below ``self_attention``.
    """
    block = stack.attention
    if block is None or not stack.attn_projections:
        raise ValueError(f"cannot mirror the self-attention of {stack.name or stack.layers!r}: it has no sub-block or "
                         "separate q/k/v projections")

    def swap(path: str | None) -> str | None:
        return _swap_prefix(path, self_attention, cross_attention) if path else None

    cross = SubBlock(
        output=swap(block.output),  # type: ignore[arg-type]
        residual_input=swap(block.residual_input),
        layer_norm=swap(block.layer_norm),
        adapter_host=swap(block.adapter_host),  # type: ignore[arg-type]
        adapter_flag=adapter_flag,
    )
    projections = {k: swap(v) for k, v in stack.attn_projections.items()}
    return dataclasses.replace(stack, cross_attention=cross, cross_attn_projections=projections, name="decoder")


# model types whose layers hold ``crossattention``, a copy of ``attention``, when configured as a decoder with
# ``add_cross_attention``
BERT_DECODER_TYPES = ("bert", "roberta", "xlm-roberta", "electra", "camembert", "bert-generation")


def bert_decoder_architecture(base_model: nn.Module) -> ArchitectureSpec:
    """The table entry of a BERT-family base model, with the cross-attention of a decoder configured with
    ``add_cross_attention`` (the static entry otherwise). Bottleneck adapters at the cross-attention follow
    ``mh_adapter`` (AdapterHub puts them in the cross-attention's ``BertSelfOutput``, whose location is
    ``mh_adapter``); its prefix location key is ``cross_prefix``.
    """
    from ..architectures import ARCHITECTURES  # the registry imports this module

    config = base_model.config
    spec = ARCHITECTURES[config.model_type]
    if not (getattr(config, "is_decoder", False) and getattr(config, "add_cross_attention", False)):
        return spec
    stacks = tuple(
        mirrored_cross_attention(s, "attention", "crossattention", adapter_flag="mh_adapter") for s in spec.stacks
    )
    return dataclasses.replace(spec, stacks=stacks)


# ---- EncoderDecoderModel ---------------------------------------------------------------------------------------
def _path_of(root: nn.Module, module: nn.Module) -> str:
    for name, candidate in root.named_modules():
        if candidate is module:
            return name
    raise ValueError(f"{type(module).__name__} is not a submodule of {type(root).__name__}")


def _join(*parts: str | None) -> str | None:
    found = [p for p in parts if p]
    return ".".join(found) if found else None


def _half(model: nn.Module, name: str) -> tuple[ArchitectureSpec, str, nn.Module]:
    """(entry, path from ``model``, base model) of the half ``name`` (``encoder`` / ``decoder``)."""
    from ..architectures import get_architecture  # the registry imports this module

    half = getattr(model, name)
    base = getattr(half, "base_model", half)
    try:
        spec = get_architecture(base.config.model_type, base)
    except ValueError as error:
        raise ValueError(f"the {name} of {type(model).__name__} is not supported: {error}") from None
    for stack in spec.stacks:
        if stack.config_attr is not None:
            raise ValueError(
                f"the {name} of {type(model).__name__} ({base.config.model_type!r}) sizes its layers from the "
                f"sub-config {stack.config_attr!r}; composite models take halves sized by their own config"
            )
    return spec, _path_of(model, base), base


def composite_architecture(model: nn.Module) -> ArchitectureSpec:
    """The entry of an ``EncoderDecoderModel``, derived from the entries of its halves: the encoder's stacks with
    their paths under the encoder's base model, then the decoder's under the decoder's base model (so decoder
    layers are numbered after the encoder's), each stack sized by ``config.encoder`` / ``config.decoder``
    and keeping its half's prefix-tuning pool (``encoder.prefix_tuning``, ``decoder.bert.prefix_tuning``:
    AdapterHub's key names). Token embeddings (invertible adapters, prompt tuning) are the encoder's; the
    invertible modules live at ``encoder.invertible_adapters`` (one of the names AdapterHub saves them under).

    Args:
        model: the ``EncoderDecoderModel`` (its own base model).

    Raises:
        ValueError: if a half's model type is not supported, or a half sizes its layers from a sub-config.
    """
    enc_spec, enc_path, enc_base = _half(model, "encoder")
    dec_spec, dec_path, dec_base = _half(model, "decoder")
    stacks = []
    for half, spec, path in (("encoder", enc_spec, enc_path), ("decoder", dec_spec, dec_path)):
        for stack in spec.stacks:
            stacks.append(
                dataclasses.replace(
                    stack,
                    layers=f"{path}.{stack.layers}",
                    config_attr=half,
                    # the composite's forward passes the decoder's mask as decoder_attention_mask
                    padding_mask=stack.padding_mask if half == "encoder" else f"decoder_{stack.padding_mask}",
                    prefix_pool=_join(path, stack.prefix_pool),
                    name=half if len(spec.stacks) == 1 else f"{half} {stack.name}",
                )
            )
    prepares = [
        (spec.prepare, base) for spec, base in ((enc_spec, enc_base), (dec_spec, dec_base)) if spec.prepare is not None
    ]

    def prepare(_: nn.Module) -> None:
        for fn, base in prepares:
            fn(base)

    return ArchitectureSpec(
        model_type=model.config.model_type,
        stacks=tuple(stacks),
        embeddings=_join(enc_path, enc_spec.embeddings) if enc_spec.embeddings else None,
        embedding_output=_join(enc_path, enc_spec.embedding_output) if enc_spec.embedding_output else None,
        prompt_output=_join(enc_path, enc_spec.prompt_output) if enc_spec.prompt_output else None,
        invertible_host=_join(enc_path, enc_spec.invertible_host) or "",
        prompt_tuning_refusal=enc_spec.prompt_tuning_refusal,
        prepare=prepare if prepares else None,
    )


ENTRIES: list[ArchitectureSpec] = [WHISPER]
RESOLVERS = {
    # WhisperForAudioClassification holds the encoder alone, WhisperForCausalLM the decoder alone
    "whisper": lambda base_model: present_half(WHISPER, base_model),
    "encoder-decoder": composite_architecture,
    **{model_type: bert_decoder_architecture for model_type in BERT_DECODER_TYPES},
}
