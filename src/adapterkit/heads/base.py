"""`PredictionHead`: a named, configurable output head on top of a base model.

A head is an ``nn.Sequential`` of ``[Dropout, Linear, activation] * (layers - 1) + [Dropout, Linear]``
(AdapterHub's layout, so weight keys are ``heads.<name>.<index>.weight``). Its ``config`` dict is
saved as ``head_config.json`` and in ``config.json["prediction_heads"]``, and rebuilds the head.
"""

from __future__ import annotations

from abc import ABCMeta, abstractmethod
from typing import Any

import torch
from torch import nn

from ..methods.bottleneck import Activation


class PredictionHead(nn.Sequential, metaclass=ABCMeta):
    """Base class of all heads.

    Subclasses set ``head_type`` and implement :meth:`forward`.

    Args:
        model: the model the head belongs to (read for hidden size, dropout and weight init).
        head_name: the head's name.
        config: the head's config dict (``head_type`` is added).
    """

    head_type: str = ""

    def __init__(self, model: nn.Module, head_name: str, config: dict[str, Any]):
        super().__init__()
        self.name = head_name
        self.config = {"head_type": self.head_type, **config}
        self.model_config = model.config
        # decoder-only models summarise a sequence by its last real token, encoders by the first
        self.reads_last_token = model._adapter_target.spec.decoder_only
        # encoder-decoders read the decoder output at the last eos token (BartForSequenceClassification's rule)
        self.reads_eos_token = model._adapter_target.spec.is_encoder_decoder

    @property
    def hidden_size(self) -> int:
        """The hidden size of the model the head sits on."""
        config = self.model_config
        # a multimodal model's config (Gemma-3) holds the sizes in its text config
        return config.hidden_size if hasattr(config, "hidden_size") else config.get_text_config().hidden_size

    def build(
        self, model: nn.Module, out_features: int, layers: int, activation: str | None, bias: bool = True
    ) -> None:
        """Append the standard MLP layers and initialise them with the model's weight init."""
        dropout = self._dropout_prob()
        for _ in range(layers - 1):
            self.append(nn.Dropout(dropout))
            self.append(nn.Linear(self.hidden_size, self.hidden_size))
            self.append(Activation(activation))
        self.append(nn.Dropout(dropout))
        self.append(nn.Linear(self.hidden_size, out_features, bias=bias))
        self.apply(model._init_weights)
        ref = next(model.parameters())
        self.to(device=ref.device, dtype=ref.dtype)
        self.train(model.training)

    def _dropout_prob(self) -> float:
        prob = self.config.get("dropout_prob")
        if prob is None:
            for key in ("classifier_dropout", "hidden_dropout_prob", "dropout", "resid_pdrop"):
                value = getattr(self.model_config, key, None)
                if isinstance(value, float):
                    prob = value
                    break
        return prob or 0.0

    def mlp(self, x: torch.Tensor) -> torch.Tensor:
        """Run the head's layers on ``x``."""
        return super().forward(x)

    def prepare_inputs(self, inputs: dict[str, Any]) -> dict[str, Any]:
        """Adjust the base model's inputs before the forward (e.g. flatten multiple-choice inputs)."""
        return inputs

    def get_label_names(self) -> list[str]:
        """The names of the label inputs this head consumes (for the trainer)."""
        return ["labels"]

    @abstractmethod
    def forward(
        self,
        outputs: Any,
        cls_output: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        return_dict: bool = True,
        **kwargs: Any,
    ) -> Any:
        """Map the base model ``outputs`` to this head's output."""


def _last_eos(model_config: Any, hidden: torch.Tensor, input_ids: torch.Tensor | None) -> torch.Tensor:
    if input_ids is None or input_ids.shape[:2] != hidden.shape[:2]:
        shape = None if input_ids is None else tuple(input_ids.shape)
        raise ValueError(
            "a sequence-level head on an encoder-decoder reads the decoder output at the last eos token of "
            f"input_ids, which needs input_ids of the decoder output's shape {tuple(hidden.shape[:2])}; got {shape} "
            "(leave decoder_input_ids out: they are input_ids shifted right)"
        )
    eos = input_ids.to(hidden.device) == model_config.eos_token_id
    if not bool(eos.any(dim=-1).all()):
        rows = (~eos.any(dim=-1)).nonzero().flatten().tolist()
        raise ValueError(f"rows {rows} of input_ids have no eos token (id {model_config.eos_token_id})")
    positions = torch.arange(eos.shape[-1], device=hidden.device)
    last = (eos * positions).argmax(-1)
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]


def label2id_for(num_labels: int, id2label: dict[int, str] | None) -> dict[str, int]:
    """A head's ``label2id`` config entry from ``id2label`` (default names ``LABEL_<i>``)."""
    id2label = id2label or {i: f"LABEL_{i}" for i in range(num_labels)}
    return {label: int(i) for i, label in id2label.items()}


def sequence_summary(
    model_config: Any,
    hidden: torch.Tensor,
    input_ids: torch.Tensor | None,
    attention_mask: torch.Tensor | None,
    use_last_token: bool,
    use_eos_token: bool = False,
) -> torch.Tensor:
    """The per-sequence vector a sequence-level head reads.

    Encoders use the first (CLS) token. Decoders use the last real token: the last position
    whose ``attention_mask`` is 1 (correct for left and right padding); without a mask, the
    last token that is not ``pad_token_id`` (AdapterHub's rule), else the last position.
    Encoder-decoders (``use_eos_token``) use the decoder output at the last ``eos_token_id`` of each
    row of ``input_ids`` (the decoder runs on them shifted right, so the positions match).

    Raises:
        ValueError: for ``use_eos_token`` without ``input_ids``, with hidden states of another length,
            or a row without the eos token.
    """
    if use_eos_token:
        return _last_eos(model_config, hidden, input_ids)
    if not use_last_token:
        return hidden[:, 0]
    batch = torch.arange(hidden.shape[0], device=hidden.device)
    if attention_mask is not None:
        positions = torch.arange(attention_mask.shape[-1], device=hidden.device)
        last = (attention_mask.to(hidden.device).bool() * positions).argmax(-1)
    elif input_ids is not None and getattr(model_config, "pad_token_id", None) is not None:
        last = (input_ids != model_config.pad_token_id).sum(-1) - 1
    else:
        last = torch.full((hidden.shape[0],), hidden.shape[1] - 1, device=hidden.device)
    return hidden[batch, last]
