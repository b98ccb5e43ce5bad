"""Sequence classification heads (single-label, regression and multi-label)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers.modeling_outputs import SequenceClassifierOutput

from .base import PredictionHead, label2id_for, sequence_summary


class ClassificationHead(PredictionHead):
    """Classify a sequence from its CLS token (encoders), pooler, or last real token (decoders).

    Loss: cross-entropy, or mean squared error when ``num_labels == 1``.

    Args:
        model: the model the head belongs to.
        head_name: the head's name.
        num_labels: number of classes (1: regression).
        layers: number of Linear layers.
        activation_function: activation between layers.
        id2label: label names by id (default ``LABEL_<i>``).
        use_pooler: read the base model's pooler output instead of a token.
        bias: bias on the last layer.
        dropout_prob: dropout before each Linear (default: the model config's dropout).
    """

    head_type = "classification"

    def __init__(
        self,
        model: nn.Module,
        head_name: str,
        num_labels: int = 2,
        layers: int = 2,
        activation_function: str | None = "tanh",
        id2label: dict[int, str] | None = None,
        use_pooler: bool = False,
        bias: bool = True,
        dropout_prob: float | None = None,
    ):
        super().__init__(
            model,
            head_name,
            {
                "num_labels": num_labels,
                "layers": layers,
                "activation_function": activation_function,
                "label2id": label2id_for(num_labels, id2label),
                "use_pooler": use_pooler,
                "bias": bias,
                "dropout_prob": dropout_prob,
            },
        )
        self.build(model, num_labels, layers, activation_function, bias)

    def _logits(
        self,
        outputs: Any,
        cls_output: torch.Tensor | None,
        input_ids: torch.Tensor | None,
        attention_mask: torch.Tensor | None,
    ) -> torch.Tensor:
        if cls_output is None:
            if self.config["use_pooler"]:
                cls_output = outputs["pooler_output"]
            else:
                cls_output = sequence_summary(
                    self.model_config,
                    outputs[0],
                    input_ids,
                    attention_mask,
                    self.reads_last_token,
                    self.reads_eos_token,
                )
        return self.mlp(cls_output)

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Cross-entropy (or MSE for one output)."""
        if self.config["num_labels"] == 1:
            return nn.functional.mse_loss(logits.squeeze(-1), labels.to(logits.dtype).squeeze(-1))
        return nn.functional.cross_entropy(logits.view(-1, self.config["num_labels"]), labels.view(-1))

    def forward(
        self,
        outputs: Any,
        cls_output: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        return_dict: bool = True,
        labels: torch.Tensor | None = None,
        input_ids: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> Any:
        """Logits (and loss when ``labels`` are given) as a `SequenceClassifierOutput`."""
        logits = self._logits(outputs, cls_output, input_ids, attention_mask)
        loss = self.loss(logits, labels) if labels is not None else None
        out = SequenceClassifierOutput(
            loss=loss,
            logits=logits,
            hidden_states=outputs.get("hidden_states"),
            attentions=outputs.get("attentions"),
        )
        return out if return_dict else out.to_tuple()


class MultiLabelClassificationHead(ClassificationHead):
    """Multi-label classification: one sigmoid per label, binary cross-entropy loss."""

    head_type = "multilabel_classification"

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Binary cross-entropy with logits over all labels."""
        return nn.functional.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))
