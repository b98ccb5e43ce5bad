"""The architecture table: where adapter methods attach in each transformers model type.

All paths are attribute paths. `ArchitectureSpec.layers` is relative to the base model
(``model.base_model``); every other path is relative to one transformer layer. Adding an
architecture means adding one entry here (plus one tiny test config); users can register their
own entry for a custom model with :func:`register_architecture`.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class SubBlock:
    """A residual sub-block of a layer (attention or feed-forward).

    The layer computes ``norm(output + residual)`` (post-LN) or ``output + residual`` (pre-LN),
    where ``output`` is what the module at `output` returns (element 0 if it returns a tuple) and
    ``residual`` is the first input of the module at `residual_input`.

    Args:
        output: module whose output is the sub-block output before the residual add.
        residual_input: module whose first input is the residual stream of this sub-block.
        layer_norm: the norm applied to ``output + residual`` in post-LN models; None for pre-LN.
        adapter_host: module that holds this location's bottleneck ``adapters`` dict; created as an
            empty child module when it does not exist (AdapterHub's key names depend on this).
    """

    output: str
    residual_input: str
    layer_norm: str | None
    adapter_host: str


@dataclass(frozen=True)
class ArchitectureSpec:
    """Where adapters attach in one ``model_type``.

    Args:
        model_type: the transformers ``config.model_type``.
        layers: path from the base model to the ``nn.ModuleList`` of transformer layers.
        attention: the attention sub-block (location ``mh_adapter``).
        ffn: the feed-forward sub-block (location ``output_adapter``).
        attn_projections: ``{"q": path, "k": path, "v": path}`` for separate projections.
        fused_qkv: path of a fused q/k/v projection (GPT-2's ``c_attn``); exclusive with the above.
        ffn_intermediate: projection adapted by ``intermediate_lora``.
        ffn_output: projection adapted by ``output_lora``.
        embeddings: path from the base model to the input embedding module.
        hidden_size_attr: config attribute holding the hidden size.
        decoder_only: a causal decoder; sequence-level heads read the last real token, not the first.
        prefix_location: key of the self-attention prefix in prefix tuning's state-dict names
            (AdapterHub's location key: ``"self_prefix"``, DistilBERT ``"self"``).
        embedding_output: path from the base model to the module whose output is the embedding output that
            enters the first layer (invertible adapters and prompt tuning attach there); None: ``embeddings``
            (GPT-2 adds position embeddings after ``wte``: its ``drop``).
    """

    model_type: str
    layers: str
    attention: SubBlock
    ffn: SubBlock
    ffn_intermediate: str
    ffn_output: str
    embeddings: str
    attn_projections: dict[str, str] = field(default_factory=dict)
    fused_qkv: str | None = None
    hidden_size_attr: str = "hidden_size"
    decoder_only: bool = False
    prefix_location: str = "self_prefix"
    embedding_output: str | None = None

    @property
    def attention_module(self) -> str:
        """Path of the self-attention module, the one transformers passes to its attention function:
        the parent of the q projection (or of the fused q/k/v projection)."""
        projection = self.fused_qkv or self.attn_projections["q"]
        return projection.rpartition(".")[0]

    def __post_init__(self) -> None:
        if bool(self.attn_projections) == bool(self.fused_qkv):
            raise ValueError(
                f"architecture {self.model_type!r}: give either attn_projections (q/k/v) or fused_qkv, not both"
            )
        if self.attn_projections and set(self.attn_projections) != {"q", "k", "v"}:
            raise ValueError(
                f"architecture {self.model_type!r}: attn_projections needs keys q, k and v, "
                f"got {sorted(self.attn_projections)}"
            )


def _bert_like(model_type: str) -> ArchitectureSpec:
    return ArchitectureSpec(
        model_type=model_type,
        layers="encoder.layer",
        attention=SubBlock(
            output="attention.output.dropout",
            residual_input="attention",
            layer_norm="attention.output.LayerNorm",
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
        embeddings="embeddings",
    )


def _llama_like(model_type: str, *, adapterhub_mlp_names: bool) -> ArchitectureSpec:
    # AdapterHub's native Llama/Mistral code adapts down_proj for "intermediate" and up_proj for
    # "output"; their saved checkpoints name those modules, so those model types keep that mapping.
    intermediate, output = (
        ("mlp.down_proj", "mlp.up_proj") if adapterhub_mlp_names else ("mlp.up_proj", "mlp.down_proj")
    )
    return ArchitectureSpec(
        model_type=model_type,
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
        embeddings="embed_tokens",
        decoder_only=True,
    )


ARCHITECTURES: dict[str, ArchitectureSpec] = {
    **{t: _bert_like(t) for t in ("bert", "roberta", "xlm-roberta", "electra")},
    "distilbert": ArchitectureSpec(
        model_type="distilbert",
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
        embeddings="embeddings",
        hidden_size_attr="dim",
        prefix_location="self",
    ),
    "gpt2": ArchitectureSpec(
        model_type="gpt2",
        layers="h",
        attention=SubBlock(
            output="attn", residual_input="ln_1", layer_norm=None, adapter_host="attention_adapters"
        ),
        ffn=SubBlock(output="mlp", residual_input="ln_2", layer_norm=None, adapter_host="output_adapters"),
        fused_qkv="attn.c_attn",
        ffn_intermediate="mlp.c_fc",
        ffn_output="mlp.c_proj",
        embeddings="wte",
        embedding_output="drop",
        hidden_size_attr="n_embd",
        decoder_only=True,
    ),
    "llama": _llama_like("llama", adapterhub_mlp_names=True),
    "mistral": _llama_like("mistral", adapterhub_mlp_names=True),
    "qwen2": _llama_like("qwen2", adapterhub_mlp_names=False),
}


def register_architecture(spec: ArchitectureSpec, overwrite: bool = False) -> None:
    """Add (or with ``overwrite`` replace) the table entry for ``spec.model_type``.

    Raises:
        ValueError: if an entry exists and ``overwrite`` is False.
    """
    if spec.model_type in ARCHITECTURES and not overwrite:
        raise ValueError(
            f"architecture {spec.model_type!r} is already registered; pass overwrite=True to replace it"
        )
    ARCHITECTURES[spec.model_type] = spec


def get_architecture(model_type: str) -> ArchitectureSpec:
    """The table entry for ``model_type``.

    Raises:
        ValueError: if the model type has no entry, listing the supported ones.
    """
    try:
        return ARCHITECTURES[model_type]
    except KeyError:
        raise ValueError(
            f"model type {model_type!r} is not supported; supported: {sorted(ARCHITECTURES)}. "
            "Register an ArchitectureSpec for it with adapterkit.register_architecture()."
        ) from None
