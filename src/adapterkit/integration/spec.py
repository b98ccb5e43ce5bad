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
        adapter_flag: the ``BnConfig`` flag that puts bottleneck adapters here; None: the location's own
            (``mh_adapter``, ``cross_adapter``, ``output_adapter``). A BERT decoder's cross-attention follows
            ``mh_adapter``, as in AdapterHub.
        adapter_norm: a pre-LN sub-block's norm that the model applies to ``output`` alone before the residual
            add (Gemma-2/3's post-attention and post-feed-forward norms); bottleneck adapters normalise
            ``output + residual`` with it as their input (``original_ln_before``), and the model's norm and
            residual add follow, as AdapterHub's plugin interface does with ``layer_ln_1``/``layer_ln_2``.
        parallel_to: the sub-block (a `BLOCK_NAMES` name) that runs side by side with this one on the same layer
            input (GPT-J, GPT-NeoX: ``x + attn(ln(x)) + mlp(ln(x))``); this sub-block's residual stream is then
            the first input of `residual_input` plus that sub-block's output as its adapters left it
            (AdapterHub's GPT-J).
        parallel_if: a config attribute that switches `parallel_to` on (GPT-NeoX's ``use_parallel_residual``);
            None: always.
    """

    output: str
    residual_input: str | None
    layer_norm: str | None
    adapter_host: str
    adapter_flag: str | None = None
    adapter_norm: str | None = None
    parallel_to: str | None = None
    parallel_if: str | None = None

    def __post_init__(self) -> None:
        if self.layer_norm is not None and self.residual_input is None:
            raise ValueError(f"sub-block {self.output!r}: a post-LN layer_norm needs its residual_input")
        if self.adapter_norm is not None and self.layer_norm is not None:
            raise ValueError(f"sub-block {self.output!r}: give adapter_norm (pre-LN) or layer_norm (post-LN), not both")
        if self.parallel_to is not None and (self.parallel_to not in BLOCK_NAMES or self.residual_input is None):
            raise ValueError(
                f"sub-block {self.output!r}: parallel_to={self.parallel_to!r} needs a residual_input and one of "
                f"{list(BLOCK_NAMES)}"
            )


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
        prefix_pool: path from the base model to the module holding the prefix-tuning pool of this stack's
            prefixes; None: the base model. Stacks with one pool share a prefix module per location key
            (an ``EncoderDecoderModel`` keeps one pool per half, as AdapterHub).
        config_attr: attribute of the model config holding this stack's sub-config (CLIP's ``text_config``);
            None: the model config itself.
        hidden_size_attr: attribute of the (sub-)config holding the hidden size.
        padding_mask: the model forward's argument holding this stack's padding mask (ReFT places its positions
            by it): ``"attention_mask"``; an encoder-decoder's decoder: ``"decoder_attention_mask"``.
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
    prefix_pool: str | None = None
    config_attr: str | None = None
    hidden_size_attr: str = "hidden_size"
    padding_mask: str = "attention_mask"
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
        prompt_output: path from the base model to the module whose output gets prompt tuning's prompts, where
            that is not `embedding_output` (BART builds its encoder mask and positions from the token embeddings,
            so prompts go there: ``encoder.embed_tokens``); None: `embedding_output`.
        invertible_host: path from the base model to the module holding the ``invertible_adapters`` dict
            (AdapterHub's key names: an encoder-decoder keeps them on its encoder, ``"encoder"``); ``""``: the base
            model.
        decoder_only: a causal decoder without an encoder (prompt tuning is refused there).
        adapter_methods: the method families adapters of this model may use (`integration.interface.ADAPTER_METHODS`
            names, as AdapterHub's ``adapter_methods``); ``add_adapter`` refuses others. None: every method.
        scale_tied_lm_output: LM heads multiply the last stack's output by ``hidden_size ** -0.5`` when the model
            embeddings are tied (T5's rule, as ``T5ForConditionalGeneration``).
        lm_tie_attr: the model config attribute saying whether LM heads are tied to the input embeddings
            (``tie_word_embeddings``; transformers 5 forces T5's to True and keeps the saved value as
            ``scale_decoder_outputs``); None: never tied (mT5).
        prompt_tuning_refusal: why prompt tuning cannot work on this model (``add_adapter`` refuses it with this
            reason): CLIP's text tower pools the token at a position read from ``input_ids``, BEiT's relative
            position bias is sized for the patch grid; None: prompt tuning is available.
        pooled_summary: sequence-level heads read the base model's ``pooler_output`` whatever their ``use_pooler``
            (BEiT's pooler averages the patch tokens; AdapterHub's BEiT model passes it to every head).
        saved_names: ``(our path, AdapterHub's path)`` pairs of module-path fragments where transformers 5 renamed
            modules that AdapterHub's adapter files (saved under transformers 4) name, e.g. ViT's
            ``("layers", "encoder.layer")``: adapter weights are written with AdapterHub's names and read back to
            ours (see `integration.saved_names`).
        prepare: called once with the base model when adapterkit takes the model over, before any adapter is
            added; for what the table cannot declare (X-MOD: its built-in language adapters give way to
            adapterkit's, as in AdapterHub). It must be idempotent and may raise ValueError for configurations
            the entry does not support.
    """

    model_type: str
    stacks: tuple[LayerStack, ...]
    embeddings: str | None
    embedding_output: str | None = None
    prompt_output: str | None = None
    invertible_host: str = ""
    decoder_only: bool = False
    adapter_methods: tuple[str, ...] | None = None
    scale_tied_lm_output: bool = False
    lm_tie_attr: str | None = "tie_word_embeddings"
    prompt_tuning_refusal: str | None = None
    pooled_summary: bool = False
    saved_names: tuple[tuple[str, str], ...] = ()
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
    def has_towers(self) -> bool:
        """Whether the stacks are independent towers with inputs of their own (CLIP's text and vision encoders):
        several stacks, none with cross-attention. `Parallel` is refused there: its channels would be replicated
        per tower and mixed in the towers' joint output."""
        return len(self.stacks) > 1 and not self.is_encoder_decoder

    @property
    def is_encoder_decoder(self) -> bool:
        """Whether a stack has cross-attention (an encoder-decoder model)."""
        return any(s.cross_attention is not None for s in self.stacks)
