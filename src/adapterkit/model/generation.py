"""`generate()` with adapters: per-row routing and `Parallel` setups.

transformers' ``generate`` calls the model's forward once per step and rejects keyword arguments
the forward does not name, so the adapter arguments cannot travel with the model inputs. The
override below takes them out and sets them for every forward inside the call
(`integration.target.generation_arguments`).

`Parallel` changes the batch: the forward returns one row per channel and input row. ``generate``
must see that batch from the first step (its cache, attention mask and finished-sequence flags are
per row), so the inputs are replicated here, channel-major, and the layers are told not to
replicate again. The result holds ``N * B`` sequences: rows ``i*B:(i+1)*B`` are channel ``i``'s
(with ``num_return_sequences`` / beams, each channel's block holds ``B * k`` rows, ordered as
transformers orders them).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ..composition import AdapterCompositionBlock
from ..context import AdapterSetup
from ..integration.target import generation_arguments

# generate() inputs that carry the batch; other tensors with the same first dimension are replicated too
_PRIMARY_INPUTS = ("input_ids", "inputs_embeds", "attention_mask", "input_features", "pixel_values")


class GenerationAdaptersMixin:
    """Adds adapter support to transformers' ``generate`` (mixed in before ``GenerationMixin``).

    Only classes that can generate get it: ``XxxAdapterModel`` classes and, through
    `adapterkit.init`, models that already inherit transformers' ``GenerationMixin``.
    """

    def generate(
        self,
        inputs: torch.Tensor | None = None,
        *args: Any,
        adapter_names: Sequence[str | AdapterCompositionBlock | None] | None = None,
        **kwargs: Any,
    ) -> Any:
        """transformers' ``generate`` with the active adapters, per-row routing or a `Parallel` setup.

        Args:
            inputs: the prompt (``input_ids`` or embeddings), as for transformers' ``generate``.
            *args: transformers' ``generate`` positional arguments.
            adapter_names: one adapter name, composition block or None (no adapter) per input row:
                row ``j`` is generated with ``adapter_names[j]``, overriding the active setup (each
                entry is repeated for the rows ``num_return_sequences`` or beams make of its row).
            **kwargs: transformers' ``generate`` keyword arguments and model inputs.

        Returns:
            What transformers' ``generate`` returns. With a `Parallel` setup of ``N`` channels (and no
            ``adapter_names``) it holds ``N * B`` sequences, channel-major: rows ``i*B:(i+1)*B`` are
            generated with channel ``i`` (for an ``XxxAdapterModel``, through channel ``i``'s head).

        Raises:
            ValueError: with a `Parallel` setup and no batch input (``input_ids``, ``inputs_embeds``
                or ``inputs``) to replicate; or from transformers' ``generate``.
        """
        channels = 1
        if adapter_names is None:
            override = AdapterSetup.get_context()
            setup = override.adapter_setup if override is not None else self.adapters_config.active_setup  # type: ignore[attr-defined]
            channels = setup.parallel_channels if setup is not None else 1
        if channels > 1:
            inputs, kwargs = _replicate_inputs(inputs, kwargs, channels)
        with generation_arguments(adapter_names, input_parallelized=channels > 1):
            return super().generate(inputs, *args, **kwargs)  # type: ignore[misc]


def _replicate_inputs(
    inputs: torch.Tensor | None, kwargs: dict[str, Any], channels: int
) -> tuple[torch.Tensor | None, dict[str, Any]]:
    """Repeat the batch ``channels`` times, channel-major: ``inputs`` and every tensor keyword argument
    with the batch's first dimension.

    Raises:
        ValueError: if no batch input is given.
    """
    batch_tensor = inputs if isinstance(inputs, torch.Tensor) else None
    for key in _PRIMARY_INPUTS:
        if batch_tensor is None and isinstance(kwargs.get(key), torch.Tensor):
            batch_tensor = kwargs[key]
    if batch_tensor is None:
        raise ValueError(
            f"generate() with a Parallel setup of {channels} channels needs the prompt as a tensor "
            "(inputs, input_ids or inputs_embeds) to replicate once per channel"
        )
    batch = batch_tensor.shape[0]

    def repeat(value: Any) -> Any:
        if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == batch:
            return value.repeat(channels, *([1] * (value.dim() - 1)))
        return value

    return repeat(inputs), {key: repeat(value) for key, value in kwargs.items()}
