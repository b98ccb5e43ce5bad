"""`MultiHeadOutput`: the output of a forward that ran several prediction heads.

A `Parallel` setup runs one head per channel, a top-level `BatchSplit` one head per split of the
batch, and a list of heads with a single-channel setup runs every head on the same rows. The
result keeps each head's own output and adds what a caller of a single head expects to find:
a summed ``loss`` and one ``logits`` tensor (the heads' logits concatenated along the batch, in
channel / split order), plus the base model's cache and hidden states, so that transformers'
``generate`` and ``Trainer`` can consume it like a single head's output.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from transformers.utils import ModelOutput


@dataclass
class MultiHeadOutput(ModelOutput):
    """The outputs of several heads from one forward (AdapterHub's ``MultiHeadOutput``).

    ``out[i]`` (an int) is head output ``i``, ``len(out)`` the number of heads and iterating yields
    the head outputs; string keys (``out["loss"]``) and attributes work as on any ``ModelOutput``.

    Attributes:
        head_outputs: one ``ModelOutput`` per head, in channel (`Parallel`) or split (`BatchSplit`)
            order. With `Parallel`, output ``i`` belongs to the rows of channel ``i``. With per-row
            routing (``adapter_names``) over several heads, one per head (in order of first use),
            holding the rows routed to it.
        loss: the sum of the heads' losses when every head returned one, else None.
        past_key_values: the base model's cache (shared by all heads; its batch holds every
            channel's rows), so ``generate`` can continue from it.
        hidden_states: the base model's hidden states (all rows), when requested.
        attentions: the base model's attention weights (all rows), when requested.
    """

    head_outputs: list[ModelOutput] | None = None
    loss: torch.Tensor | None = None
    past_key_values: Any = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None

    @property
    def logits(self) -> torch.Tensor:
        """The heads' ``logits`` concatenated along the batch (dim 0), in head order.

        With `Parallel` these are the logits of all channels, channel-major (rows ``i*B:(i+1)*B``
        are channel ``i``), which is the layout ``generate`` works on. With per-row routing over
        several heads (each head output holding the rows routed to it) they are put back in the
        input's row order. Computed on first access.

        Raises:
            ValueError: if a head output has no ``logits`` tensor or their shapes differ beyond the
                batch dimension (read each head's ``out[i].logits`` then).
        """
        cached = self.__dict__.get("_logits")
        if cached is not None:
            return cached
        parts = [out.get("logits") if isinstance(out, dict) else None for out in self.head_outputs or ()]
        if not parts or any(not isinstance(p, torch.Tensor) or p.dim() == 0 for p in parts):
            kinds = [type(out).__name__ for out in self.head_outputs or ()]
            raise ValueError(
                f"MultiHeadOutput.logits needs a logits tensor from every head, got outputs {kinds}; "
                "read each head's output instead (out[i])"
            )
        if len({p.shape[1:] for p in parts}) > 1:
            shapes = [tuple(p.shape) for p in parts]
            raise ValueError(
                f"cannot concatenate the heads' logits of shapes {shapes} along the batch; "
                "read each head's logits instead (out[i].logits)"
            )
        logits = torch.cat(parts, dim=0)
        order = self.__dict__.get("_row_order")
        if order is not None:  # per-row routing: head outputs hold row groups; restore the input's row order
            logits = logits.index_select(0, order.to(logits.device))
        object.__setattr__(self, "_logits", logits)
        return logits

    def __getitem__(self, k: Any) -> Any:
        """``out[int]``: that head's output; ``out[str]``: the field, as on any ``ModelOutput``."""
        if isinstance(k, int):
            return self.head_outputs[k]  # type: ignore[index]
        return super().__getitem__(k)

    def __setitem__(self, k: Any, v: Any) -> None:
        """``out[int] = output`` replaces a head output; string keys set fields."""
        if isinstance(k, int):
            self.head_outputs[k] = v  # type: ignore[index]
            self.__dict__.pop("_logits", None)
        else:
            super().__setitem__(k, v)

    def __iter__(self) -> Iterator[ModelOutput]:
        """Iterate over the head outputs."""
        return iter(self.head_outputs or ())

    def __len__(self) -> int:
        """The number of heads."""
        return len(self.head_outputs or ())
