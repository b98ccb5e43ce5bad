"""ReFT: representation fine-tuning (Wu et al., 2024, https://arxiv.org/abs/2404.03592).

At each chosen layer, a few token positions of the layer output ``h`` are rewritten by a *unit*

    u(h) = dropout(h + (act(W h + b) - s * R h) @ R)        s = 1 (LoReFT, NoReFT), 0 (DiReFT)

with ``R`` the ``r x hidden`` projection (orthonormal rows for LoReFT) and ``W``, ``b`` learned. The positions are
the first ``prefix_positions`` and the last ``suffix_positions`` real tokens of each row, read from the forward's
attention mask (no mask: every position is real). Unit 0 rewrites the prefix positions, unit 1 the suffix
positions (``tied_weights``: unit 0 both). Where a row has fewer real tokens than ``prefix + suffix``, the
positions they share take the suffix unit's value, computed from the un-intervened state (AdapterHub's order).

Attachment: one forward hook on each layer (the whole layer's output, after its bottleneck adapters and before
any final norm); the interventions live in ``<layer>.reft_layer.refts.<name>`` (AdapterHub's key names, e.g.
``...layer.0.reft_layer.refts.a.units.0.learned_source.weight`` and, for LoReFT, torch's orthogonal
parametrization ``...units.0.projection.parametrizations.weight.original`` / ``...weight.0.base``).

Composition: rows are independent, so `BatchSplit`, `Parallel`, `MultiTask` and per-row ``adapter_names`` give
each row its own adapter; `Stack(a, b)` applies ``a`` then ``b`` at every layer; `Average` weights the
interventions, ``h + sum_i w_i (u_i(h) - h)``. `Split` (token ranges) and `Fuse` are refused: positions are
defined on whole rows.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..composition import Average, BatchSplit, MultiTask, Parallel, Stack
from ..configs.reft import ReftConfig
from ..context import ForwardContext
from ..integration.modules import main_output, with_main_output
from ..integration.spec import LayerStack
from ..integration.target import ModelTarget, forward_argument, stack_padding_mask
from .base import AdapterMethod, LayerModules, active_in_order, composed_here, register_method
from .bottleneck import Activation
from .compose import Composer, SiteState, run_setup

logger = logging.getLogger(__name__)

LAYER_ATTRIBUTE = "reft_layer"
"""Attribute of each transformer layer holding its `ReftLayer` (AdapterHub's name)."""
LOCATION = "output_reft"
_PAST = "reft_past_length"  # ForwardContext.scratch key: tokens already in the KV cache when the forward starts
_HALF = (torch.float16, torch.bfloat16)


def _reset_linear(linear: nn.Linear, generator: torch.Generator) -> None:
    """``nn.Linear``'s default initialisation, drawn from ``generator``."""
    nn.init.kaiming_uniform_(linear.weight, a=math.sqrt(5), generator=generator)
    if linear.bias is not None:
        bound = 1 / math.sqrt(linear.in_features)
        nn.init.uniform_(linear.bias, -bound, bound, generator=generator)


class ReftUnit(nn.Module):
    """One intervention ``u(h) = dropout(h + (act(W h + b) - s * R h) @ R)`` on the states of some positions.

    Args:
        hidden_size: size of the hidden states.
        config: the adapter's config (rank, orthogonality, subtraction, activation, dropout).
        generator: random source for initialisation (seeded ``init_weights_seed``); None: PyTorch's default
            initialisation from the global generator.
    """

    def __init__(self, hidden_size: int, config: ReftConfig, generator: torch.Generator | None):
        super().__init__()
        self.learned_source = nn.Linear(hidden_size, config.r, bias=True)
        projection = nn.Linear(hidden_size, config.r, bias=False)
        if generator is not None:
            with torch.no_grad():
                _reset_linear(self.learned_source, generator)
                _reset_linear(projection, generator)
        self.orthogonal = config.orthogonality
        if config.orthogonality:
            if projection.weight.is_meta:  # created for from_pretrained: torch cannot set up `base` from a meta tensor
                projection = projection.to_empty(device="cpu")
                with torch.no_grad():
                    projection.weight.copy_(torch.eye(config.r, hidden_size, device="cpu"))
            # torch completes R to a square orthogonal `base` with random columns: draw them from the seed too
            seed = None if generator is None else int(torch.randint(2**62, (1,), generator=generator))
            with torch.random.fork_rng(devices=[], enabled=seed is not None):
                if seed is not None:
                    torch.manual_seed(seed)
                projection = nn.utils.parametrizations.orthogonal(projection)
        self.projection = projection
        self.subtract_projection = config.subtract_projection
        self.non_linearity = Activation(config.non_linearity)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        """The intervened ``states`` (``(..., hidden)``), in their own dtype."""
        z = states.to(self.learned_source.weight.dtype)
        projection = self.projection.weight  # computed once (orthogonal: a Householder product)
        source = self.non_linearity(self.learned_source(z))
        projection = projection.to(source.dtype)
        if self.subtract_projection:
            source = source - z @ projection.t()
        return self.dropout(z + source @ projection).to(states.dtype)


class ReftModule(nn.Module):
    """One adapter's intervention at one layer: its units and the positions they rewrite.

    Args:
        hidden_size: size of the hidden states.
        config: the adapter's config.
        generator: as `ReftUnit`; re-seeded for every unit, so seeded units start identical (as in AdapterHub).
    """

    def __init__(self, hidden_size: int, config: ReftConfig, generator: torch.Generator | None):
        super().__init__()
        self.prefix_positions = config.prefix_positions
        self.suffix_positions = config.suffix_positions
        self.tied_weights = config.tied_weights
        units = []
        for _ in range(1 if config.tied_weights else 2):  # AdapterHub always makes (and saves) two untied units
            if generator is not None:
                generator.manual_seed(config.init_weights_seed)
            units.append(ReftUnit(hidden_size, config, generator))
        self.units = nn.ModuleList(units)

    def intervene(self, hidden: torch.Tensor, positions: Positions) -> torch.Tensor:
        """``hidden`` ``(batch, tokens, hidden)`` with this adapter's positions rewritten (a new tensor)."""
        p, s = self.prefix_positions, self.suffix_positions
        index, valid = positions.targets(p, s, hidden.shape[1])
        index = index.unsqueeze(-1).expand(-1, -1, hidden.shape[-1])
        states = hidden.gather(1, index)
        if self.tied_weights:
            new = self.units[0](states)
        else:
            parts = [self.units[0](states[:, :p])] if p else []
            if s:
                parts.append(self.units[1](states[:, p:]))
            new = torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]
        # positions a row does not have add nothing; the valid positions of one row are distinct
        delta = (new - states) * valid.unsqueeze(-1).to(new.dtype)
        return hidden.scatter_add(1, index, delta)


class ReftLayer(nn.Module):
    """The ReFT site of one layer (``<layer>.reft_layer``): the interventions of every adapter there.

    Args:
        layer_idx: the layer's index.
        stack: the table's stack of the layer (whose padding mask places the positions).
    """

    def __init__(self, layer_idx: int, stack: LayerStack | None = None):
        super().__init__()
        self.refts = nn.ModuleDict()
        self.layer_idx = layer_idx
        object.__setattr__(self, "stack", stack)
        self._handle: Any = None

    def attach(self, layer: nn.Module) -> None:
        """Install the forward hook on ``layer`` (before the layer's context guard closes a context it opened)."""
        self._handle = layer.register_forward_hook(self._hook, prepend=True)

    def detach(self) -> None:
        """Remove the hook installed by `attach`."""
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def _hook(self, module: nn.Module, args: tuple, output: Any) -> Any:
        ctx = ForwardContext.get_context()
        names = active_in_order(ctx, self.refts, self.layer_idx)
        if not names and not composed_here(ctx, self.refts, self.layer_idx):
            return None
        hidden = main_output(output)
        positions = Positions.for_forward(ctx, hidden, self.stack)  # type: ignore[arg-type]
        if names:
            for name in names:
                hidden = self.refts[name].intervene(hidden, positions)
        else:
            state = ReftState(hidden, positions)
            hidden = run_setup(ctx, state, _ReftComposer(self.refts)).hidden  # type: ignore[arg-type]
        return with_main_output(output, hidden)


@dataclass
class Positions:
    """Where the real tokens of each row are, for choosing intervention positions.

    Attributes:
        order: ``(rows, length)`` absolute token positions, each row's real tokens first (in order), then the rest.
        real: ``(rows,)`` number of real tokens per row.
        start: absolute position of the first token of the hidden states (> 0 when a KV cache holds the rest).
    """

    order: torch.Tensor
    real: torch.Tensor
    start: int

    @staticmethod
    def for_forward(ctx: ForwardContext, hidden: torch.Tensor, stack: LayerStack | None = None) -> Positions:
        """The positions of this forward's rows, from the padding mask of their ``stack`` (see
        `stack_padding_mask`; default ``ctx.attention_mask``). Computed once per forward, mask and hidden-state
        shape; a mask of the un-replicated batch is repeated for `Parallel`'s copies.

        Raises:
            RuntimeError: if the mask cannot describe these hidden states (naming both shapes).
        """
        rows, tokens = hidden.shape[0], hidden.shape[1]
        mask = ctx.attention_mask if stack is None else stack_padding_mask(ctx, stack)
        key = ("reft_positions", rows, tokens, id(mask))
        cached = ctx.scratch.get(key)
        if cached is not None:
            return cached
        device = hidden.device
        if mask is None:  # every token is real; a KV cache holds the first `past` of them
            past = ctx.scratch.get(_PAST, 0)
            order = torch.arange(past + tokens, device=device).expand(rows, past + tokens)
            positions = Positions(order, torch.full((rows,), past + tokens, device=device), past)
        else:
            if mask.shape[1] < tokens or rows % mask.shape[0]:
                raise RuntimeError(
                    f"ReFT cannot place interventions: the attention mask has shape {tuple(mask.shape)} but the "
                    f"layer output has {rows} rows of {tokens} tokens"
                )
            real = mask.to(device) != 0
            length = real.shape[1]
            arange = torch.arange(length, device=device)
            order = torch.where(real, arange, arange + length).argsort(dim=1)
            count = real.sum(dim=1)
            if rows != real.shape[0]:  # Parallel: channel-major copies of the batch
                repeats = rows // real.shape[0]
                order, count = order.repeat(repeats, 1), count.repeat(repeats)
            positions = Positions(order, count, length - tokens)
        ctx.scratch[key] = positions
        return positions

    def rows(self, index: slice | torch.Tensor) -> Positions:
        """The positions of rows ``index``."""
        return Positions(self.order[index], self.real[index], self.start)

    def targets(self, prefix: int, suffix: int, tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(index, valid), each ``(rows, prefix + suffix)``: the positions (relative to the hidden states) of the
        first ``prefix`` and last ``suffix`` real tokens, and whether each is intervened on. Invalid entries (a row
        with fewer real tokens, a position outside these hidden states, or a prefix position that is also a suffix
        position: the suffix wins) point at some position and add nothing."""
        device = self.order.device
        real = self.real.unsqueeze(1)
        ranks = [torch.arange(prefix, device=device).expand(self.order.shape[0], prefix)]
        valid = [ranks[0] < real]
        if suffix:
            valid[0] = valid[0] & (ranks[0] < real - suffix)
            ranks.append(real - suffix + torch.arange(suffix, device=device))
            valid.append(ranks[1] >= 0)
        rank = torch.cat(ranks, dim=1).clamp(0, self.order.shape[1] - 1)
        local = self.order.gather(1, rank) - self.start
        ok = torch.cat(valid, dim=1) & (local >= 0) & (local < tokens)
        return local.clamp(0, tokens - 1), ok


@dataclass
class ReftState(SiteState):
    """A ReFT site's value: the layer output and where each row's real tokens are."""

    hidden: torch.Tensor
    positions: Positions

    @property
    def batch_size(self) -> int:
        return self.hidden.shape[0]

    @property
    def seq_len(self) -> int:
        return self.hidden.shape[1]

    def rows(self, index: slice | torch.Tensor) -> ReftState:
        return ReftState(self.hidden[index], self.positions.rows(index))

    def tokens(self, index: slice) -> ReftState:
        raise ValueError("ReFT positions are defined on whole rows; Split cannot cut them (refused at set-up)")

    @classmethod
    def cat(cls, states: Sequence[ReftState], dim: int) -> ReftState:
        first = states[0].positions
        positions = Positions(
            torch.cat([s.positions.order for s in states]), torch.cat([s.positions.real for s in states]), first.start
        )
        return ReftState(torch.cat([s.hidden for s in states], dim), positions)

    @classmethod
    def weighted_sum(cls, states: Sequence[ReftState], weights: Sequence[float], start: ReftState) -> ReftState:
        """``h + sum_i w_i (u_i(h) - h)``: the interventions are weighted, untouched positions stay ``h``."""
        h = start.hidden
        return ReftState(h + sum(w * (s.hidden - h) for w, s in zip(weights, states, strict=True)), start.positions)  # type: ignore[arg-type]


class _ReftComposer(Composer[ReftState]):
    def __init__(self, refts: nn.ModuleDict):
        self.present = refts

    def single(self, name: str, state: ReftState) -> ReftState:
        return ReftState(self.present[name].intervene(state.hidden, state.positions), state.positions)


def _record_past_length(ctx: ForwardContext, module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> tuple:
    """Input hook: how many tokens the KV cache holds before this forward (the layers add to it as they run), to
    place positions when no attention mask is given (``generate()`` leaves out an all-ones mask)."""
    cache = forward_argument(module, args, kwargs, "past_key_values")
    length = getattr(cache, "get_seq_length", None)
    if callable(length):
        ctx.scratch[_PAST] = int(length())
    return args


class ReftMethod(AdapterMethod):
    """Registers ReFT interventions (`ReftConfig`) on the outputs of the table's layers."""

    name = "reft"
    config_class = ReftConfig
    module_attribute = "refts"
    supported_blocks = (Stack, BatchSplit, Parallel, Average, MultiTask)

    def add(self, target: ModelTarget, adapter_name: str, config: ReftConfig) -> LayerModules:  # type: ignore[override]
        n_layers = len(target.layers)
        if config.layers != "all" and any(i >= n_layers for i in config.layers):
            raise ValueError(
                f"ReftConfig.layers={config.layers!r} names layers this model does not have; it has layers "
                f"0..{n_layers - 1}"
            )
        generator = (
            torch.Generator().manual_seed(config.init_weights_seed) if config.init_weights_seed is not None else None
        )
        dtype = getattr(torch, config.dtype) if config.dtype else None
        created: LayerModules = {}
        target.input_hooks[self.name] = _record_past_length
        for idx, layer in enumerate(target.layers):
            if not config.applies_to(idx):
                continue
            ref = next(layer.parameters())
            module = ReftModule(target.hidden_size_of(idx), config, generator).to(ref.device)
            self._cast(module, dtype or ref.dtype, config.orthogonality)
            module.train(layer.training)
            site = getattr(layer, LAYER_ATTRIBUTE, None)
            if site is None:
                site = ReftLayer(idx, target.stack(idx))
                layer.add_module(LAYER_ATTRIBUTE, site)
                site.attach(layer)
            site.refts[adapter_name] = module
            created[idx] = {LOCATION: module}
        return created

    @staticmethod
    def _cast(module: ReftModule, dtype: torch.dtype, orthogonal: bool) -> None:
        for unit in module.units:
            unit.learned_source.to(dtype)
            if orthogonal and dtype in _HALF:
                logger.warning("the orthogonal ReFT projection is not available in %s; it is kept in float32", dtype)
                continue
            unit.projection.to(dtype)

    def delete(self, target: ModelTarget, adapter_name: str) -> None:
        for layer in target.layers:
            site = getattr(layer, LAYER_ATTRIBUTE, None)
            if site is None or adapter_name not in site.refts:
                continue
            del site.refts[adapter_name]
            if len(site.refts) == 0:
                site.detach()
                delattr(layer, LAYER_ATTRIBUTE)
        if not any(hasattr(layer, LAYER_ATTRIBUTE) for layer in target.layers):
            target.input_hooks.pop(self.name, None)

    def modules(self, target: ModelTarget, adapter_name: str) -> LayerModules:
        found: LayerModules = {}
        for idx, layer in enumerate(target.layers):
            site = getattr(layer, LAYER_ATTRIBUTE, None)
            if site is not None and adapter_name in site.refts:
                found[idx] = {LOCATION: site.refts[adapter_name]}
        return found


register_method(ReftMethod())
