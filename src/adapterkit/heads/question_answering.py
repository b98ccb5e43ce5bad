"""Extractive question answering head: start and end logits per token."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers.modeling_outputs import QuestionAnsweringModelOutput

from .base import PredictionHead, label2id_for


class QuestionAnsweringHead(PredictionHead):
    """Predict the start and end token of an answer span.

    Labels are ``start_positions`` and ``end_positions`` (``(batch,)``). Loss: the mean of the start and
    end cross-entropies; positions outside the sequence are clamped to the sequence length and ignored
    (transformers' rule).

    Args:
        model: the model the head belongs to.
        head_name: the head's name.
        num_labels: outputs per token; must be 2 (start, end).
        layers: number of Linear layers.
        activation_function: activation between layers.
        id2label: label names by id (default ``LABEL_<i>``).
        dropout_prob: dropout before each Linear (default: the model config's dropout).

    Raises:
        ValueError: if ``num_labels`` is not 2.
    """

    head_type = "question_answering"

    def __init__(
        self,
        model: nn.Module,
        head_name: str,
        num_labels: int = 2,
        layers: int = 1,
        activation_function: str | None = "tanh",
        id2label: dict[int, str] | None = None,
        dropout_prob: float | None = None,
    ):
        if num_labels != 2:
            raise ValueError(f"a question answering head needs num_labels=2 (start, end), got {num_labels}")
        super().__init__(
            model,
            head_name,
            {
                "num_labels": num_labels,
                "layers": layers,
                "activation_function": activation_function,
                "label2id": label2id_for(num_labels, id2label),
                "dropout_prob": dropout_prob,
            },
        )
        self.build(model, num_labels, layers, activation_function)

    def get_label_names(self) -> list[str]:
        """``["start_positions", "end_positions"]``."""
        return ["start_positions", "end_positions"]

    @staticmethod
    def loss(
        start_logits: torch.Tensor,
        end_logits: torch.Tensor,
        start_positions: torch.Tensor,
        end_positions: torch.Tensor,
    ) -> torch.Tensor:
        """Mean of the start and end cross-entropies (out-of-range positions are ignored)."""
        ignored_index = start_logits.shape[1]
        start_positions = start_positions.to(start_logits.device).reshape(-1).clamp(0, ignored_index)
        end_positions = end_positions.to(end_logits.device).reshape(-1).clamp(0, ignored_index)
        start_loss = nn.functional.cross_entropy(start_logits, start_positions, ignore_index=ignored_index)
        end_loss = nn.functional.cross_entropy(end_logits, end_positions, ignore_index=ignored_index)
        return (start_loss + end_loss) / 2

    def forward(
        self,
        outputs: Any,
        cls_output: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        return_dict: bool = True,
        start_positions: torch.Tensor | None = None,
        end_positions: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> Any:
        """Start and end logits ``(batch, seq)`` (and loss when both positions are given) as a
        `QuestionAnsweringModelOutput`."""
        logits = self.mlp(outputs[0])
        start_logits, end_logits = (t.squeeze(-1).contiguous() for t in logits.split(1, dim=-1))
        loss = None
        if start_positions is not None and end_positions is not None:
            loss = self.loss(start_logits, end_logits, start_positions, end_positions)
        out = QuestionAnsweringModelOutput(
            loss=loss,
            start_logits=start_logits,
            end_logits=end_logits,
            hidden_states=outputs.get("hidden_states"),
            attentions=outputs.get("attentions"),
        )
        return out if return_dict else out.to_tuple()
