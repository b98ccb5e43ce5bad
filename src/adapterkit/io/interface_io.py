"""``adapter_interface.json``: the `ModelInterface` of a custom model, saved beside its adapters.

AdapterHub's schema: ``{"model_type": ..., "interface": {fields}, "version": ...}``. A model with several layer
stacks (one interface each) writes ``"interface": [{fields}, ...]``, which only adapterkit reads.

Who reads it: `load_model` (to initialise the model it loads), `read_interface` (for ``adapterkit.init(model,
interface=read_interface(folder))``), and ``load_adapter``, which checks that an adapter saved with an interface
goes into a model whose interface places adapters the same way (a model initialised from the architecture table
ignores the file: AdapterHub writes it for its built-in interfaces too, e.g. Qwen2).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from torch import nn

from ..integration.interface import Interfaces, ModelInterface, as_tuple
from .adapter_io import VERSION
from .files import read_json, write_json

logger = logging.getLogger(__name__)

INTERFACE_NAME = "adapter_interface.json"


def model_interface(model: nn.Module) -> Interfaces | None:
    """The interface ``model`` was initialised with (``adapterkit.init(model, interface=...)``), or None."""
    return getattr(model, "adapter_interface", None)


def write_interface(model: nn.Module, save_directory: str | os.PathLike) -> None:
    """Write ``adapter_interface.json`` into ``save_directory`` if ``model`` has an interface (else nothing)."""
    interface = model_interface(model)
    if interface is None:
        return
    fields: Any = (
        interface.to_dict() if isinstance(interface, ModelInterface) else [i.to_dict() for i in interface]
    )
    data = {"model_type": model.config.model_type, "interface": fields, "version": VERSION}
    write_json(Path(save_directory) / INTERFACE_NAME, data)


def read_interface(path: str | os.PathLike, **hub_kwargs: Any) -> Interfaces | None:
    """The interface saved in ``path`` (a folder, or a Hub repository id), or None if it has no
    ``adapter_interface.json``.

    Args:
        path: a local folder or a Hub repository id.
        **hub_kwargs: ``cache_dir``, ``revision``, ``token``, ``local_files_only`` ... for a Hub id
            (transformers' ``cached_file``).

    Returns:
        A `ModelInterface`, or a tuple of them for a model with several layer stacks.

    Raises:
        ValueError: for an unreadable file or fields `ModelInterface` refuses.
    """
    saved = read_interface_file(path, **hub_kwargs)
    return None if saved is None else saved[1]


def read_interface_file(path: str | os.PathLike, **hub_kwargs: Any) -> tuple[str | None, Interfaces] | None:
    """``(model_type, interface)`` from the ``adapter_interface.json`` in ``path``, or None (see `read_interface`).

    Raises:
        ValueError: as `read_interface`.
    """
    directory = Path(path)
    if directory.is_dir():
        file = directory / INTERFACE_NAME
        if not file.is_file():
            return None
    else:
        from transformers.utils import cached_file

        kwargs = {
            k: v
            for k, v in hub_kwargs.items()
            if k in ("cache_dir", "revision", "token", "local_files_only", "subfolder", "force_download")
        }
        try:
            resolved = cached_file(
                str(path),
                INTERFACE_NAME,
                _raise_exceptions_for_missing_entries=False,
                _raise_exceptions_for_connection_errors=False,
                **kwargs,
            )
        except (OSError, ValueError):  # not a folder nor a repository id: from_pretrained will say so
            return None
        if resolved is None:
            return None
        file = Path(resolved)
    data = read_json(file)
    fields = data.get("interface")
    model_type = data.get("model_type")
    try:
        if isinstance(fields, dict):
            return model_type, ModelInterface.from_dict(fields)
        if isinstance(fields, list) and fields and all(isinstance(f, dict) for f in fields):
            return model_type, tuple(ModelInterface.from_dict(f) for f in fields)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{file}: {error}") from None
    raise ValueError(f"{file} needs an 'interface' object (or a list of them), found {type(fields).__name__}")


def check_saved_interface(model: nn.Module, path: str | os.PathLike) -> None:
    """Refuse to load the adapter folder ``path`` into ``model`` if both have an interface and they place adapters
    differently (any field but ``adapter_methods`` and adapterkit's labels differs).

    A folder without ``adapter_interface.json``, or a model initialised from the architecture table, passes.

    Raises:
        ValueError: naming each differing field with the saved and this model's values.
    """
    ours = model_interface(model)
    if not Path(path).is_dir():
        return
    saved = read_interface(path)
    if saved is None:
        return
    if ours is None:
        logger.info("ignoring %s in %s: this model uses the architecture table", INTERFACE_NAME, path)
        return
    saved_stacks, our_stacks = as_tuple(saved), as_tuple(ours)
    if len(saved_stacks) != len(our_stacks):
        raise ValueError(
            f"the adapter in {path} was saved for a model with {len(saved_stacks)} layer stack interface(s); this "
            f"model has {len(our_stacks)}"
        )
    differences = []
    for idx, (theirs, mine) in enumerate(zip(saved_stacks, our_stacks, strict=True)):
        a, b = theirs.placement(), mine.placement()
        for key in sorted(set(a) | set(b)):
            if a.get(key) != b.get(key):
                where = f"interface {idx} " if len(our_stacks) > 1 else ""
                differences.append(f"{where}{key}: saved {a.get(key)!r}, this model {b.get(key)!r}")
    if differences:
        raise ValueError(
            f"the adapter in {path} was saved with another model interface ({INTERFACE_NAME}), so its weights would "
            f"act elsewhere: {'; '.join(differences)}"
        )


__all__ = [
    "INTERFACE_NAME",
    "check_saved_interface",
    "model_interface",
    "read_interface",
    "read_interface_file",
    "write_interface",
]
