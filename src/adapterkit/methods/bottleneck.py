"""Bottleneck adapters (Houlsby et al., 2019; Pfeiffer et al., 2020; He et al., 2021), Compacter
(Mahabadi et al., 2021; PHM projections from `methods.phm`) and AdapterPlus (Steitz & Roth, 2024).

A sequential adapter maps the sub-block output ``h`` (with residual stream ``r``) to

    x   = LN(h + r)              if original_ln_before (just h + r in pre-LN models), else h
    out = drop_path(up(act(down(x)))) * scaling + residual       residual per ``residual_before_ln``

and the model then applies its own ``LN(out + r)`` (or ``out + r``), which is AdapterHub's
``original_ln_after=True``. With ``original_ln_after=False`` ``out`` is the sub-block's result
itself. A parallel adapter computes ``up(act(down(r))) * scaling`` from the sub-block input and adds
it to ``h``.

Attachment: a forward pre-hook on the table's ``residual_input`` module captures ``r``; a forward
hook on the ``output`` module replaces ``h`` by the adapter output, so the model's own residual
add and layer norm finish the computation. No model code is copied. ``original_ln_after=False``
(when the last adapter of the setup at a site has it): pre-LN models get ``out - r`` from the hook,
so the model's residual add gives ``out``; post-LN models get a forward hook on the sub-block's norm
that replaces its output by ``out`` (computed from the norm's own input ``h + r`` and output).

Two table declarations change what the adapters read. ``SubBlock.adapter_norm`` (Gemma-2/3's post norms, which
the model applies to ``h`` alone): the adapters' input step normalises ``h + r`` with it, and the model's norm and
residual add follow. ``SubBlock.parallel_to`` (GPT-J, GPT-NeoX: attention and feed-forward on the same input): the
feed-forward site's ``r`` is the captured residual plus the attention sub-block's output as its adapters left it
(their hook runs first on that module, and a later hook records the result).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.hooks import RemovableHandle
from transformers.activations import get_activation

from ..composition import Average, BatchSplit, Fuse, MultiTask, Parallel, Split, Stack
from ..configs import BnConfig
from ..context import ForwardContext, RowGroups
from ..integration.modules import first_input, get_or_create_host, main_output, with_main_output
from ..integration.spec import BLOCK_NAMES, SubBlock
from ..integration.target import ModelTarget
from . import invertible
from .base import AdapterMethod, LayerModules, active_in_order, composed_here, register_method
from .compose import Composer, SiteState, run_setup, touches
from .gating import GatingKey, store_gating_score
from .phm import PHMLayer, SharedPHMParameters
from .shared import SHARED_ATTRIBUTE, delete_shared, get_shared, set_shared

LOCATIONS = {"mh_adapter": "attention", "cross_adapter": "cross_attention", "output_adapter": "ffn"}
_HANDLES = "_adapterkit_bottleneck_hooks"
_SITE = "_adapterkit_bottleneck_site"
FUSION_ATTRIBUTE = "adapter_fusion_layer"
"""Attribute of a bottleneck host holding its AdapterFusion layers (see `methods.fusion`); state-dict
keys contain ``.adapter_fusion_layer.<fusion name>.``."""


class Activation(nn.Module):
    """A named activation (``transformers.get_activation`` names, ``"leakyrelu"``, or None for identity)."""

    def __init__(self, name: str | None):
        super().__init__()
        self.name = name
        if name is None:
            self.fn: Any = nn.Identity()
        elif name.lower() == "leakyrelu":
            self.fn = F.leaky_relu
        else:
            self.fn = get_activation(name.lower())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)


class BottleneckAdapter(nn.Module):
    """One bottleneck adapter at one location; parameter names follow AdapterHub's.

    Args:
        input_size: hidden size of the model.
        bottleneck_size: width of the down-projection (at least 1).
        config: the adapter's config.
        generator: random source for initialisation (seeded when ``init_weights_seed`` is set).
        shared: the adapter's shared PHM parameters (``phm_layer`` with ``shared_phm_rule`` or ``shared_W_phm``).

    Attributes:
        gating_key: (adapter, layer, location) under which the gate is reported (``use_gating``).

    Raises:
        ValueError: for PHM layers whose sizes ``phm_dim`` does not divide.
    """

    def __init__(
        self,
        input_size: int,
        bottleneck_size: int,
        config: BnConfig,
        generator: torch.Generator | None,
        shared: SharedPHMParameters | None = None,
    ):
        super().__init__()
        self.config = config
        self.gating_key: GatingKey | None = None
        self.stochastic_depth = float(config.stochastic_depth or 0.0)
        size = max(1, bottleneck_size)
        down: list[nn.Module] = []
        if config.ln_before:
            down.append(nn.LayerNorm(input_size))
        if config.phm_layer:
            down.append(PHMLayer(input_size, size, "down", config, shared, generator))
            self.adapter_up: nn.Module = PHMLayer(size, input_size, "up", config, shared, generator)
        else:
            down.append(nn.Linear(input_size, size))
            self.adapter_up = nn.Linear(size, input_size)
        down.append(Activation(config.non_linearity))
        self.adapter_down = nn.Sequential(*down)
        if config.scaling == "learned":
            self.scaling: Any = nn.Parameter(torch.ones(1))
        elif config.scaling == "channel":
            self.scaling = nn.Parameter(torch.ones(input_size))
        else:
            self.scaling = float(config.scaling)
        if config.ln_after:
            self.adapter_norm_after = nn.LayerNorm(input_size)
        if config.use_gating:
            self.gate = nn.Linear(input_size, 1)
        self.dropout = nn.Dropout(config.dropout)
        self._init_weights(generator)

    def _init_weights(self, g: torch.Generator | None) -> None:
        """``init_weights`` for the ``nn.Linear`` projections and the gate; PHM layers keep their own
        initialisation (`methods.phm`) whatever ``init_weights`` says."""
        linears = [m for m in [*self.adapter_down, self.adapter_up] if isinstance(m, nn.Linear)]
        kind = self.config.init_weights
        with torch.no_grad():
            if kind == "bert":
                for m in linears + ([self.gate] if self.config.use_gating else []):
                    nn.init.normal_(m.weight, 0.0, 0.02, generator=g)
                    nn.init.zeros_(m.bias)
            elif kind == "mam_adapter":
                for m in linears:
                    if m is self.adapter_up:
                        nn.init.zeros_(m.weight)
                    else:
                        nn.init.kaiming_uniform_(m.weight, a=math.sqrt(5), generator=g)
                    nn.init.zeros_(m.bias)
                if self.config.use_gating:
                    nn.init.normal_(self.gate.weight, 0.0, 0.02, generator=g)
                    nn.init.zeros_(self.gate.bias)
            else:  # houlsby
                for m in linears:
                    nn.init.trunc_normal_(m.weight, 0.0, 1e-2, -2e-2, 2e-2, generator=g)
                    nn.init.zeros_(m.bias)

    def adapter_input(
        self,
        h: torch.Tensor,
        r: torch.Tensor,
        layer_norm: nn.Module | None,
        summed: torch.Tensor | None = None,
        normed: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(adapter input x, adapter residual) from sub-block output ``h`` and residual stream ``r``.

        ``summed``, when given, is ``h + r`` already computed by the model, and ``normed`` its
        ``layer_norm(h + r)``.
        """
        cfg = self.config
        if cfg.is_parallel:
            return r, r
        residual = h
        if cfg.original_ln_before:
            h = summed if summed is not None else h + r
            if cfg.residual_before_ln == "post_add":
                residual = h
            if normed is not None:
                h = normed
            elif layer_norm is not None:
                h = layer_norm.forward(h)  # .forward: not through hooks (the norm carries one of ours)
        if cfg.residual_before_ln is False:
            residual = h
        return h, residual

    def up(self, x: torch.Tensor) -> torch.Tensor:
        """``drop_path(up(act(down(x)))) * scaling``: the adapter's contribution before dropout, gate and
        residual (what AdapterFusion attends over). Stochastic depth acts in training only."""
        out = self.adapter_up(self.adapter_down(x))
        if self.stochastic_depth and self.training:
            out = drop_path(out, self.stochastic_depth)
        if not (isinstance(self.scaling, float) and self.scaling == 1.0):  # skip a full pass for the default
            out = out * self.scaling
        return out

    def forward(self, x: torch.Tensor, residual: torch.Tensor, up: torch.Tensor | None = None) -> torch.Tensor:
        """``up(act(down(x))) * scaling`` (+ residual for sequential adapters); ``up`` if computed already."""
        out = self.dropout(self.up(x) if up is None else up)
        if self.config.use_gating:
            gate = torch.sigmoid(self.gate(x)).mean(dim=1, keepdim=True)
            out = out * gate
            store_gating_score(self.gating_key, gate)
        if self.config.is_parallel:
            return self.adapter_norm_after(out) if self.config.ln_after else out
        if self.config.adapter_residual_before_ln:
            out = out + residual
        if self.config.ln_after:
            out = self.adapter_norm_after(out)
        if not self.config.adapter_residual_before_ln:
            # in place when `out` is a fresh tensor no backward needs; a caller's `up` must stay intact
            out = out + residual if out is up else out.add_(residual)
        return out

    def fusion_inputs(
        self, h: torch.Tensor, r: torch.Tensor, layer_norm: nn.Module | None, query_before_ln: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(query, residual) for an AdapterFusion whose last fused adapter is this one."""
        x, residual = self.adapter_input(h, r, layer_norm)
        if self.config.is_parallel:
            return r, residual
        return (h if query_before_ln else x), residual


def drop_path(x: torch.Tensor, p: float) -> torch.Tensor:
    """Stochastic depth ("row" mode, as torchvision's ``StochasticDepth``): each sample's ``x`` is zeroed
    with probability ``p`` and otherwise scaled by ``1 / (1 - p)``."""
    survival = 1.0 - p
    noise = torch.empty((x.shape[0],) + (1,) * (x.ndim - 1), dtype=x.dtype, device=x.device).bernoulli_(survival)
    if survival > 0.0:
        noise.div_(survival)
    return x * noise


def apply_adapter(
    adapter: BottleneckAdapter, hidden: torch.Tensor, r: torch.Tensor, layer_norm: nn.Module | None,
    summed: torch.Tensor | None = None, normed: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One adapter on the running hidden state: (new hidden state, the adapter's up output).

    A sequential adapter replaces the hidden state by its output; a parallel adapter adds its
    output to it (so stacked parallel adapters sum). ``summed``/``normed``: see `adapter_input`.
    """
    x, residual = adapter.adapter_input(hidden, r, layer_norm, summed, normed)
    up = adapter.up(x)
    out = adapter.forward(x, residual, up)
    return (hidden + out if adapter.config.is_parallel else out), up


@dataclass(eq=False)
class _Site:
    """One bottleneck location of one layer.

    ``ln_after_off`` names the adapters here with ``original_ln_after=False``; ``norm_hook`` is the forward
    hook on a post-LN norm (or on the `adapter_norm`) that replaces its output while there are such adapters.
    ``adapter_norm``: see `SubBlock.adapter_norm`; ``parallel``: the residual stream adds the output of the
    sub-block that runs side by side with this one (`SubBlock.parallel_to`).
    """

    host: nn.Module
    layer_norm: nn.Module | None
    layer_idx: int
    location: str
    ln_after_off: set[str] = field(default_factory=set)
    norm_hook: RemovableHandle | None = None
    adapter_norm: nn.Module | None = None
    parallel: bool = False

    @property
    def input_norm(self) -> nn.Module | None:
        """The norm the adapters' input step applies to ``h + r`` (``original_ln_before``)."""
        return self.layer_norm if self.layer_norm is not None else self.adapter_norm


@dataclass
class BottleneckState(SiteState):
    """A bottleneck site's value: the running hidden state, the sub-block input ``r`` (residual
    stream) and the last adapter's up output (for AdapterFusion)."""

    hidden: torch.Tensor
    r: torch.Tensor
    up: torch.Tensor | None = None

    @property
    def batch_size(self) -> int:
        return self.hidden.shape[0]

    @property
    def seq_len(self) -> int:
        return self.hidden.shape[1]

    def rows(self, index: slice | torch.Tensor) -> BottleneckState:
        return BottleneckState(self.hidden[index], self.r[index], None if self.up is None else self.up[index])

    def tokens(self, index: slice) -> BottleneckState:
        return BottleneckState(
            self.hidden[:, index], self.r[:, index], None if self.up is None else self.up[:, index]
        )

    @classmethod
    def cat(cls, states: Sequence[BottleneckState], dim: int) -> BottleneckState:
        ups = [s.up for s in states]
        return BottleneckState(
            torch.cat([s.hidden for s in states], dim),
            torch.cat([s.r for s in states], dim),
            torch.cat(ups, dim) if all(u is not None for u in ups) else None,  # type: ignore[arg-type]
        )

    @classmethod
    def weighted_sum(
        cls, states: Sequence[BottleneckState], weights: Sequence[float], start: BottleneckState
    ) -> BottleneckState:
        """``sum_i w_i h_i`` of the adapters' whole outputs (residual included), as AdapterHub weights them."""
        hidden = sum(w * s.hidden for w, s in zip(weights, states, strict=True))
        return BottleneckState(hidden, states[0].r)  # type: ignore[arg-type]


class _BottleneckComposer(Composer[BottleneckState]):
    def __init__(self, site: _Site):
        self.site = site
        self.present = site.host.adapters

    def single(self, name: str, state: BottleneckState) -> BottleneckState:
        hidden, up = apply_adapter(self.site.host.adapters[name], state.hidden, state.r, self.site.input_norm)
        return BottleneckState(hidden, state.r, up)

    def fuse(self, block: Fuse, state: BottleneckState, run: Callable) -> BottleneckState:
        """AdapterFusion: attention of a query over the fused children's up outputs (+ residual).

        The query and residual come from the last fused adapter's input step, as in AdapterHub. A site
        without the fusion layer (one of the fused adapters is left out here) leaves the state as it is.
        With ``output_adapter_fusion_attentions``, the attention probabilities are collected as numpy
        arrays ``[batch, tokens, n_adapters]`` under ``{fusion: {layer: {location: array}}}``; a fusion
        that runs on several row groups at one site (inside Parallel, BatchSplit, ...) gets its rows
        concatenated in the order they ran.
        """
        fusions = getattr(self.site.host, FUSION_ATTRIBUTE, None)
        fusion = fusions[block.name] if fusions is not None and block.name in fusions else None
        if fusion is None or not all(name in self.present for name in fusion.adapter_names):
            return state
        last = self.site.host.adapters[block.last()]
        query, residual = last.fusion_inputs(state.hidden, state.r, self.site.input_norm, fusion.config.query_before_ln)
        ups = [run(child, state).up for child in block]
        hidden, attention = fusion(query, torch.stack(ups, dim=2), residual)
        ctx = ForwardContext.get_context()
        if ctx is not None and ctx.options.get("output_adapter_fusion_attentions", False):
            self._store_attention(ctx, block.name, attention)
        return BottleneckState(hidden, state.r, None)

    def _store_attention(self, ctx: ForwardContext, fusion_name: str, attention: torch.Tensor) -> None:
        attention = attention.detach()
        if attention.dtype in (torch.bfloat16, torch.float16):
            attention = attention.float()
        array = attention.cpu().numpy()
        per_layer = ctx.outputs.setdefault("adapter_fusion_attentions", {}).setdefault(fusion_name, {})
        per_location = per_layer.setdefault(self.site.layer_idx, {})
        previous = per_location.get(self.site.location)
        per_location[self.site.location] = array if previous is None else np.concatenate([previous, array], axis=0)


def _run_composed(site: _Site, h: torch.Tensor, r: torch.Tensor, summed: torch.Tensor | None) -> torch.Tensor:
    """Any setup other than a Stack of names, through `methods.compose`; returns like `_run`."""
    ctx = ForwardContext.get_context()
    state = run_setup(ctx, BottleneckState(h, r), _BottleneckComposer(site))  # type: ignore[arg-type]
    return state.hidden if summed is None else state.hidden + r


def _plan(ctx: ForwardContext | None, site: _Site) -> list[str] | bool:
    """The names to run directly (a Stack of names), True for a setup run through `compose`, or []."""
    names = active_in_order(ctx, site.host.adapters, site.layer_idx)
    return names or composed_here(ctx, site.host.adapters, site.layer_idx)


def _capture_residual(site: _Site, module: nn.Module, args: tuple, kwargs: dict) -> None:
    ctx = ForwardContext.get_context()
    if _plan(ctx, site):
        ctx.scratch[site] = first_input(args, kwargs)  # type: ignore[union-attr]


def _no_residual(site: _Site, module: nn.Module, args: tuple, kwargs: dict) -> None:
    ctx = ForwardContext.get_context()
    if _plan(ctx, site):
        ctx.scratch[site] = None  # type: ignore[union-attr]


def _capture_parallel(site: _Site, module: nn.Module, args: tuple, output: Any) -> None:
    """Forward hook on the output of the sub-block parallel to ``site``'s: its output, after its adapters
    (their hook runs first), joins ``site``'s residual stream."""
    ctx = ForwardContext.get_context()
    if _plan(ctx, site):
        ctx.scratch[(site, "parallel")] = main_output(output)  # type: ignore[union-attr]


def _apply_adapters(site: _Site, module: nn.Module, args: tuple, output: Any) -> Any:
    """Forward hook on the sub-block output ``h``: run the active adapters on it.

    In post-LN models the work waits for the norm's pre-hook (`_apply_before_norm`), which gets
    ``h + r`` from the model and so saves recomputing it.
    """
    ctx = ForwardContext.get_context()
    names = _plan(ctx, site)
    # no residual captured: the module runs again after its sub-block (X-MOD reuses its FFN dropout)
    if not names or site not in ctx.scratch:  # type: ignore[union-attr]
        return None
    h = main_output(output)
    if site.layer_norm is not None:
        ctx.scratch[(site, "h")] = (h, names)  # type: ignore[union-attr]
        return None
    r = ctx.scratch.pop(site)  # type: ignore[union-attr]
    if r is None:  # no residual_input in the table: the adapters see the sub-block output alone
        r = torch.zeros_like(h)
    if site.parallel:
        r = r + ctx.scratch.pop((site, "parallel"))  # type: ignore[union-attr]
    if site.ln_after_off:
        off = _ln_after_off_rows(ctx, site, names, h)  # type: ignore[arg-type]
        if off is not False:
            # original_ln_after=False: the model adds r to what we return, so the sum is the adapters' output
            hidden = _adapters_output(site, names, h, r)
            if site.adapter_norm is not None:  # the model normalises what we return: replace the norm's output
                ctx.scratch[(site, "out")] = (hidden - r, off)  # type: ignore[union-attr]
                return with_main_output(output, hidden)
            return with_main_output(output, hidden - r if off is True else torch.where(off, hidden - r, hidden))
    return with_main_output(output, _run(site, names, h, r, summed=None))


def _apply_before_norm(site: _Site, module: nn.Module, args: tuple) -> tuple | None:
    """Forward pre-hook on a post-LN norm: replace its input ``h + r`` by the adapters' output + ``r``."""
    ctx = ForwardContext.get_context()
    pending = ctx.scratch.pop((site, "h"), None) if ctx is not None else None
    if pending is None:
        return None
    h, names = pending
    r = ctx.scratch.pop(site)  # type: ignore[union-attr]
    if site.ln_after_off:
        off = _ln_after_off_rows(ctx, site, names, h)  # type: ignore[arg-type]
        if off is not False:
            ctx.scratch[(site, "out")] = (h, r, names, off)  # type: ignore[union-attr]  # see _replace_norm_output
            return None
    return (_run(site, names, h, r, summed=args[0]), *args[1:])


def _replace_norm_output(site: _Site, module: nn.Module, args: tuple, output: Any) -> Any:
    """Forward hook on a post-LN norm, installed while an adapter here has ``original_ln_after=False``:
    where the setup's last adapter is one, the adapters' output replaces the norm's ``LN(h + r)``. The norm's
    input ``h + r`` and output are reused as the adapter's ``h + r`` and ``LN(h + r)`` (AdapterPlus needs both).
    Rows whose last adapter keeps ``original_ln_after=True`` (in a Parallel, BatchSplit, ...) get ``LN(out + r)``.
    """
    ctx = ForwardContext.get_context()
    pending = ctx.scratch.pop((site, "out"), None) if ctx is not None else None
    if pending is None:
        return None
    h, r, names, off = pending
    hidden = _adapters_output(site, names, h, r, summed=args[0], normed=output)
    if off is True:
        return hidden
    return torch.where(off, hidden, module.forward(hidden + r))  # .forward: not through this hook again


def _replace_adapter_norm_output(site: _Site, module: nn.Module, args: tuple, output: Any) -> Any:
    """Forward hook on a sub-block's `adapter_norm`, installed while an adapter here has
    ``original_ln_after=False``: rows whose last adapter is one get ``out - r`` (so the model's residual add
    gives the adapters' output ``out``) instead of the norm of the sub-block output."""
    ctx = ForwardContext.get_context()
    pending = ctx.scratch.pop((site, "out"), None) if ctx is not None else None
    if pending is None:
        return None
    target, off = pending
    return target if off is True else torch.where(off, target, output)


def _replace_norm_for(site: _Site, adapter_name: str) -> None:
    """Record that ``adapter_name`` at ``site`` has ``original_ln_after=False``; a post-LN norm (or the
    `adapter_norm`) gets the output hook (only while such adapters exist, so other setups pay nothing for it)."""
    site.ln_after_off.add(adapter_name)
    if site.norm_hook is None:
        if site.layer_norm is not None:
            site.norm_hook = site.layer_norm.register_forward_hook(partial(_replace_norm_output, site))
        elif site.adapter_norm is not None:
            site.norm_hook = site.adapter_norm.register_forward_hook(partial(_replace_adapter_norm_output, site))


def _keep_norm_for(site: _Site, adapter_name: str) -> None:
    """Undo `_replace_norm_for` for ``adapter_name`` (removing the hook after the last such adapter)."""
    site.ln_after_off.discard(adapter_name)
    if not site.ln_after_off and site.norm_hook is not None:
        site.norm_hook.remove()
        site.norm_hook = None


RowMask = bool | torch.Tensor
"""One bool for all rows, or a ``(batch, 1, 1)`` bool tensor (broadcasts over tokens and channels)."""


def _ln_after_off_rows(ctx: ForwardContext, site: _Site, names: list[str] | bool, h: torch.Tensor) -> RowMask:
    """Which rows of ``h`` end in an adapter with ``original_ln_after=False`` at ``site``.

    As in AdapterHub the last adapter of the setup decides (its ``post_forward``), but per row: the
    channels of a Parallel, the splits of a BatchSplit and the groups of MultiTask or per-row routing
    each follow their own last adapter (AdapterHub takes the last one of the whole batch).
    """
    if names is not True:
        return names[-1] in site.ln_after_off  # type: ignore[index]
    if ctx.row_groups is not None:
        mask = _groups_mask(ctx, ctx.row_groups, h.shape[0], site, h.device)
    else:
        mask = _block_mask(ctx, ctx.setup, h.shape[0], site, h.device)
    return mask if isinstance(mask, bool) else mask.view(-1, 1, 1)


def _block_mask(ctx: ForwardContext, block: object, rows: int, site: _Site, device: torch.device) -> RowMask:
    """`_ln_after_off_rows` for ``block`` (a name, None or a composition block) on ``rows`` rows."""
    if block is None:
        return False
    if isinstance(block, str):
        return block in site.ln_after_off
    if isinstance(block, (Parallel, BatchSplit)):
        sizes = list(block.batch_sizes) if isinstance(block, BatchSplit) else [rows // len(block)] * len(block)
        parts = [_block_mask(ctx, c, n, site, device) for c, n in zip(block.children, sizes, strict=True)]
        if all(isinstance(p, bool) for p in parts) and len(set(parts)) == 1:
            return parts[0]
        return torch.cat([torch.full((n,), p, device=device) if isinstance(p, bool) else p for p, n in zip(
            parts, sizes, strict=True
        )])
    if isinstance(block, MultiTask):
        groups = ctx.task_groups(block, rows)
        return False if groups is None else _groups_mask(ctx, groups, rows, site, device)
    for child in reversed(block.children):  # type: ignore[attr-defined]
        if touches(child, site.host.adapters):  # Stack, Split, Average, Fuse: the last child that runs here
            return _block_mask(ctx, child, rows, site, device)
    return False


def _groups_mask(ctx: ForwardContext, groups: RowGroups, rows: int, site: _Site, device: torch.device) -> RowMask:
    parts = [_block_mask(ctx, t, len(idx), site, device) for t, idx in zip(groups.targets, groups.rows, strict=True)]
    if all(isinstance(p, bool) for p in parts) and len(set(parts)) == 1:
        return parts[0]
    mask = torch.zeros(rows, dtype=torch.bool, device=device)
    for part, idx in zip(parts, groups.rows, strict=True):
        mask[idx.to(device)] = part if isinstance(part, bool) else part.view(-1)
    return mask


def _adapters_output(
    site: _Site,
    names: list[str] | bool,
    h: torch.Tensor,
    r: torch.Tensor,
    summed: torch.Tensor | None = None,
    normed: torch.Tensor | None = None,
) -> torch.Tensor:
    """The adapters' output at ``site`` with no residual add or norm after it (``original_ln_after=False``).

    ``summed``/``normed``: the model's ``h + r`` and ``LN(h + r)`` when known (see `adapter_input`).
    """
    if names is True:
        ctx = ForwardContext.get_context()
        return run_setup(ctx, BottleneckState(h, r), _BottleneckComposer(site)).hidden  # type: ignore[arg-type]
    hidden = h
    for name in names:  # type: ignore[union-attr]
        first = hidden is h
        hidden, _ = apply_adapter(
            site.host.adapters[name], hidden, r, site.input_norm, summed if first else None, normed if first else None
        )
    return hidden


def _run(
    site: _Site, names: list[str] | bool, h: torch.Tensor, r: torch.Tensor, summed: torch.Tensor | None
) -> torch.Tensor:
    """Apply the adapters ``names`` in order (``True``: the context's composed setup).

    Returns the value that replaces ``h`` (pre-LN, ``summed`` is None), or the norm's new input
    (post-LN, ``summed = h + r``).
    """
    if names is True:
        return _run_composed(site, h, r, summed)
    if summed is not None and len(names) == 1:  # type: ignore[arg-type]
        return _single_into_norm(site.host.adapters[names[0]], h, r, site.layer_norm, summed)  # type: ignore[index]
    hidden = h
    for name in names:  # type: ignore[union-attr]
        hidden, _ = apply_adapter(site.host.adapters[name], hidden, r, site.input_norm, summed if hidden is h else None)
    return hidden if summed is None else hidden + r


def _single_into_norm(
    adapter: BottleneckAdapter, h: torch.Tensor, r: torch.Tensor, layer_norm: nn.Module | None, summed: torch.Tensor
) -> torch.Tensor:
    """The post-LN norm input ``adapter output + r`` for one adapter, reusing the model's ``summed = h + r``
    where the adapter adds ``h`` last (saves a full pass over the activations)."""
    x, residual = adapter.adapter_input(h, r, layer_norm, summed)
    cfg = adapter.config
    if cfg.is_parallel:
        return adapter.forward(x, residual).add_(summed)  # f + h + r
    if residual is h and not (cfg.ln_after and cfg.adapter_residual_before_ln):
        return adapter.forward(x, summed)  # f + h + r
    return adapter.forward(x, residual) + r


class BottleneckMethod(AdapterMethod):
    """Registers bottleneck adapters (`BnConfig`) at the table's attention and FFN sub-blocks."""

    name = "bottleneck"
    config_class = BnConfig
    module_attribute = "adapters"
    supported_blocks = (Stack, Fuse, Split, BatchSplit, Parallel, Average, MultiTask)
    union_repeatable = True  # per layer and location: a union may hold configs at disjoint places

    @property
    def module_attributes(self) -> tuple[str, ...]:
        """``adapters`` (per layer and location), ``shared_parameters`` (Compacter's shared PHM tensors) and
        ``invertible_adapters`` (the ``inv_adapter`` module, see `methods.invertible`)."""
        return ("adapters", SHARED_ATTRIBUTE, invertible.ATTRIBUTE)

    def _check(self, target: ModelTarget, config: BnConfig) -> None:
        if config.cross_adapter and not target.spec.is_encoder_decoder:
            raise ValueError(
                f"BnConfig.cross_adapter=True needs a model with cross-attention, but {target.spec.model_type!r} "
                "has none; use cross_adapter=False"
            )

    def add(self, target: ModelTarget, adapter_name: str, config: BnConfig) -> LayerModules:  # type: ignore[override]
        self._check(target, config)
        generator = None
        if config.init_weights_seed is not None:
            generator = torch.Generator().manual_seed(config.init_weights_seed)
        created: LayerModules = {}
        shared = self._add_shared(target, adapter_name, config, generator)
        for idx, layer in enumerate(target.layers):
            if idx in config.leave_out:
                continue
            for location, block_name in LOCATIONS.items():
                block = target.stack(idx).sub_block(block_name)
                if block is None:  # e.g. cross_adapter in an encoder layer
                    continue
                if not getattr(config, block.adapter_flag or location):
                    continue
                if block.residual_input is None and (config.is_parallel or not config.original_ln_after):
                    raise ValueError(
                        f"{type(config).__name__} at {location} needs the sub-block's residual stream "
                        f"({'is_parallel' if config.is_parallel else 'original_ln_after=False'}), which the "
                        f"{target.spec.model_type!r} model does not give there (a custom model's interface without "
                        "layer_pre_*); give the layer_pre_* hook point or use a sequential adapter"
                    )
                host = get_or_create_host(layer, block.adapter_host)
                if not hasattr(host, "adapters"):
                    host.adapters = nn.ModuleDict()
                if generator is not None:
                    generator.manual_seed(config.init_weights_seed)
                hidden_size = target.hidden_size_of(idx)
                size = int(hidden_size // config.reduction_factor_for(idx))
                ref = next(layer.parameters())
                adapter = BottleneckAdapter(hidden_size, size, config, generator, shared).to(
                    ref.device, ref.dtype
                )
                adapter.train(layer.training)
                adapter.gating_key = (adapter_name, idx, location)
                host.adapters[adapter_name] = adapter
                self._ensure_hooks(target, idx, host, block, location)
                if not config.original_ln_after:
                    _replace_norm_for(getattr(host, _SITE), adapter_name)
                created.setdefault(idx, {})[location] = adapter
        created.update(invertible.add(target, adapter_name, config))  # the inv_adapter part, if any
        return created

    def _add_shared(
        self, target: ModelTarget, adapter_name: str, config: BnConfig, generator: torch.Generator | None
    ) -> SharedPHMParameters | None:
        """Create and register the PHM parameters all layers of ``adapter_name`` share, if it has any.

        Raises:
            ValueError: for shared PHM weights with bottleneck sizes that differ between layers.
        """
        if not (config.phm_layer and (config.shared_phm_rule or config.shared_W_phm)):
            return None
        layers = [i for i in range(len(target.layers)) if i not in config.leave_out]
        if not layers or not (config.mh_adapter or config.output_adapter):
            return None
        hidden_sizes = {target.hidden_size_of(i) for i in layers}
        if len(hidden_sizes) > 1:
            raise ValueError(
                f"shared PHM weights (shared_phm_rule/shared_W_phm) need one hidden size in all layers, but this "
                f"model's layers have sizes {sorted(hidden_sizes)}; use leave_out to keep one tower, or "
                "shared_phm_rule=False and shared_W_phm=False"
            )
        sizes = {max(1, int(target.hidden_size_of(i) // config.reduction_factor_for(i))) for i in layers}
        if config.shared_W_phm and len(sizes) > 1:
            raise ValueError(
                f"BnConfig.shared_W_phm=True needs one bottleneck size in all layers, but reduction_factor="
                f"{config.reduction_factor!r} gives sizes {sorted(sizes)}; use one reduction factor or "
                "shared_W_phm=False"
            )
        if generator is not None:
            generator.manual_seed(config.init_weights_seed)
        ref = next(target.layers[layers[0]].parameters())
        shared = SharedPHMParameters(hidden_sizes.pop(), min(sizes), config, generator).to(ref.device, ref.dtype)
        set_shared(target, adapter_name, shared)
        return shared

    def shared_modules(self, target: ModelTarget, adapter_name: str) -> list[nn.Module]:
        """The adapter's `SharedPHMParameters` (``base_model.shared_parameters[adapter_name]``), if any."""
        shared = get_shared(target, adapter_name)
        return [shared] if isinstance(shared, SharedPHMParameters) else []

    def _ensure_hooks(self, target: ModelTarget, idx: int, host: nn.Module, block: Any, location: str) -> None:
        if getattr(host, _HANDLES, None):
            return
        norm = target.layer_module(idx, block.layer_norm) if block.layer_norm else None
        stack = target.stack(idx)
        parallel = _parallel_block(target, idx, block)
        site = _Site(
            host=host,
            layer_norm=norm,
            layer_idx=idx,
            location=location,
            adapter_norm=target.layer_module(idx, block.adapter_norm) if block.adapter_norm else None,
            parallel=parallel is not None,
        )
        # without a residual_input, a pre-hook on the output module records "no residual" (None)
        residual_module = target.layer_module(idx, block.residual_input or block.output)
        capture = _capture_residual if block.residual_input else _no_residual
        output_module = target.layer_module(idx, block.output)
        # a sub-block another one runs parallel to applies its adapters before that one reads its output
        is_parallel_source = any(
            other is not None and _parallel_block(target, idx, other) is block
            for other in (stack.sub_block(name) for name in BLOCK_NAMES)
        )
        handles = [
            residual_module.register_forward_pre_hook(partial(capture, site), with_kwargs=True),
            output_module.register_forward_hook(partial(_apply_adapters, site), prepend=is_parallel_source),
        ]
        if parallel is not None:
            parallel_output = target.layer_module(idx, parallel.output)
            handles.append(parallel_output.register_forward_hook(partial(_capture_parallel, site)))
        if norm is not None:
            handles.append(norm.register_forward_pre_hook(partial(_apply_before_norm, site)))
        object.__setattr__(host, _HANDLES, handles)
        object.__setattr__(host, _SITE, site)

    def delete(self, target: ModelTarget, adapter_name: str) -> None:
        """Remove ``adapter_name`` everywhere, with the AdapterFusion layers that fuse it."""
        invertible.delete(target, adapter_name)
        if isinstance(get_shared(target, adapter_name), SharedPHMParameters):
            delete_shared(target, adapter_name)
        for host in self._hosts(target):
            if adapter_name in host.adapters:
                del host.adapters[adapter_name]
            site = getattr(host, _SITE, None)
            if site is not None:
                _keep_norm_for(site, adapter_name)
            fusions = getattr(host, FUSION_ATTRIBUTE, None)
            if fusions is not None:
                for fusion_name in [n for n, f in fusions.items() if adapter_name in f.adapter_names]:
                    del fusions[fusion_name]
            if len(host.adapters) == 0:
                for handle in getattr(host, _HANDLES, []):
                    handle.remove()
                object.__setattr__(host, _HANDLES, [])

    def modules(self, target: ModelTarget, adapter_name: str) -> LayerModules:
        found: LayerModules = {}
        for idx, location, host in bottleneck_sites(target):
            if adapter_name in host.adapters:
                found.setdefault(idx, {})[location] = host.adapters[adapter_name]
        found.update(invertible.modules(target, adapter_name))
        return found

    def _hosts(self, target: ModelTarget) -> list[nn.Module]:
        return [host for _, _, host in bottleneck_sites(target)]


def _parallel_block(target: ModelTarget, idx: int, block: SubBlock) -> SubBlock | None:
    """The sub-block of layer ``idx`` that ``block`` runs parallel to (`SubBlock.parallel_to`), if it does in
    this model (`SubBlock.parallel_if`).

    Raises:
        ValueError: if the stack has no such sub-block.
    """
    if block.parallel_to is None:
        return None
    if block.parallel_if is not None and not getattr(target.stack_config(idx), block.parallel_if):
        return None
    other = target.stack(idx).sub_block(block.parallel_to)
    if other is None:
        raise ValueError(
            f"sub-block {block.output!r} of {target.spec.model_type!r} runs parallel to {block.parallel_to!r}, "
            "which this layer stack does not have"
        )
    return other


def bottleneck_sites(target: ModelTarget) -> Iterator[tuple[int, str, nn.Module]]:
    """(layer index, location key, host) of every bottleneck location whose host has an ``adapters`` dict."""
    for idx, layer in enumerate(target.layers):
        for location, block_name in LOCATIONS.items():
            block = target.stack(idx).sub_block(block_name)
            host = _find_host(layer, block.adapter_host) if block is not None else None
            if host is not None and hasattr(host, "adapters"):
                yield idx, location, host


def _find_host(layer: nn.Module, path: str) -> nn.Module | None:
    try:
        return layer.get_submodule(path)
    except AttributeError:
        return None


register_method(BottleneckMethod())
