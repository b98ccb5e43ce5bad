"""Gating scores: what gated adapters report when a forward asks for ``output_adapter_gating_scores=True``.

A gated adapter (bottleneck or LoRA ``use_gating``, prefix tuning gates) computes a per-sample gate
``mean_t sigmoid(gate(x_t))``. With the forward argument ``output_adapter_gating_scores=True``, each gate
is recorded in the forward context and the model output carries
``adapter_gating_scores = {adapter: {layer: {location: np.ndarray}}}``, as AdapterHub returns it: the gate
detached, ``squeeze()``d (a batch of one keeps one axis), and a second gate at the same (adapter, layer,
location), e.g. LoRA's query and value projections, is column-stacked onto the first.
"""

from __future__ import annotations

import numpy as np
import torch

from ..context import ForwardContext

OPTION = "output_adapter_gating_scores"
"""The forward argument (and `ForwardContext.options` key) that asks for gating scores."""
OUTPUT = "adapter_gating_scores"
"""The `ForwardContext.outputs` key, and the model output field, holding the scores."""

GatingKey = tuple[str, int, str]
"""(adapter name, layer index, location key) of one gate."""


def store_gating_score(key: GatingKey | None, gate: torch.Tensor) -> None:
    """Record ``gate`` under ``key`` if the current forward asked for gating scores (else do nothing).

    Args:
        key: (adapter, layer, location) of the gate; None for a module that is not part of a model.
        gate: the gate values, batch first (e.g. ``(batch, 1, 1)`` or ``(batch, 1, groups)``).
    """
    ctx = ForwardContext.get_context()
    if key is None or ctx is None or not ctx.options.get(OPTION, False):
        return
    score = gate.detach()
    if score.dtype in (torch.bfloat16, torch.float16):
        score = score.float()
    array = score.squeeze().cpu().numpy()
    if array.ndim == 0:
        array = np.expand_dims(array, axis=0)
    name, layer, location = key
    per_location = ctx.outputs.setdefault(OUTPUT, {}).setdefault(name, {}).setdefault(layer, {})
    previous = per_location.get(location)
    per_location[location] = array if previous is None else np.column_stack((previous, array))
