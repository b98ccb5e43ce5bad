"""Token classification ("tagging") head: one set of logits per token."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers.modeling_outputs import TokenClassifierOutput

from .base import PredictionHead, label2id_for


class TaggingHead(PredictionHead):
    """Classify every token of a sequence (NER, POS tagging, ...).

    Loss: cross-entropy over the tokens whose ``attention_mask`` is 1; labels of -100 are ignored too.

    Args:
        model: the model the head belongs to.
        head_name: the head's name.
        num_labels: number of classes per token.
        layers: number of Linear layers.
        activation_function: activation between layers.
        id2label: label names by id (default ``LABEL_<i>``).
        dropout_prob: dropout before each Linear (default: the model config's dropout).
        bias: bias on the last Linear (recorded in the config only when False, so configs stay AdapterHub's).
    """

    head_type = "tagging"

    def __init__(
        self,
        model: nn.Module,
        head_name: str,
        num_labels: int = 2,
        layers: int = 1,
        activation_function: str | None = "tanh",
        id2label: dict[int, str] | None = None,
        dropout_prob: float | None = None,
        bias: bool = True,
    ):
        super().__init__(
            model,
            head_name,
            {
                "num_labels": num_labels,
                "layers": layers,
                "activation_function": activation_function,
                "label2id": label2id_for(num_labels, id2label),
                "dropout_prob": dropout_prob,
                **({} if bias else {"bias": False}),
            },
        )
        self.build(model, num_labels, layers, activation_function, bias)

    def loss(
        self, logits: torch.Tensor, labels: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Cross-entropy over the active tokens (``attention_mask == 1`` and label != -100)."""
        labels = labels.to(logits.device)
        if attention_mask is not None:
            labels = labels.masked_fill(attention_mask.to(labels.device).reshape(labels.shape) != 1, -100)
        return nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100
        )

    def forward(
        self,
        outputs: Any,
        cls_output: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        return_dict: bool = True,
        labels: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> Any:
        """Per-token logits ``(batch, seq, num_labels)`` (and loss with ``labels``) as a
        `TokenClassifierOutput`."""
        logits = self.mlp(outputs[0])
        loss = self.loss(logits, labels, attention_mask) if labels is not None else None
        out = TokenClassifierOutput(
            loss=loss,
            logits=logits,
            hidden_states=outputs.get("hidden_states"),
            attentions=outputs.get("attentions"),
        )
        return out if return_dict else out.to_tuple()
