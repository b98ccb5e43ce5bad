"""The architecture table: where adapter methods attach in each transformers model type.

One `ArchitectureSpec` per ``model_type`` (see `integration.spec` for its shape); the entries live in
`integration.table`, one module per model family. Adding an architecture means adding one entry there
(plus one tiny test config); users register their own entry for a custom model with
:func:`register_architecture`.

Where the entry depends on the model instance (an ``EncoderDecoderModel`` is made of any two supported models;
a BERT decoder has cross-attention only with ``add_cross_attention``), a family module also exports
``RESOLVERS``: model type -> ``resolver(base_model) -> ArchitectureSpec``, consulted before the static entries
when the model is known (`get_architecture` with ``model``).
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from .spec import ArchitectureSpec, LayerStack, SubBlock
from .table import decoders, encoders, seq2seq, speech_and_composite, vision

__all__ = [
    "ARCHITECTURES",
    "RESOLVERS",
    "ArchitectureSpec",
    "LayerStack",
    "SubBlock",
    "get_architecture",
    "register_architecture",
]

_FAMILIES = (encoders, decoders, seq2seq, vision, speech_and_composite)

ARCHITECTURES: dict[str, ArchitectureSpec] = {
    spec.model_type: spec for family in _FAMILIES for spec in family.ENTRIES
}

Resolver = Callable[[nn.Module], ArchitectureSpec]
RESOLVERS: dict[str, Resolver] = {
    model_type: resolver for family in _FAMILIES for model_type, resolver in getattr(family, "RESOLVERS", {}).items()
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


def get_architecture(model_type: str, model: nn.Module | None = None) -> ArchitectureSpec:
    """The table entry for ``model_type``; given ``model`` (the base model), the entry its resolver derives for
    that model where the model type has one (see `RESOLVERS`).

    Raises:
        ValueError: if the model type has no entry, listing the supported ones; or has only a resolver and no
            ``model`` is given.
    """
    resolver = RESOLVERS.get(model_type)
    if resolver is not None and model is not None:
        return resolver(model)
    try:
        return ARCHITECTURES[model_type]
    except KeyError:
        if resolver is not None:
            raise ValueError(
                f"the entry of model type {model_type!r} is derived from the model itself; enable adapters on the "
                "model with adapterkit.init(model)"
            ) from None
        raise ValueError(
            f"model type {model_type!r} is not supported; supported: {sorted({*ARCHITECTURES, *RESOLVERS})}. "
            "Register an ArchitectureSpec for it with adapterkit.register_architecture()."
        ) from None
