"""Image classification heads (AdapterHub's ``image_classification`` head of ViT and BEiT)."""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch import nn
from transformers import PretrainedConfig
from transformers.modeling_outputs import ImageClassifierOutput

from .base import PredictionHead, label2id_for
from .classification import ClassificationHead, MultiLabelClassificationHead


class ImageClassificationHead(PredictionHead):
    """Classify an image from its class token, or from the base model's pooler output.

    The summary vector is ``pooler_output`` with ``use_pooler`` (ViT: a dense layer and tanh on the class token)
    and on architectures whose entry sets ``pooled_summary`` (BEiT, whose pooler averages the patch tokens;
    AdapterHub's BEiT model gives every head its pooler output), else the class token's final hidden state.
    Loss: cross-entropy; mean squared error when ``num_labels == 1``; binary cross-entropy with ``multilabel``.

    Args:
        model: the model the head belongs to.
        head_name: the head's name.
        num_labels: number of classes (1: regression).
        layers: number of Linear layers.
        activation_function: activation between layers.
        multilabel: one independent sigmoid per label.
        id2label: label names by id (default ``LABEL_<i>``).
        use_pooler: read the base model's pooler output instead of the class token.
        bias: bias on the last layer.
        dropout_prob: dropout before each Linear (default: the model config's dropout).
    """

    head_type = "image_classification"

    def __init__(
        self,
        model: nn.Module,
        head_name: str,
        num_labels: int = 2,
        layers: int = 1,
        activation_function: str | None = "tanh",
        multilabel: bool = False,
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
                "multilabel": multilabel,
                "label2id": label2id_for(num_labels, id2label),
                "use_pooler": use_pooler,
                "bias": bias,
                "dropout_prob": dropout_prob,
            },
        )
        self.pooled_summary = model._adapter_target.spec.pooled_summary
        self.build(model, num_labels, layers, activation_function, bias)

    def summary(self, outputs: Any) -> torch.Tensor:
        """The vector the head classifies: the pooler output or the class token (see the class docstring).

        Raises:
            ValueError: if the pooler output is needed and the base model has no pooler.
        """
        if self.config["use_pooler"] or self.pooled_summary:
            pooled = outputs.get("pooler_output")
            if pooled is None:
                raise ValueError(
                    f"image classification head {self.name!r} reads the base model's pooler_output, but the "
                    f"{self.model_config.model_type!r} base model has no pooler (built with add_pooling_layer="
                    "False); add the head with use_pooler=False"
                )
            return pooled
        return outputs[0][:, 0]

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The sequence classification heads' losses: mean squared error (one label), binary cross-entropy
        (multi-label) or cross-entropy."""
        if self.config["multilabel"] and self.config["num_labels"] != 1:
            return MultiLabelClassificationHead.loss(self, logits, labels)  # type: ignore[arg-type]
        return ClassificationHead.loss(self, logits, labels)  # type: ignore[arg-type]

    def forward(
        self,
        outputs: Any,
        cls_output: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        return_dict: bool = True,
        labels: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> Any:
        """Logits (and loss when ``labels`` are given) as an `ImageClassifierOutput`."""
        logits = self.mlp(self.summary(outputs) if cls_output is None else cls_output)
        loss = self.loss(logits, labels) if labels is not None else None
        out = ImageClassifierOutput(
            loss=loss,
            logits=logits,
            hidden_states=outputs.get("hidden_states"),
            attentions=outputs.get("attentions"),
        )
        return out if return_dict else out.to_tuple()


# ---- static heads --------------------------------------------------------------------------------------------
# transformers' XxxForImageClassification: one Linear ("classifier") on the class token (ViT) or on the pooler
# output (BEiT: the mean of the patch tokens), no dropout (AdapterHub's STATIC_TO_FLEX_HEAD_MAP rows)
STATIC_IMAGE_CLASSIFIERS = {"vit": False, "beit": True}


def _static_head(config: PretrainedConfig, use_pooler: bool) -> Any:
    from .conversion import StaticHead

    multilabel = getattr(config, "problem_type", None) == "multi_label_classification"
    return StaticHead(
        (None, "classifier"),
        {"layers": 1, "activation_function": None, "use_pooler": use_pooler, "dropout_prob": 0.0,
         "multilabel": multilabel},
    )


def register_static_heads() -> None:
    """Declare the static-head conversions of ``ViTForImageClassification`` and ``BeitForImageClassification``
    (`heads.conversion.register_static_head`); run once by the ``heads`` package."""
    from .conversion import register_static_head  # here: `conversion` imports the heads package

    for model_type, use_pooler in STATIC_IMAGE_CLASSIFIERS.items():
        entry = functools.partial(_static_head, use_pooler=use_pooler)
        register_static_head(model_type, "ForImageClassification", entry)
