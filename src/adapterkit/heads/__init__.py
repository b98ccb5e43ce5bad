"""Flexible prediction heads. `HEAD_TYPES` maps ``head_type`` to its class."""

from .base import PredictionHead
from .classification import ClassificationHead, MultiLabelClassificationHead

HEAD_TYPES: dict[str, type[PredictionHead]] = {
    cls.head_type: cls
    for cls in (ClassificationHead, MultiLabelClassificationHead)
}

__all__ = ["HEAD_TYPES", "ClassificationHead", "MultiLabelClassificationHead", "PredictionHead"]
