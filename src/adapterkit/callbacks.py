"""Trainer callbacks for adapter training.

`AdapterDropCallback` trains adapters that stay accurate when they are dropped from the lowest
layers at inference (Rücklé et al., 2021, "AdapterDrop: On the Efficiency of Adapters in
Transformers", robust training): at every optimizer step it drops the adapters from a random
number of the lowest layers, so the same adapter can later run with any ``skip_layers`` prefix.

Import it from ``adapterkit`` (loaded on first use, like `AdapterTrainer`, so ``import adapterkit``
does not import transformers' Trainer).
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from typing import Any

from torch import nn
from transformers import TrainerCallback

from .model.mixin import ModelAdaptersMixin


class AdapterDropCallback(TrainerCallback):
    """Drop adapters from randomly chosen lower layers at each training step (AdapterDrop robust training).

    At the beginning of each optimizer step (``on_step_begin``; one choice covers all micro-batches of
    a step with gradient accumulation) the callback chooses a set of layers and adds it to the model's
    ``skip_layers``, in which no adapter runs. By default it draws ``n`` uniformly from
    ``0..max_skip_layers`` and drops layers ``0..n-1``; with ``layer_sets`` it picks one of the given
    sets uniformly. At the end of each step (``on_step_end``, before the Trainer logs, saves or
    evaluates), when evaluation or prediction finishes and when training ends, the model's own
    ``skip_layers`` are put back, so evaluation and prediction run with every adapter layer the
    model was set up with. Layers the model already skipped stay skipped during training.

    Only ``model.adapters_config.skip_layers`` changes: the active setup, trainability and merged
    weights are left alone (``set_active_adapters`` would also reset merges).

    The choice for a step depends only on the seed and the global step, so a run is reproducible
    and resuming from a checkpoint continues the same sequence.

    Args:
        max_skip_layers: the most layers dropped in one step (``n`` is drawn from ``0..max_skip_layers``,
            both included). Default: the model's layer count minus one, so the top layer always keeps
            its adapters (the paper's setting: 0-11 of 12 layers).
        layer_sets: instead of the prefix rule, the candidate sets of layer ids to drop; one is
            chosen uniformly at each step (repeat a set to make it more likely; an empty set is a
            step without dropping).
        seed: seed of the choice; default: the training arguments' ``seed``.

    Raises:
        ValueError: if both ``max_skip_layers`` and ``layer_sets`` are given, ``max_skip_layers`` is
            negative, ``layer_sets`` is empty or holds a negative layer id; when training begins, if
            the model has no adapter mixin, or ``max_skip_layers`` or a layer id exceeds the model's
            layers.

    Attributes:
        current: the layers dropped in the running step (None between steps).
    """

    def __init__(
        self,
        max_skip_layers: int | None = None,
        layer_sets: Sequence[Iterable[int]] | None = None,
        seed: int | None = None,
    ) -> None:
        if max_skip_layers is not None and layer_sets is not None:
            raise ValueError("pass either max_skip_layers or layer_sets to AdapterDropCallback, not both")
        if max_skip_layers is not None and (not isinstance(max_skip_layers, int) or max_skip_layers < 0):
            raise ValueError(f"max_skip_layers must be a non-negative int, got {max_skip_layers!r}")
        self.max_skip_layers = max_skip_layers
        self.layer_sets: list[frozenset[int]] | None = None
        if layer_sets is not None:
            self.layer_sets = [frozenset(int(i) for i in layers) for layers in layer_sets]
            if not self.layer_sets:
                raise ValueError("layer_sets must hold at least one set of layer ids")
            bad = sorted({i for layers in self.layer_sets for i in layers if i < 0})
            if bad:
                raise ValueError(f"layer_sets holds negative layer ids: {bad}")
        self.seed = seed
        self.current: frozenset[int] | None = None
        self._model: ModelAdaptersMixin | None = None
        self._saved: frozenset[int] | None = None
        self._num_layers = 0
        self._seed = 0

    # ---- the sampling rule ---------------------------------------------------------------------
    def choose(self, step: int) -> frozenset[int]:
        """The layers to drop at global step ``step`` (a pure function of the seed and ``step``).

        Raises:
            RuntimeError: before training has begun (the layer count is not known yet).
        """
        if self._model is None:
            raise RuntimeError("AdapterDropCallback.choose needs the model: it is known once training begins")
        rng = random.Random(f"adapterkit.AdapterDropCallback:{self._seed}:{step}")
        if self.layer_sets is not None:
            return rng.choice(self.layer_sets)
        top = self._num_layers - 1 if self.max_skip_layers is None else self.max_skip_layers
        return frozenset(range(rng.randint(0, top)))

    # ---- Trainer events ------------------------------------------------------------------------
    def on_train_begin(
        self, args: Any, state: Any, control: Any, model: nn.Module | None = None, **kwargs: Any
    ) -> None:
        """Find the adapter model, check the rule against its layers and remember its ``skip_layers``."""
        adapter_model = _adapter_model(model)
        layers = len(adapter_model._adapter_target.layers)
        if self.max_skip_layers is not None and self.max_skip_layers > layers:
            raise ValueError(f"max_skip_layers={self.max_skip_layers} exceeds the model's {layers} layers")
        if self.layer_sets is not None:
            bad = sorted({i for layers_ in self.layer_sets for i in layers_ if i >= layers})
            if bad:
                raise ValueError(f"layer_sets names layers {bad}, but the model has layers 0..{layers - 1}")
        self._model, self._num_layers = adapter_model, layers
        self._seed = self.seed if self.seed is not None else int(getattr(args, "seed", 0))
        self._saved = adapter_model.adapters_config.skip_layers

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Drop the adapters of this step's layers (in addition to the model's own ``skip_layers``)."""
        if self._model is None or self._saved is None:
            return
        self.current = self.choose(state.global_step)
        self._model.adapters_config.skip_layers = self._saved | self.current

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Restore the model's ``skip_layers`` before the Trainer logs, saves or evaluates."""
        self._restore()

    def on_evaluate(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Restore the model's ``skip_layers`` (they are restored before evaluation already)."""
        self._restore()

    def on_predict(self, args: Any, state: Any, control: Any, metrics: Any = None, **kwargs: Any) -> None:
        """Restore the model's ``skip_layers`` (they are restored before prediction already)."""
        self._restore()

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Restore the model's ``skip_layers`` and forget the model."""
        self._restore()
        self._model = self._saved = None

    def _restore(self) -> None:
        if self._model is not None and self._saved is not None:
            self._model.adapters_config.skip_layers = self._saved
        self.current = None


def _adapter_model(model: nn.Module | None) -> ModelAdaptersMixin:
    """``model``, or the model it wraps (``.module``), if it has the adapter mixin.

    Raises:
        ValueError: otherwise.
    """
    candidate = model
    while candidate is not None and not isinstance(candidate, ModelAdaptersMixin):
        candidate = getattr(candidate, "module", None)
    if candidate is None:
        raise ValueError(
            f"AdapterDropCallback needs an adapterkit model (AutoAdapterModel or adapterkit.init), got "
            f"{type(model).__name__}"
        )
    return candidate


__all__ = ["AdapterDropCallback"]
