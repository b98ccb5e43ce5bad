"""Table entries of encoder-only text models."""

from __future__ import annotations

from ..spec import ArchitectureSpec, LayerStack, SubBlock


def bert_like(model_type: str, **overrides: object) -> ArchitectureSpec:
    """The entry of a BERT-style model (``encoder.layer``, post-LN, separate q/k/v)."""
    stack = LayerStack(
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
        name="encoder",
        **overrides,  # type: ignore[arg-type]
    )
    return ArchitectureSpec(model_type=model_type, stacks=(stack,), embeddings="embeddings")


ENTRIES: list[ArchitectureSpec] = [
    *(bert_like(t) for t in ("bert", "roberta", "xlm-roberta", "electra")),
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
]
