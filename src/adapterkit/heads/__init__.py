"""Flexible prediction heads. `HEAD_TYPES` maps ``head_type`` to its class."""

from .base import PredictionHead
from .causal_lm import CausalLMHead
from .classification import ClassificationHead, MultiLabelClassificationHead
from .image_classification import ImageClassificationHead
from .image_classification import register_static_heads as register_image_static_heads
from .masked_lm import BertStyleMaskedLMHead
from .multiple_choice import MultipleChoiceHead
from .outputs import MultiHeadOutput
from .question_answering import QuestionAnsweringHead
from .seq2seq_lm import Seq2SeqLMHead
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
        ImageClassificationHead,
        Seq2SeqLMHead,
    )
}



def register_head_type(head_cls: type[PredictionHead], head_type: str | None = None) -> None:
    """Make ``head_cls`` known to every model, so saved models with such heads load.

    Args:
        head_cls: a `PredictionHead` subclass.
        head_type: the name saved in head configs (default: ``head_cls.head_type``).

    Raises:
        ValueError: if no head type name is given or set on the class.
    """
    name = head_type or head_cls.head_type
    if not name:
        raise ValueError(f"{head_cls.__name__} has no head_type; pass head_type=...")
    HEAD_TYPES[name] = head_cls


# after HEAD_TYPES exists: the conversion table reads it
register_image_static_heads()

__all__ = [
    "HEAD_TYPES",
    "register_head_type",
    "BertStyleMaskedLMHead",
    "CausalLMHead",
    "ClassificationHead",
    "ImageClassificationHead",
    "MultiHeadOutput",
    "MultiLabelClassificationHead",
    "MultipleChoiceHead",
    "PredictionHead",
    "QuestionAnsweringHead",
    "Seq2SeqLMHead",
    "TaggingHead",
]
