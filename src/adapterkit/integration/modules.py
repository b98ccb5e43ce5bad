"""Small helpers for reaching into a model through public module structure."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class AdapterHost(nn.Module):
    """An empty module that holds adapter modules where the model has no natural place for them.

    It is created as a child of a transformer layer (e.g. ``attention_adapters``) so that
    state-dict keys follow AdapterHub's names; it is never called.
    """


def get_submodule(root: nn.Module, path: str) -> nn.Module:
    """The module at dotted ``path`` below ``root`` (``""`` is ``root`` itself). ``"a|b"`` names alternatives:
    the first that exists (T5's feed-forward input is ``wi``, or ``wi_1`` when gated).

    Raises:
        AttributeError: naming the missing path and the module type.
    """
    if not path:
        return root
    if "|" in path:
        for alternative in path.split("|"):
            try:
                return root.get_submodule(alternative)
            except AttributeError:
                continue
        raise AttributeError(f"{type(root).__name__} has none of the submodules {path.split('|')}")
    try:
        return root.get_submodule(path)
    except AttributeError:
        raise AttributeError(f"{type(root).__name__} has no submodule {path!r}") from None


def get_layer_list(root: nn.Module, path: str) -> list[nn.Module]:
    """The layers of the layer list (an ``nn.ModuleList``) at dotted ``path`` below ``root``, in order. A ``*``
    step stands for every entry of the list reached so far, so ``"encoder.groups.*.layers"`` lists the layers
    of every group in turn (ALBERT).

    Raises:
        AttributeError: naming the missing path and the module type.
    """
    found = [root]
    for part in path.split(".*."):
        found = [child for module in found for child in get_submodule(module, part)]
    return found


def get_or_create_host(layer: nn.Module, path: str) -> nn.Module:
    """The module at ``path`` below ``layer``, creating an empty `AdapterHost` at the last step if missing."""
    parent_path, _, name = path.rpartition(".")
    parent = get_submodule(layer, parent_path)
    host = getattr(parent, name, None)
    if host is None:
        host = AdapterHost()
        parent.add_module(name, host)
    return host


def first_input(args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor:
    """The first tensor input of a module call (positional, or the ``hidden_states``-like keyword)."""
    if args:
        return args[0]
    for key in ("hidden_states", "input", "x", "query"):
        if key in kwargs:
            return kwargs[key]
    raise RuntimeError(f"cannot find the input tensor of a module call; keyword arguments: {sorted(kwargs)}")


def main_output(output: Any) -> torch.Tensor:
    """The hidden-state tensor of a module output (element 0 when the module returns a tuple)."""
    return output[0] if isinstance(output, tuple) else output


def with_main_output(output: Any, hidden: torch.Tensor) -> Any:
    """``output`` with its hidden-state tensor replaced by ``hidden`` (tuples keep their other elements)."""
    if isinstance(output, tuple):
        return (hidden, *output[1:])
    return hidden
