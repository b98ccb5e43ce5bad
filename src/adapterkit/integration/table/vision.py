"""Table entries of vision and multimodal models: ViT, BEiT and CLIP (the two-tower model and each tower alone).

Family notes (docs/models_vision.md): ViT and BEiT are pre-LN; each applies one dropout (BEiT: one drop-path,
after its layer scale ``lambda_1`` / ``lambda_2``) to both sub-blocks' outputs right before the residual add, so
both sub-blocks name that shared module as their output (a sub-block's adapters run on the call that follows its
own residual capture). transformers 5 renamed their modules (``encoder.layer.N.attention.attention.query`` is
``layers.N.attention.q_proj``), so ``saved_names`` maps adapter files to AdapterHub's names. CLIP numbers the text
tower's layers first, then the vision tower's, as AdapterHub; one adapter spans both towers, each sized by its
own sub-config; a ``clip`` model holding the vision tower alone (``CLIPForImageClassification``) gets a
vision-only entry (`RESOLVERS`).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from ..spec import ArchitectureSpec, LayerStack, SubBlock

# transformers 5 module path -> AdapterHub's (transformers 4) path, for what adapters attach to
_VIT_NAMES: tuple[tuple[str, str], ...] = (
    ("layers", "encoder.layer"),
    ("attention.q_proj", "attention.attention.query"),
    ("attention.k_proj", "attention.attention.key"),
    ("attention.v_proj", "attention.attention.value"),
    ("attention.prefix_tuning", "attention.attention.prefix_tuning"),
    ("mlp.fc1", "intermediate.dense"),
    ("mlp.fc2", "output.dense"),
)


def _vit_stack(output: str) -> LayerStack:
    """A ViT-style pre-LN layer (``layernorm_before`` / ``layernorm_after``, ``attention.q_proj``, ``mlp.fc1``)
    whose sub-blocks end in the shared module ``output`` before the residual add."""
    return LayerStack(
        layers="layers",
        attention=SubBlock(
            output=output, residual_input="layernorm_before", layer_norm=None, adapter_host="attention_adapters"
        ),
        ffn=SubBlock(output=output, residual_input="layernorm_after", layer_norm=None, adapter_host="output_adapters"),
        attn_projections={"q": "attention.q_proj", "k": "attention.k_proj", "v": "attention.v_proj"},
        ffn_intermediate="mlp.fc1",
        ffn_output="mlp.fc2",
        name="encoder",
    )


def _clip_stack(name: str, **fields: Any) -> LayerStack:
    """A CLIP encoder (``encoder.layers``; pre-LN ``layer_norm1`` / ``layer_norm2``)."""
    return LayerStack(
        layers=fields.pop("layers", "encoder.layers"),
        attention=SubBlock(
            output="self_attn", residual_input="layer_norm1", layer_norm=None, adapter_host="attention_adapters"
        ),
        ffn=SubBlock(output="mlp", residual_input="layer_norm2", layer_norm=None, adapter_host="output_adapters"),
        attn_projections={"q": "self_attn.q_proj", "k": "self_attn.k_proj", "v": "self_attn.v_proj"},
        ffn_intermediate="mlp.fc1",
        ffn_output="mlp.fc2",
        name=name,
        **fields,
    )


# the text tower pools its EOS token at a position read from input_ids: prompts would move it
_CLIP_TEXT_PROMPTS = (
    "its text tower pools the end-of-text token at the position found in input_ids, which prompts would shift"
)
# AdapterHub's prefix location keys carry the tower's model type
_TEXT_PREFIX, _VISION_PREFIX = "clip_text_model_self_prefix", "clip_vision_model_self_prefix"

ENTRIES: list[ArchitectureSpec] = [
    ArchitectureSpec(
        model_type="vit",
        stacks=(_vit_stack("dropout"),),
        embeddings="embeddings",
        # AdapterHub's ViT keeps the FFN bottleneck in ViTOutput (gone in transformers 5)
        saved_names=(*_VIT_NAMES, ("output_adapters", "output.output_adapters")),
    ),
    ArchitectureSpec(
        model_type="beit",
        stacks=(_vit_stack("drop_path"),),
        embeddings="embeddings",
        prompt_tuning_refusal=(
            "its relative position bias is sized for the patch grid and cannot take prompt positions"
        ),
        pooled_summary=True,
        saved_names=_VIT_NAMES,
    ),
    ArchitectureSpec(
        model_type="clip",
        stacks=(
            _clip_stack("text", layers="text_model.encoder.layers", config_attr="text_config",
                        prefix_location=_TEXT_PREFIX),
            _clip_stack("vision", layers="vision_model.encoder.layers", config_attr="vision_config",
                        prefix_location=_VISION_PREFIX),
        ),
        # as AdapterHub: invertible adapters act on the text tower's token embeddings
        embeddings="text_model.embeddings",
        prompt_tuning_refusal=_CLIP_TEXT_PROMPTS,
        saved_names=(("invertible_adapters", "text_model.invertible_adapters"),),
    ),
    ArchitectureSpec(
        model_type="clip_text_model",
        stacks=(_clip_stack("text", prefix_location=_TEXT_PREFIX),),
        embeddings="embeddings",
        prompt_tuning_refusal=_CLIP_TEXT_PROMPTS,
        # AdapterHub's CLIPTextModel wraps the tower as ``text_model`` (transformers 4)
        saved_names=(("encoder", "text_model.encoder"), ("invertible_adapters", "text_model.invertible_adapters")),
    ),
    ArchitectureSpec(
        model_type="clip_vision_model",
        stacks=(_clip_stack("vision", prefix_location=_VISION_PREFIX),),
        embeddings="embeddings",
        embedding_output="pre_layrnorm",  # what enters the first layer
        saved_names=(("encoder", "vision_model.encoder"),),
    ),
]


_CLIP = ENTRIES[2]
# CLIPForImageClassification: model type "clip", the vision tower alone (its base model is the model itself)
_CLIP_VISION_TOWER = ArchitectureSpec(
    model_type="clip",
    stacks=(
        _clip_stack("vision", layers="vision_model.encoder.layers", config_attr="vision_config",
                    prefix_location=_VISION_PREFIX),
    ),
    embeddings="vision_model.embeddings",
    embedding_output="vision_model.pre_layrnorm",
)


def clip_architecture(base_model: nn.Module) -> ArchitectureSpec:
    """The ``clip`` entry for ``base_model``: both towers, or the vision tower where the model has no text tower
    (``CLIPForImageClassification``)."""
    return _CLIP if hasattr(base_model, "text_model") else _CLIP_VISION_TOWER


RESOLVERS = {"clip": clip_architecture}
