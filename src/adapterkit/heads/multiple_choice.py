"""Multiple choice head: one score per (example, choice) pair."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers.modeling_outputs import MultipleChoiceModelOutput

from .base import PredictionHead, label2id_for, sequence_summary


class MultipleChoiceHead(PredictionHead):
    """Pick one of several choices (SWAG, RACE, ...).

    Inputs arrive as ``(batch, num_choices, seq)``; `prepare_inputs` flattens them to
    ``(batch * num_choices, seq)`` for the base model. Each flattened sequence is scored from its
    CLS token (or the pooler), and the scores are viewed as ``(batch, num_choices)`` logits.
    Loss: cross-entropy over the choices, ``labels`` of shape ``(batch,)``.

    Args:
        model: the model the head belongs to.
        head_name: the head's name.
        num_choices: number of choices (used when the inputs come already flattened).
        layers: number of Linear layers.
        activation_function: activation between layers.
        id2label: choice names by id (default ``LABEL_<i>``).
        use_pooler: read the base model's pooler output instead of a token.
        dropout_prob: dropout before each Linear (default: the model config's dropout).
    """

    head_type = "multiple_choice"

    def __init__(
        self,
        model: nn.Module,
        head_name: str,
        num_choices: int = 2,
        layers: int = 2,
        activation_function: str | None = "tanh",
        id2label: dict[int, str] | None = None,
        use_pooler: bool = False,
        dropout_prob: float | None = None,
    ):
        super().__init__(
            model,
            head_name,
            {
                "num_choices": num_choices,
                "layers": layers,
                "activation_function": activation_function,
                "label2id": label2id_for(num_choices, id2label),
                "use_pooler": use_pooler,
                "dropout_prob": dropout_prob,
            },
        )
        self.build(model, 1, layers, activation_function)
        self._input_choices: int | None = None

    def prepare_inputs(self, inputs: dict[str, Any]) -> dict[str, Any]:
        """Flatten every ``(batch, num_choices, ...)`` tensor input to ``(batch * num_choices, ...)``.

        The number of choices is read from ``input_ids`` ``(B, C, S)`` or ``inputs_embeds``
        ``(B, C, S, H)`` and remembered for the forward. Inputs already flattened pass unchanged.
        """
        ids, embeds = inputs.get("input_ids"), inputs.get("inputs_embeds")
        if isinstance(ids, torch.Tensor) and ids.dim() == 3:
            lead = tuple(ids.shape[:2])
        elif isinstance(embeds, torch.Tensor) and embeds.dim() == 4:
            lead = tuple(embeds.shape[:2])
        else:
            self._input_choices = None
            return inputs
        self._input_choices = lead[1]

        def flatten(value: Any) -> Any:
            if isinstance(value, torch.Tensor) and value.dim() >= 3 and tuple(value.shape[:2]) == lead:
                return value.reshape(-1, *value.shape[2:])
            return value

        return {key: flatten(value) for key, value in inputs.items()}

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
        """Logits ``(batch, num_choices)`` (and loss with ``labels``) as a `MultipleChoiceModelOutput`.

        ``outputs`` are the base model's outputs on the flattened inputs.
        """
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
        num_choices = self._input_choices or self.config["num_choices"]
        logits = self.mlp(cls_output).view(-1, num_choices)
        loss = None
        if labels is not None:
            loss = nn.functional.cross_entropy(logits, labels.to(logits.device).reshape(-1))
        out = MultipleChoiceModelOutput(
            loss=loss,
            logits=logits,
            hidden_states=outputs.get("hidden_states"),
            attentions=outputs.get("attentions"),
        )
        return out if return_dict else out.to_tuple()
