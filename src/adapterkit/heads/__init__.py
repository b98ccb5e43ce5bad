"""Flexible prediction heads. `HEAD_TYPES` maps ``head_type`` to its class."""

from .base import PredictionHead
from .causal_lm import CausalLMHead
from .classification import ClassificationHead, MultiLabelClassificationHead
from .masked_lm import BertStyleMaskedLMHead
from .multiple_choice import MultipleChoiceHead
from .question_answering import QuestionAnsweringHead
from .tagging import TaggingHead

HEAD_TYPES: dict[str, type[PredictionHead]] = {
    cls.head_type: cls
    for cls in (
        ClassificationHead,
        MultiLabelClassificationHead,
        TaggingHead,
        QuestionAnsweringHead,
        MultipleChoiceHead,
        BertStyleMaskedLMHead,
        CausalLMHead,
    )
}

__all__ = [
    "HEAD_TYPES",
    "BertStyleMaskedLMHead",
    "CausalLMHead",
    "ClassificationHead",
    "MultiLabelClassificationHead",
    "MultipleChoiceHead",
    "PredictionHead",
    "QuestionAnsweringHead",
    "TaggingHead",
]
