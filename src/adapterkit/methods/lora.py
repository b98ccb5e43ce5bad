"""LoRA (Hu et al., 2021, https://arxiv.org/abs/2106.09685) and (IA)^3 (Liu et al., 2022).

For a projection ``y = W x + b`` each active adapter updates the output in turn:

    LoRA:    y <- y + (alpha / r) * B A dropout(x)
    (IA)^3:  y <- y * (alpha * l)                        (l = lora_B)

so a Stack of LoRA adapters sums their updates (all on the same input ``x``). Each adapted
projection keeps its module and weights; a ``loras`` ModuleDict is added to it (AdapterHub's key
names) and one forward hook adds the terms. A fused q/k/v projection (GPT-2's ``c_attn``) gets a
grouped update: ``A`` stacks one ``r x in`` block and ``B`` one ``d x r`` block per enabled matrix.

Merging folds an adapter into ``W`` (and ``b`` for (IA)^3); the original tensors are kept so
`reset` restores them bit for bit.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from ..configs import LoRAConfig
from ..context import ForwardContext, RowGroups
from ..integration.target import ModelTarget
from .base import AdapterMethod, LayerModules, active_in_order, composed_here, register_method
from .compose import Composer, SiteState, run_setup

_QKV = ("q", "k", "v")
_STATE = "_adapterkit_lora"  # per-projection state: layer index, hook handle, merged adapter, backup


class _LoRABase(nn.Module):
    """Shared shape bookkeeping: which output slices of the projection this adapter touches."""

    def __init__(self, out_per_group: int, matrices: tuple[str, ...] | None, config: LoRAConfig):
        super().__init__()
        self.config = config
        self.out_per_group = out_per_group
        self.matrices = matrices  # None: the whole output of a plain projection
        self.groups = len(matrices) if matrices else 1
        self.dtype = getattr(torch, config.dtype) if config.dtype else None

    def _place(self, values: torch.Tensor, fill: float) -> torch.Tensor:
        """Scatter per-group values (last dim ``groups * d``) into the fused q/k/v output layout."""
        if self.matrices is None:
            return values
        parts = values.split(self.out_per_group, dim=-1)
        by_name = dict(zip(self.matrices, parts, strict=False))
        filler = values.new_full((*values.shape[:-1], self.out_per_group), fill)
        return torch.cat([by_name.get(m, filler) for m in _QKV], dim=-1)

    def _gate(self, x: torch.Tensor) -> torch.Tensor:
        """Per-sample gate in (0, 1), one per group, expanded over each group's outputs."""
        gate = torch.sigmoid(self.gate(x)).mean(dim=1, keepdim=True)  # (batch, 1, groups)
        return gate.repeat_interleave(self.out_per_group, dim=-1)


class LoRA(_LoRABase):
    """A low-rank update ``(alpha / r) * B A x`` (or gated: ``gate(x) * B A x``).

    Args:
        in_features: projection input size.
        out_per_group: output size of one q/k/v matrix (fused) or of the whole projection.
        matrices: the enabled q/k/v matrices of a fused projection, or None.
        config: the adapter's config.
        generator: random source for initialisation.
    """

    def __init__(
        self,
        in_features: int,
        out_per_group: int,
        matrices: tuple[str, ...] | None,
        config: LoRAConfig,
        generator: torch.Generator | None,
    ):
        super().__init__(out_per_group, matrices, config)
        r = config.r
        self.lora_A = nn.Parameter(torch.zeros(r * self.groups, in_features, dtype=self.dtype))
        self.lora_B = nn.Parameter(torch.zeros(out_per_group * self.groups, r, dtype=self.dtype))
        self.scaling = config.alpha / r
        self.lora_dropout = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()
        if config.use_gating:
            self.gate = nn.Linear(in_features, self.groups)
        with torch.no_grad():
            if config.init_weights == "lora":
                nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5), generator=generator)
            elif config.init_weights == "bert":
                nn.init.normal_(self.lora_A, std=0.02, generator=generator)
                nn.init.normal_(self.lora_B, std=0.02, generator=generator)
            elif config.init_weights == "ia3":
                nn.init.ones_(self.lora_A)
                nn.init.ones_(self.lora_B)
            else:  # vera
                nn.init.kaiming_uniform_(self.lora_A, generator=generator)
                nn.init.kaiming_uniform_(self.lora_B, generator=generator)
            if config.use_gating:
                nn.init.normal_(self.gate.weight, std=0.02, generator=generator)

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        """The update added to the projection output for input ``x``."""
        h = self.lora_dropout(x.to(self.lora_A.dtype)) @ self.lora_A.t()
        if self.groups == 1:
            h = h @ self.lora_B.t()
        else:
            h = h.unflatten(-1, (self.groups, -1))  # (..., groups, r)
            b = self.lora_B.view(self.groups, self.out_per_group, -1)  # (groups, d, r)
            h = torch.einsum("...gr,gdr->...gd", h, b).flatten(-2)
        h = h * (self._gate(x) if self.config.use_gating else self.scaling)
        return self._place(h, 0.0).to(x.dtype)

    def delta_weight(self) -> torch.Tensor:
        """``(alpha / r) * B A`` as an ``(out, in)`` matrix in the projection's output layout."""
        if self.config.use_gating:
            raise ValueError(
                "a gated LoRA adapter depends on its input and cannot be merged (use_gating=True)"
            )
        a = self.lora_A.view(self.groups, -1, self.lora_A.shape[-1])  # (groups, r, in)
        b = self.lora_B.view(self.groups, self.out_per_group, -1)  # (groups, d, r)
        w = torch.bmm(b, a).flatten(0, 1) * self.scaling  # (groups * d, in)
        return self._place(w.t(), 0.0).t()


class IA3(_LoRABase):
    """A learned rescaling ``alpha * l`` of the projection output (``l = lora_B``, ones at start).

    Args: as `LoRA`.
    """

    def __init__(
        self,
        in_features: int,
        out_per_group: int,
        matrices: tuple[str, ...] | None,
        config: LoRAConfig,
        generator: torch.Generator | None,
    ):
        super().__init__(out_per_group, matrices, config)
        self.lora_B = nn.Parameter(torch.zeros(out_per_group * self.groups, 1, dtype=self.dtype))
        self.scaling = config.alpha
        if config.use_gating:
            self.gate = nn.Linear(in_features, self.groups)
        with torch.no_grad():
            if config.init_weights == "bert":
                nn.init.normal_(self.lora_B, std=0.02, generator=generator)
            elif config.init_weights == "lora":
                nn.init.zeros_(self.lora_B)
            else:
                nn.init.ones_(self.lora_B)
            if config.use_gating:
                nn.init.normal_(self.gate.weight, std=0.02, generator=generator)

    def factor(self, x: torch.Tensor) -> torch.Tensor:
        """The factor the projection output is multiplied by for input ``x``."""
        l_vec = self.lora_B.view(-1).to(x.dtype)
        f = l_vec * (self._gate(x) if self.config.use_gating else self.scaling)
        return self._place(f, 1.0)

    def factor_vector(self) -> torch.Tensor:
        """The input-independent factor, for merging."""
        if self.config.use_gating:
            raise ValueError(
                "a gated (IA)^3 adapter depends on its input and cannot be merged (use_gating=True)"
            )
        return self._place(self.lora_B.view(-1) * self.scaling, 1.0)


def _shape(module: nn.Module) -> tuple[int, int]:
    """(in_features, out_features) of an ``nn.Linear`` or a transformers ``Conv1D``."""
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    if isinstance(module, Conv1D):
        return module.weight.shape[0], module.weight.shape[1]
    raise ValueError(f"LoRA can adapt nn.Linear or Conv1D projections, not {type(module).__name__}")


def _lora_hook(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor | None:
    state = module.__dict__[_STATE]
    loras = module.loras
    ctx = ForwardContext.get_context()
    names = active_in_order(ctx, loras, state["layer_idx"])
    if names:
        y = output
        for name in names:
            if name != state["merged"]:  # a merged adapter is in the weight already
                y = _apply(loras[name], args[0], y)
        return y
    if composed_here(ctx, loras, state["layer_idx"]):
        if state["merged"] is not None:
            raise RuntimeError(
                f"adapter {state['merged']!r} is merged into the weights, which applies it to every row; "
                "call reset_adapter() before running a composed or per-row setup"
            )
        return run_setup(ctx, LoRAState(args[0], output), _LoRAComposer(loras)).y  # type: ignore[arg-type]
    return None


def _apply(lora: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """One LoRA (``y + delta(x)``) or (IA)^3 (``y * factor(x)``) adapter on projection output ``y``."""
    return y * lora.factor(x) if isinstance(lora, IA3) else y + lora.delta(x)


@dataclass
class LoRAState(SiteState):
    """A projection's input ``x`` and its (updated) output ``y``."""

    x: torch.Tensor
    y: torch.Tensor

    @property
    def batch_size(self) -> int:
        return self.y.shape[0]

    @property
    def seq_len(self) -> int:
        return self.y.shape[1]

    def rows(self, index: slice | torch.Tensor) -> LoRAState:
        return LoRAState(self.x[index], self.y[index])

    def tokens(self, index: slice) -> LoRAState:
        return LoRAState(self.x[:, index], self.y[:, index])

    @classmethod
    def cat(cls, states: Sequence[LoRAState], dim: int) -> LoRAState:
        return LoRAState(torch.cat([s.x for s in states], dim), torch.cat([s.y for s in states], dim))

    @classmethod
    def weighted_sum(cls, states: Sequence[LoRAState], weights: Sequence[float], start: LoRAState) -> LoRAState:
        """``y + sum_i w_i (y_i - y)``: the updates are weighted, the base output ``W x + b`` is kept
        (the plain mean of the outputs when the weights sum to 1; AdapterHub weights the updates too)."""
        y = start.y
        return LoRAState(start.x, y + sum(w * (s.y - y) for w, s in zip(weights, states, strict=True)))  # type: ignore[arg-type]


class _LoRAComposer(Composer[LoRAState]):
    def __init__(self, loras: nn.ModuleDict):
        self.present = loras

    def single(self, name: str, state: LoRAState) -> LoRAState:
        return LoRAState(state.x, _apply(self.present[name], state.x, state.y))

    def route(self, groups: RowGroups, state: LoRAState) -> LoRAState | None:
        """Rows of plain LoRA adapters get their update added in place (no copies of the output);
        other targets use the generic routing."""
        loras = [self.present[t] if isinstance(t, str) and t in self.present else None for t in groups.targets]
        if any(isinstance(lora, IA3) for lora in loras) or any(
            t is not None and not isinstance(t, str) for t in groups.targets
        ):
            return None
        y = state.y
        if torch.is_grad_enabled() and not y.requires_grad:
            # y may be a view of a tensor autograd does not track; writing updates that need gradients
            # into it in place is not allowed, into a copy it is
            y = y.clone()
        for i, lora in enumerate(loras):
            if lora is None:
                continue
            if groups.contiguous is not None:
                rows = slice(groups.contiguous[i], groups.contiguous[i + 1])
                y[rows] += lora.delta(state.x[rows])
            else:
                idx = groups.rows[i]
                y.index_add_(0, idx, lora.delta(state.x.index_select(0, idx)))
        return LoRAState(state.x, y)


class LoRAMethod(AdapterMethod):
    """Registers LoRA and (IA)^3 (`LoRAConfig`) on the table's attention and FFN projections."""

    name = "lora"
    config_class = LoRAConfig
    module_attribute = "loras"

    def _targets(
        self, target: ModelTarget, config: LoRAConfig
    ) -> list[tuple[str, str, tuple[str, ...] | None]]:
        """(location key, path, fused matrices) for each projection this config adapts."""
        spec = target.spec
        found: list[tuple[str, str, tuple[str, ...] | None]] = []
        if config.selfattn_lora:
            if spec.fused_qkv:
                matrices = tuple(m for m in _QKV if m in config.attn_matrices)
                if matrices:
                    found.append(("selfattn_lora", spec.fused_qkv, matrices))
            else:
                found += [
                    ("selfattn_lora", spec.attn_projections[m], None)
                    for m in _QKV
                    if m in config.attn_matrices
                ]
        if config.intermediate_lora:
            found.append(("intermediate_lora", spec.ffn_intermediate, None))
        if config.output_lora:
            found.append(("output_lora", spec.ffn_output, None))
        return found

    def add(self, target: ModelTarget, adapter_name: str, config: LoRAConfig) -> LayerModules:  # type: ignore[override]
        generator = None
        if config.init_weights_seed is not None:
            generator = torch.Generator().manual_seed(config.init_weights_seed)
        module_cls = IA3 if config.composition_mode == "scale" else LoRA
        created: LayerModules = {}
        for idx in range(len(target.layers)):
            if idx in config.leave_out:
                continue
            for location, path, matrices in self._targets(target, config):
                proj = target.layer_module(idx, path)
                in_features, out_features = _shape(proj)
                out_per_group = out_features // 3 if matrices else out_features
                if generator is not None:
                    generator.manual_seed(config.init_weights_seed)
                lora = module_cls(in_features, out_per_group, matrices, config, generator)
                lora = lora.to(device=proj.weight.device, dtype=lora.dtype or proj.weight.dtype)
                lora.train(proj.training)
                if not hasattr(proj, "loras"):
                    proj.loras = nn.ModuleDict()
                proj.loras[adapter_name] = lora
                if _STATE not in proj.__dict__:
                    handle = proj.register_forward_hook(_lora_hook)
                    proj.__dict__[_STATE] = {
                        "layer_idx": idx,
                        "handle": handle,
                        "merged": None,
                        "backup": None,
                    }
                _add_module(created, idx, location, lora)
        return created

    def _projections(self, target: ModelTarget) -> list[nn.Module]:
        return [m for layer in target.layers for m in layer.modules() if _STATE in m.__dict__]

    def delete(self, target: ModelTarget, adapter_name: str) -> None:
        for proj in self._projections(target):
            state = proj.__dict__[_STATE]
            if adapter_name not in proj.loras:
                continue
            if state["merged"] == adapter_name:
                _unmerge(proj)
            del proj.loras[adapter_name]
            if len(proj.loras) == 0:
                state["handle"].remove()
                del proj.__dict__[_STATE]
                del proj.loras

    def modules(self, target: ModelTarget, adapter_name: str) -> LayerModules:
        found: LayerModules = {}
        for idx in range(len(target.layers)):
            for location, path in self._all_locations(target):
                proj = target.layer_module(idx, path)
                if adapter_name in getattr(proj, "loras", {}):
                    _add_module(found, idx, location, proj.loras[adapter_name])
        return found

    def _all_locations(self, target: ModelTarget) -> list[tuple[str, str]]:
        spec = target.spec
        attn = [spec.fused_qkv] if spec.fused_qkv else [spec.attn_projections[m] for m in _QKV]
        return [("selfattn_lora", p) for p in attn] + [
            ("intermediate_lora", spec.ffn_intermediate),
            ("output_lora", spec.ffn_output),
        ]

    def merge(self, target: ModelTarget, adapter_name: str) -> None:
        for proj in self._projections(target):
            state = proj.__dict__[_STATE]
            if adapter_name not in proj.loras or state["merged"] == adapter_name:
                continue
            if state["merged"] is not None:
                raise ValueError(
                    f"cannot merge {adapter_name!r}: adapter {state['merged']!r} is already merged into this "
                    "projection; call reset_adapter() first"
                )
            _merge(proj, adapter_name)

    def reset(self, target: ModelTarget) -> None:
        for proj in self._projections(target):
            if proj.__dict__[_STATE]["merged"] is not None:
                _unmerge(proj)


def _add_module(found: LayerModules, idx: int, location: str, module: nn.Module) -> None:
    """Record ``module``; several modules at one location become an ``nn.ModuleList`` (as in AdapterHub)."""
    slot = found.setdefault(idx, {})
    if location not in slot:
        slot[location] = module
    elif isinstance(slot[location], nn.ModuleList):
        slot[location].append(module)
    else:
        slot[location] = nn.ModuleList([slot[location], module])


def _merge(proj: nn.Module, name: str) -> None:
    lora = proj.loras[name]
    state: dict[str, Any] = proj.__dict__[_STATE]
    transposed = isinstance(proj, Conv1D)  # Conv1D stores (in, out)
    with torch.no_grad():
        state["backup"] = (
            proj.weight.detach().clone(),
            None if proj.bias is None else proj.bias.detach().clone(),
        )
        if isinstance(lora, IA3):
            f = lora.factor_vector().to(proj.weight.dtype)
            proj.weight.mul_(f if transposed else f[:, None])
            if proj.bias is not None:
                proj.bias.mul_(f)
        else:
            dw = lora.delta_weight().to(proj.weight.dtype)
            proj.weight.add_(dw.t() if transposed else dw)
    state["merged"] = name


def _unmerge(proj: nn.Module) -> None:
    state: dict[str, Any] = proj.__dict__[_STATE]
    weight, bias = state["backup"]
    with torch.no_grad():
        proj.weight.copy_(weight)
        if bias is not None:
            proj.bias.copy_(bias)
    state["merged"] = None
    state["backup"] = None


register_method(LoRAMethod())
