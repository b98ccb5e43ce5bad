"""AdapterHub's names for module paths that transformers 5 renamed.

AdapterHub 1.3.0 runs on transformers 4, so its adapter files name the modules of that version: a ViT layer's
query projection is ``encoder.layer.0.attention.attention.query`` there and ``layers.0.attention.q_proj`` in
transformers 5. An architecture entry lists such renames as `ArchitectureSpec.saved_names`, ``(our fragment,
AdapterHub's fragment)`` pairs of dotted module paths. Adapter files are written with AdapterHub's names (so
AdapterHub loads them) and read back to ours.

Only the module path of a key is renamed: the segments up to the method's attribute that precedes the adapter
name (``...q_proj.loras`` of ``...q_proj.loras.<name>.lora_A``), so an adapter may be called like a module
(``"layers"``). Fragments match whole segments; at each position the longest matching fragment wins, and a
renamed part is not matched again.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TypeVar

from .spec import ArchitectureSpec

T = TypeVar("T")


def _rename(parts: list[str], pairs: Sequence[tuple[list[str], list[str]]]) -> list[str]:
    out: list[str] = []
    i = 0
    while i < len(parts):
        for source, target in pairs:
            if parts[i : i + len(source)] == source:
                out += target
                i += len(source)
                break
        else:
            out.append(parts[i])
            i += 1
    return out


def _boundary(parts: list[str], attributes: Iterable[str], adapter_name: str) -> int | None:
    """Index of the adapter name that follows one of ``attributes``, or None."""
    names = set(attributes)
    for i in range(len(parts) - 1):
        if parts[i] in names and parts[i + 1] == adapter_name:
            return i + 1
    return None


def rename_key(
    key: str, pairs: Sequence[tuple[str, str]], adapter_name: str, attributes: Iterable[str], to_saved: bool
) -> str:
    """``key`` with its module path renamed by ``pairs`` (ours -> AdapterHub's if ``to_saved``, else back).

    Args:
        key: a state-dict key of an adapter (``<module path>.<attribute>.<adapter name>.<parameter>``).
        pairs: ``(our fragment, AdapterHub's fragment)`` pairs (`ArchitectureSpec.saved_names`).
        adapter_name: the adapter's name in ``key``.
        attributes: the method's module attributes (``loras``, ``adapters``, ...); a key without
            ``<attribute>.<adapter_name>`` is returned unchanged.
        to_saved: the direction.
    """
    parts = key.split(".")
    end = _boundary(parts, attributes, adapter_name)
    if not pairs or end is None:
        return key
    directed = [(ours.split("."), theirs.split(".")) for ours, theirs in pairs]
    if not to_saved:
        directed = [(theirs, ours) for ours, theirs in directed]
    directed.sort(key=lambda pair: -len(pair[0]))
    return ".".join(_rename(parts[:end], directed) + parts[end:])


def to_saved_names(
    spec: ArchitectureSpec, weights: Mapping[str, T], adapter_name: str, attributes: Iterable[str]
) -> dict[str, T]:
    """``weights`` keyed by AdapterHub's names (for writing an adapter file)."""
    attributes = tuple(attributes)
    return {rename_key(k, spec.saved_names, adapter_name, attributes, True): v for k, v in weights.items()}


def from_saved_names(
    spec: ArchitectureSpec, weights: Mapping[str, T], adapter_name: str, attributes: Iterable[str]
) -> dict[str, T]:
    """``weights`` read from an adapter file, keyed by this model's names."""
    attributes = tuple(attributes)
    return {rename_key(k, spec.saved_names, adapter_name, attributes, False): v for k, v in weights.items()}
