"""The architecture table: where adapter methods attach in each transformers model type.

One `ArchitectureSpec` per ``model_type`` (see `integration.spec` for its shape); the entries live in
`integration.table`, one module per model family. Adding an architecture means adding one entry there
(plus one tiny test config); users register their own entry for a custom model with
:func:`register_architecture`.
"""

from __future__ import annotations

from .spec import ArchitectureSpec, LayerStack, SubBlock
from .table import decoders, encoders, seq2seq, vision

__all__ = ["ARCHITECTURES", "ArchitectureSpec", "LayerStack", "SubBlock", "get_architecture", "register_architecture"]

ARCHITECTURES: dict[str, ArchitectureSpec] = {
    spec.model_type: spec
    for family in (encoders, decoders, seq2seq, vision)
    for spec in family.ENTRIES
}


def register_architecture(spec: ArchitectureSpec, overwrite: bool = False) -> None:
    """Add (or with ``overwrite`` replace) the table entry for ``spec.model_type``.

    Raises:
        ValueError: if an entry exists and ``overwrite`` is False.
    """
    if spec.model_type in ARCHITECTURES and not overwrite:
        raise ValueError(
            f"architecture {spec.model_type!r} is already registered; pass overwrite=True to replace it"
        )
    ARCHITECTURES[spec.model_type] = spec


def get_architecture(model_type: str) -> ArchitectureSpec:
    """The table entry for ``model_type``.

    Raises:
        ValueError: if the model type has no entry, listing the supported ones.
    """
    try:
        return ARCHITECTURES[model_type]
    except KeyError:
        raise ValueError(
            f"model type {model_type!r} is not supported; supported: {sorted(ARCHITECTURES)}. "
            "Register an ArchitectureSpec for it with adapterkit.register_architecture()."
        ) from None
