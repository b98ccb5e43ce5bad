"""BERT-style masked language modelling head (tied to the input embeddings)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers.modeling_outputs import MaskedLMOutput

from .causal_lm import CausalLMHead


class BertStyleMaskedLMHead(CausalLMHead):
    """Predict masked tokens: ``Linear -> activation -> LayerNorm`` then the tied vocabulary projection.

    With the defaults the layers sit at indices 0 (Linear), 1 (activation), 2 (LayerNorm) and
    3 (output Linear, weight tied to the input embeddings), AdapterHub's keys. Loss: cross-entropy
    over the vocabulary, labels of -100 ignored, no shift.

    Args:
        model: the model the head belongs to.
        head_name: the head's name.
        vocab_size: output vocabulary size (default: the model config's).
        embedding_size: width of the output embedding (default: ``embedding_size`` or hidden size).
        layers: number of Linear layers.
        activation_function: activation in the transform.
        layer_norm: LayerNorm in the transform.
        bias: bias on the output Linear.
        shift_labels: shift labels one position (False for masked LM).

    Raises:
        ValueError: if tying is on and the input embedding matrix does not fit the output Linear.
    """

    head_type = "masked_lm"

    def __init__(
        self,
        model: nn.Module,
        head_name: str,
        vocab_size: int | None = None,
        embedding_size: int | None = None,
        layers: int = 2,
        activation_function: str | None = "gelu",
        layer_norm: bool = True,
        bias: bool = True,
        shift_labels: bool = False,
    ):
        super().__init__(
            model,
            head_name,
            vocab_size=vocab_size,
            embedding_size=embedding_size,
            layers=layers,
            activation_function=activation_function,
            layer_norm=layer_norm,
            bias=bias,
            shift_labels=shift_labels,
        )
        del self.config["dropout_prob"]  # AdapterHub's masked_lm config has no dropout_prob

    def _output(self, loss: torch.Tensor | None, logits: torch.Tensor, outputs: Any) -> MaskedLMOutput:
        return MaskedLMOutput(
            loss=loss,
            logits=logits,
            hidden_states=outputs.get("hidden_states"),
            attentions=outputs.get("attentions"),
        )
