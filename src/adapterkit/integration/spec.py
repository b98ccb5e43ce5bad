"""The shape of an architecture table entry: `SubBlock`, `LayerStack` and `ArchitectureSpec`.

All paths are attribute paths. `LayerStack.layers` is relative to the base model (``model.base_model``);
every other path of a stack is relative to one of its transformer layers. A model has one stack (an
encoder, a decoder) or several (an encoder and a decoder; the towers of a multimodal model). Layers are
numbered across stacks in order: an encoder's layers first, then the decoder's (AdapterHub's numbering,
which ``leave_out`` and ``skip_layers`` use).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

BLOCK_NAMES = ("attention", "cross_attention", "ffn")
FUSED_QKV_LAYOUTS = ("qkv", "per_head")


@dataclass(frozen=True)
class SubBlock:
    """A residual sub-block of a layer (self-attention, cross-attention or feed-forward).

    The layer computes ``norm(output + residual)`` (post-LN) or ``output + residual`` (pre-LN),
    where ``output`` is what the module at `output` returns (element 0 if it returns a tuple) and
    ``residual`` is the first input of the module at `residual_input`.

    Args:
        output: module whose output is the sub-block output before the residual add.
        residual_input: module whose first input is the residual stream of this sub-block; None: unknown
            (AdapterHub's plugin interface without ``layer_pre_*``): bottleneck adapters then see the sub-block
            output alone (residual taken as zero), which only a pre-LN sub-block allows.
        layer_norm: the norm applied to ``output + residual`` in post-LN models; None for pre-LN.
        adapter_host: module that holds this location's bottleneck ``adapters`` dict; created as an
            empty child module when it does not exist (AdapterHub's key names depend on this).
    """

    output: str
    residual_input: str | None
    layer_norm: str | None
    adapter_host: str

    def __post_init__(self) -> None:
        if self.layer_norm is not None and self.residual_input is None:
            raise ValueError(f"sub-block {self.output!r}: a post-LN layer_norm needs its residual_input")


def _check_projections(owner: str, projections: dict[str, str], fused: str | None, required: bool) -> None:
    if projections and fused:
        raise ValueError(f"{owner}: give either q/k/v projections or a fused q/k/v projection, not both")
    if required and not projections and not fused:
        raise ValueError(f"{owner}: give either q/k/v projections or a fused q/k/v projection")
    if projections and set(projections) != {"q", "k", "v"}:
        raise ValueError(f"{owner}: the projections need keys q, k and v, got {sorted(projections)}")


@dataclass(frozen=True)
class LayerStack:
    """One stack of transformer layers and where adapters attach in each of its layers.

    Args:
        layers: path from the base model to the ``nn.ModuleList`` of layers.
        attention: the self-attention sub-block (bottleneck location ``mh_adapter``); None: the stack has no
            ``mh_adapter`` location (a custom model's interface without ``attn_o_proj``).
        ffn: the feed-forward sub-block (location ``output_adapter``).
        ffn_intermediate: projection adapted by ``intermediate_lora``.
        ffn_output: projection adapted by ``output_lora``.
        attn_projections: ``{"q": path, "k": path, "v": path}`` of the self-attention.
        fused_qkv: path of a fused q/k/v projection (GPT-2's ``c_attn``); exclusive with the above.
        fused_qkv_layout: how the fused projection's outputs are ordered: ``"qkv"``, all queries, then all keys,
            then all values (GPT-2, ModernBERT); ``"per_head"``, per attention head its query, key and value
            (DeBERTa's ``in_proj``). LoRA places its q/k/v updates on the matching output rows.
        cross_attention: the cross-attention sub-block of a decoder (location ``cross_adapter``), if any.
        cross_attn_projections: q/k/v projections of the cross-attention (adapted like the self-attention's,
            as AdapterHub does).
        prefix_location: the self-attention's key in prefix tuning's state-dict names (AdapterHub's location
            key: ``"self_prefix"``; ``"encoder_prefix"`` for an encoder-decoder's encoder; DistilBERT ``"self"``).
        cross_prefix_location: the cross-attention's prefix key.
        config_attr: attribute of the model config holding this stack's sub-config (CLIP's ``text_config``);
            None: the model config itself.
        hidden_size_attr: attribute of the (sub-)config holding the hidden size.
        attention_interface: the attention modules compute attention through transformers'
            ``AttentionInterface`` (an ``attention_interface(self, query, key, value, ...)`` call); prefix
            tuning extends keys and values there and is refused where it is False (DeBERTa, GPT-J).
        name: a label for messages and docs (``"encoder"``, ``"decoder"``, ``"text"``, ``"vision"``).
    """

    layers: str
    attention: SubBlock | None
    ffn: SubBlock
    ffn_intermediate: str
    ffn_output: str
    attn_projections: dict[str, str] = field(default_factory=dict)
    fused_qkv: str | None = None
    fused_qkv_layout: str = "qkv"
    cross_attention: SubBlock | None = None
    cross_attn_projections: dict[str, str] = field(default_factory=dict)
    prefix_location: str = "self_prefix"
    cross_prefix_location: str = "cross_prefix"
    config_attr: str | None = None
    hidden_size_attr: str = "hidden_size"
    attention_interface: bool = True
    name: str = ""

    def __post_init__(self) -> None:
        label = f"layer stack {self.name or self.layers!r}"
        _check_projections(label, self.attn_projections, self.fused_qkv, required=True)
        _check_projections(f"{label} cross-attention", self.cross_attn_projections, None, required=False)
        if self.cross_attn_projections and self.cross_attention is None:
            raise ValueError(f"{label}: cross_attn_projections given without a cross_attention sub-block")
        if self.fused_qkv_layout not in FUSED_QKV_LAYOUTS:
            raise ValueError(
                f"{label}: fused_qkv_layout={self.fused_qkv_layout!r}; choose from {list(FUSED_QKV_LAYOUTS)}"
            )

    @property
    def attention_module(self) -> str:
        """Path of the self-attention module, the one transformers passes to its attention function:
        the parent of the q projection (or of the fused q/k/v projection)."""
        projection = self.fused_qkv or self.attn_projections["q"]
        return projection.rpartition(".")[0]

    @property
    def cross_attention_module(self) -> str | None:
        """Path of the cross-attention module (parent of its q projection), or None."""
        if not self.cross_attn_projections:
            return None
        return self.cross_attn_projections["q"].rpartition(".")[0]

    def sub_block(self, block_name: str) -> SubBlock | None:
        """The sub-block called ``block_name`` (one of `BLOCK_NAMES`); None where the stack has none.

        Raises:
            ValueError: for a name not in `BLOCK_NAMES`.
        """
        if block_name not in BLOCK_NAMES:
            raise ValueError(f"unknown sub-block {block_name!r}; choose from {list(BLOCK_NAMES)}")
        return getattr(self, block_name)

    def config_of(self, model_config: Any) -> Any:
        """This stack's config: ``model_config`` or its sub-config `config_attr`."""
        return getattr(model_config, self.config_attr) if self.config_attr else model_config

    def hidden_size(self, model_config: Any) -> int:
        """This stack's hidden size, read from ``model_config``."""
        return int(getattr(self.config_of(model_config), self.hidden_size_attr))


@dataclass(frozen=True)
class ArchitectureSpec:
    """Where adapters attach in one ``model_type``.

    Args:
        model_type: the transformers ``config.model_type``.
        stacks: the layer stacks, in layer-numbering order (encoder before decoder).
        embeddings: path from the base model to the input embedding module (None: the model has no token
            embeddings, e.g. a vision model).
        embedding_output: path from the base model to the module whose output is the embedding output that
            enters the first layer (invertible adapters and prompt tuning attach there); None: ``embeddings``
            (GPT-2 adds position embeddings after ``wte``: its ``drop``).
        decoder_only: a causal decoder without an encoder (prompt tuning is refused there).
        adapter_methods: the method families adapters of this model may use (`integration.interface.ADAPTER_METHODS`
            names, as AdapterHub's ``adapter_methods``); ``add_adapter`` refuses others. None: every method.
        prepare: called once with the base model when adapterkit takes the model over, before any adapter is
            added; for what the table cannot declare (X-MOD: its built-in language adapters give way to
            adapterkit's, as in AdapterHub). It must be idempotent and may raise ValueError for configurations
            the entry does not support.
    """

    model_type: str
    stacks: tuple[LayerStack, ...]
    embeddings: str | None
    embedding_output: str | None = None
    decoder_only: bool = False
    adapter_methods: tuple[str, ...] | None = None
    prepare: Callable[[Any], None] | None = None

    def __post_init__(self) -> None:
        if not self.stacks:
            raise ValueError(f"architecture {self.model_type!r}: give at least one LayerStack")
        object.__setattr__(self, "stacks", tuple(self.stacks))

    @property
    def stack(self) -> LayerStack:
        """The only stack of a single-stack architecture.

        Raises:
            ValueError: if the architecture has several stacks.
        """
        if len(self.stacks) != 1:
            raise ValueError(f"architecture {self.model_type!r} has {len(self.stacks)} layer stacks, not one")
        return self.stacks[0]

    @property
    def is_encoder_decoder(self) -> bool:
        """Whether a stack has cross-attention (an encoder-decoder model)."""
        return any(s.cross_attention is not None for s in self.stacks)
