"""The LoRA family on linear projections: LoRA (Hu et al., 2021, https://arxiv.org/abs/2106.09685),
(IA)^3 (Liu et al., 2022), DoRA (Liu et al., 2024), VeRA (Kopiczko et al., 2024), DvoRA (VeRA + DoRA)
and MTL-LoRA (Yang et al., 2024).

For a projection ``y = W x + b`` each active adapter updates the output in turn (``s = alpha / r``, or
a learned gate with ``use_gating``; ``x`` after the adapter's dropout):

    LoRA:      y <- y + s * dW x              dW = B A
    VeRA:      y <- y + s * dW x              dW = diag(b) B_s diag(d) A_s   (A_s, B_s frozen, shared)
    MTL-LoRA:  y <- y + s * dW x              dW = sum_k p_k B_k L^T A       (p = softmax(w / sharpness))
    DoRA:      y <- m / ||W + dW||_row * (y + s * dW x)   (dW from LoRA or VeRA; the norm is of the
                                                           unscaled dW, bias included, as in AdapterHub)
    (IA)^3:    y <- y * (alpha * l)           (l = lora_B)

so a Stack of additive adapters sums their updates (all on the same input ``x``). DoRA and (IA)^3
rescale the output; a DoRA adapter must be the first adapter at its projection (checked when a
setup is activated), adapters after it act on its output as if it were merged. Each adapted
projection keeps its module and weights; a ``loras`` ModuleDict is added to it (AdapterHub's key
names) and one forward hook applies the adapters. VeRA's shared ``A_s``, ``B_s`` live once per adapter
in ``base_model.shared_parameters[name]`` (AdapterHub's keys). A fused q/k/v projection (GPT-2's
``c_attn``) gets a grouped update: ``A`` stacks one ``r x in`` block and ``B`` one ``d x r`` block per
enabled matrix (VeRA: one ``d`` and ``b`` vector per matrix; DoRA: one magnitude per output row).

Merging folds an adapter into ``W`` (and ``b`` for (IA)^3 and DoRA); the original tensors are kept so
`reset` restores them bit for bit.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from ..composition import AdapterCompositionBlock, Stack
from ..configs import AdapterConfig, LoRAConfig, MTLLoRAConfig, MultiTaskConfig
from ..context import ForwardContext, RowGroups
from ..integration.spec import LayerStack
from ..integration.target import ModelTarget
from .base import (
    AdapterMethod,
    LayerModules,
    active_in_order,
    average_modules,
    check_strategy,
    composed_here,
    register_method,
)
from .compose import Composer, SiteState, run_setup
from .gating import GatingKey, store_gating_score

_QKV = ("q", "k", "v")
_STATE = "_adapterkit_lora"  # per-projection state: layer index, hook handle, merged adapter, backup, shares
_SHARED = "shared_parameters"  # base-model ModuleDict of per-adapter shared tensors (VeRA's A and B)


class FusedMatrices(tuple):
    """The q/k/v matrices an adapter enables on a fused projection (a tuple of ``"q"``, ``"k"``, ``"v"``), with
    the projection's output layout: ``heads`` None for ``[all q | all k | all v]`` (GPT-2), else the number of
    attention heads whose ``[q_h | k_h | v_h]`` blocks follow each other (DeBERTa's ``in_proj``); ``sizes``: the
    output sizes of the q, k and v parts where they differ (grouped-query attention: Phi-3's ``qkv_proj``),
    None for equal thirds."""

    heads: int | None
    sizes: tuple[int, int, int] | None

    def __new__(
        cls, names: tuple[str, ...], heads: int | None = None, sizes: tuple[int, int, int] | None = None
    ) -> FusedMatrices:
        obj = super().__new__(cls, names)
        obj.heads = heads
        obj.sizes = sizes
        return obj

    def to_grouped(self, values: torch.Tensor, dim: int) -> torch.Tensor:
        """``values`` (the projection's ``3 * d`` outputs along ``dim``) reordered to ``[q | k | v]``."""
        if self.heads is None:
            return values
        dim = dim % values.dim()
        per_head = values.unflatten(dim, (self.heads, 3, -1))
        return per_head.transpose(dim, dim + 1).flatten(dim, dim + 2)

    def to_projection(self, values: torch.Tensor) -> torch.Tensor:
        """``values`` in ``[q | k | v]`` order along the last dim, reordered to the projection's output layout."""
        if self.heads is None:
            return values
        grouped = values.unflatten(-1, (3, self.heads, -1))
        return grouped.transpose(-3, -2).flatten(-3)


class _LoRABase(nn.Module):
    """Shared shape bookkeeping: which output slices of the projection this adapter touches."""

    gating_key: GatingKey | None = None
    """(adapter, layer, location) under which `_gate` reports its gate (set by `LoRAMethod.add`)."""

    def __init__(self, out_per_group: int, matrices: tuple[str, ...] | None, config: LoRAConfig):
        super().__init__()
        self.config = config
        self.out_per_group = out_per_group
        self.matrices = matrices  # None: the whole output of a plain projection
        self.groups = len(matrices) if matrices else 1
        sizes = getattr(matrices, "sizes", None) or (out_per_group,) * 3
        self.part_sizes = dict(zip(_QKV, sizes, strict=True))  # output size of each q/k/v part (fused)
        self.group_sizes = [self.part_sizes[m] for m in matrices] if matrices else [out_per_group]
        self.uniform = len(set(self.group_sizes)) == 1  # every group has out_per_group outputs
        self.dtype = getattr(torch, config.dtype) if config.dtype else None
        self.is_dora = bool(config.use_dora)

    @property
    def additive(self) -> bool:
        """Whether the adapter only adds an update to the output (LoRA, VeRA, MTL-LoRA), so the updates of
        several adapters add up; False for DoRA and (IA)^3, which rescale the output."""
        return not self.is_dora

    def _rows(self, weight: torch.Tensor) -> torch.Tensor:
        """The rows of an ``(out, in)`` projection weight that this adapter's groups cover."""
        if self.matrices is None:
            return weight
        weight = _grouped(self.matrices, weight, dim=0)
        start = {"q": 0, "k": self.part_sizes["q"], "v": self.part_sizes["q"] + self.part_sizes["k"]}
        return torch.cat([weight.narrow(0, start[m], self.part_sizes[m]) for m in self.matrices])

    def _place(self, values: torch.Tensor, fill: float) -> torch.Tensor:
        """Scatter per-group values (last dim ``groups * d``) into the fused q/k/v output layout."""
        if self.matrices is None:
            return values
        parts = values.split(self.group_sizes, dim=-1)
        by_name = dict(zip(self.matrices, parts, strict=False))
        placed = torch.cat(
            [
                by_name[m] if m in by_name else values.new_full((*values.shape[:-1], self.part_sizes[m]), fill)
                for m in _QKV
            ],
            dim=-1,
        )
        return self.matrices.to_projection(placed) if isinstance(self.matrices, FusedMatrices) else placed

    def _gate(self, x: torch.Tensor) -> torch.Tensor:
        """Per-sample gate in (0, 1), one per group, expanded over each group's outputs."""
        gate = torch.sigmoid(self.gate(x)).mean(dim=1, keepdim=True)  # (batch, 1, groups)
        store_gating_score(self.gating_key, gate)
        if self.uniform:
            return gate.repeat_interleave(self.out_per_group, dim=-1)
        return gate.repeat_interleave(torch.tensor(self.group_sizes, device=gate.device), dim=-1)


class _Magnitude(nn.Module):
    """DoRA's magnitude vector, stored as AdapterHub's ``m.weight`` of shape ``(out, 1)``."""

    def __init__(self, norms: torch.Tensor):
        super().__init__()
        self.weight = nn.Parameter(norms.reshape(-1, 1))


class _LowRank(_LoRABase, ABC):
    """The additive members of the family (LoRA, VeRA, MTL-LoRA): scaling or gate, input dropout and,
    with ``use_dora``, DoRA's magnitude. Subclasses give the unscaled update ``dW`` in the grouped layout
    (`_update`: ``dW x``; `_update_weight`: ``dW``)."""

    def __init__(self, out_per_group: int, matrices: tuple[str, ...] | None, config: LoRAConfig):
        super().__init__(out_per_group, matrices, config)
        self.scaling = config.alpha / config.r
        self.lora_dropout = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()

    def _finish(
        self,
        in_features: int,
        config: LoRAConfig,
        generator: torch.Generator | None,
        base_weight: torch.Tensor | None,
    ) -> None:
        """Add DoRA's magnitude (the row norms of ``base_weight``, the ``(out, in)`` projection weight)
        and the gate, after the update's own parameters (AdapterHub's order)."""
        if config.use_dora:
            if base_weight is None:
                raise ValueError("a DoRA adapter needs the projection weight to initialise its magnitude")
            rows = self._rows(base_weight.detach())
            dtype = self.dtype or torch.get_default_dtype()
            if rows.is_meta:  # a model being built for from_pretrained: the checkpoint holds m
                norms = torch.empty(rows.shape[0], dtype=dtype)
            else:
                norms = torch.linalg.norm(rows.float(), dim=1).to(device="cpu", dtype=dtype)
            self.m = _Magnitude(norms)
        if config.use_gating:
            self.gate = nn.Linear(in_features, self.groups)
            with torch.no_grad():
                nn.init.normal_(self.gate.weight, std=0.02, generator=generator)

    @property
    @abstractmethod
    def compute_dtype(self) -> torch.dtype:
        """The dtype of the adapter's tensors (inputs are cast to it)."""

    @abstractmethod
    def _update(self, x: torch.Tensor) -> torch.Tensor:
        """``dW x`` (unscaled) in the grouped layout, last dim ``groups * d``."""

    @abstractmethod
    def _update_weight(self) -> torch.Tensor:
        """``dW`` (unscaled), ``(groups * d, in)``."""

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        """The update ``s * dW dropout(x)`` (``s``: alpha / r or the gate) in the projection's output layout."""
        h = self._update(self.lora_dropout(x.to(self.compute_dtype)))
        h = h * (self._gate(x) if self.config.use_gating else self.scaling)
        return self._place(h, 0.0).to(x.dtype)

    def delta_weight(self) -> torch.Tensor:
        """``s * dW`` as an ``(out, in)`` matrix in the projection's output layout.

        Raises:
            ValueError: for a gated adapter (its update depends on the input).
        """
        if self.config.use_gating:
            raise ValueError(
                "a gated LoRA adapter depends on its input and cannot be merged (use_gating=True)"
            )
        return self._place((self._update_weight() * self.scaling).t(), 0.0).t()

    def dora_scale(self, weight: torch.Tensor) -> torch.Tensor:
        """DoRA's factor ``m / ||W + dW||`` per output row, for the projection's ``(out, in)`` weight ``W``
        (1 on rows the adapter does not cover). As in AdapterHub the norm is of the unscaled ``dW``."""
        direction = self._rows(weight).to(self.compute_dtype) + self._update_weight()
        norm = torch.linalg.norm(direction, dim=1, dtype=torch.float32)  # float32 even for half-precision models
        return self._place(self.m.weight.view(-1) / norm, 1.0)


class LoRA(_LowRank):
    """A low-rank update ``(alpha / r) * B A x`` (or gated: ``gate(x) * B A x``), DoRA with ``use_dora``.

    Args:
        in_features: projection input size.
        out_per_group: output size of one q/k/v matrix (fused) or of the whole projection.
        matrices: the enabled q/k/v matrices of a fused projection, or None.
        config: the adapter's config.
        generator: random source for initialisation.
        base_weight: the projection's ``(out, in)`` weight (needed for DoRA's magnitude).
    """

    def __init__(
        self,
        in_features: int,
        out_per_group: int,
        matrices: tuple[str, ...] | None,
        config: LoRAConfig,
        generator: torch.Generator | None,
        base_weight: torch.Tensor | None = None,
    ):
        super().__init__(out_per_group, matrices, config)
        r = config.r
        self.lora_A = nn.Parameter(torch.zeros(r * self.groups, in_features, dtype=self.dtype))
        self.lora_B = nn.Parameter(torch.zeros(sum(self.group_sizes), r, dtype=self.dtype))
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
        self._finish(in_features, config, generator, base_weight)

    @property
    def compute_dtype(self) -> torch.dtype:
        return self.lora_A.dtype

    def _update(self, x: torch.Tensor) -> torch.Tensor:
        h = x @ self.lora_A.t()
        if self.groups == 1:
            return h @ self.lora_B.t()
        h = h.unflatten(-1, (self.groups, -1))  # (..., groups, r)
        if not self.uniform:
            parts = zip(h.unbind(-2), self.lora_B.split(self.group_sizes), strict=True)
            return torch.cat([h_g @ b_g.t() for h_g, b_g in parts], dim=-1)
        b = self.lora_B.view(self.groups, self.out_per_group, -1)  # (groups, d, r)
        return torch.einsum("...gr,gdr->...gd", h, b).flatten(-2)

    def _update_weight(self) -> torch.Tensor:
        if not self.uniform:
            a_parts = self.lora_A.split(self.lora_A.shape[0] // self.groups)
            return torch.cat([b @ a for a, b in zip(a_parts, self.lora_B.split(self.group_sizes), strict=True)])
        a = self.lora_A.view(self.groups, -1, self.lora_A.shape[-1])  # (groups, r, in)
        b = self.lora_B.view(self.groups, self.out_per_group, -1)  # (groups, d, r)
        return torch.bmm(b, a).flatten(0, 1)


class _TaskSpecific(nn.Module):
    """MTL-LoRA's task-specific ``r x r`` matrix ``L``: ``diag(values)`` (``"singular_values"``, ones at
    start) or ``values`` itself (``"linear"``, the identity at start); applied as ``h @ L``."""

    def __init__(self, r: int, kind: str, dtype: torch.dtype | None):
        super().__init__()
        self.diagonal = kind == "singular_values"
        init = torch.ones(r, dtype=dtype) if self.diagonal else torch.eye(r, dtype=dtype)
        self.values = nn.Parameter(init)

    def apply_to(self, h: torch.Tensor) -> torch.Tensor:
        """``h @ L`` for ``h`` (..., r)."""
        return h * self.values if self.diagonal else h @ self.values

    def matrix(self) -> torch.Tensor:
        """``L``."""
        return torch.diag(self.values) if self.diagonal else self.values


class MTLLoRA(LoRA):
    """MTL-LoRA: ``dW = sum_k p_k B_k L^T A`` with ``p = softmax(weights / weights_sharpness)``.

    ``lora_B`` holds the ``n_up_projection`` up-projections ``(n, out, r)``; ``task_specific.values`` is
    ``L`` (see `_TaskSpecific`), ``weights`` the mixing logits. ``lora_A`` and ``lora_B`` are what
    ``model.share_parameters`` shares between tasks.

    Args: as `LoRA` (``config`` is an `MTLLoRAConfig`).

    Raises:
        ValueError: on a fused q/k/v projection (not supported).
    """

    def __init__(
        self,
        in_features: int,
        out_per_group: int,
        matrices: tuple[str, ...] | None,
        config: LoRAConfig,
        generator: torch.Generator | None,
        base_weight: torch.Tensor | None = None,
    ):
        if matrices is not None:
            raise ValueError(
                "MTL-LoRA cannot adapt a fused q/k/v projection (as in AdapterHub); use a model with separate "
                "q/k/v projections, or selfattn_lora=False with intermediate_lora/output_lora"
            )
        if not isinstance(config, MTLLoRAConfig):
            raise ValueError(f"MTLLoRA needs an MTLLoRAConfig, got {type(config).__name__}")
        super().__init__(in_features, out_per_group, matrices, config, generator, base_weight)
        self.lora_B = nn.Parameter(torch.zeros(config.n_up_projection, out_per_group, config.r, dtype=self.dtype))
        if config.init_weights == "bert":
            with torch.no_grad():
                nn.init.normal_(self.lora_B, std=0.02, generator=generator)
        self.task_specific = _TaskSpecific(config.r, config.task_specific_matrix_type, self.dtype)
        self.weights = nn.Parameter(torch.ones(config.n_up_projection, dtype=self.dtype))
        self.weights_sharpness = config.weights_sharpness

    def _mixed_up_projection(self) -> torch.Tensor:
        """``sum_k p_k B_k`` (out, r)."""
        p = torch.softmax(self.weights / self.weights_sharpness, dim=0).to(self.lora_B.dtype)
        return torch.einsum("k,kdr->dr", p, self.lora_B)

    def _update(self, x: torch.Tensor) -> torch.Tensor:
        return self.task_specific.apply_to(x @ self.lora_A.t()) @ self._mixed_up_projection().t()

    def _update_weight(self) -> torch.Tensor:
        return self._mixed_up_projection() @ self.task_specific.matrix().t() @ self.lora_A


class VeRA(_LowRank):
    """VeRA: ``dW = diag(vera_B) B_s diag(vera_D) A_s``; DvoRA with ``use_dora``.

    ``A_s`` (r x in_max) and ``B_s`` (out_max x r) are the adapter's frozen random matrices, shared by all
    its projections and held by the model (``base_model.shared_parameters[name]``); a projection uses
    their leading ``in`` columns / ``d`` rows (VeRA's rule for layers of different sizes). ``vera_D``
    (``groups * r``) and ``vera_B`` (``groups * d``) are the trainable vectors. An AdapterHub checkpoint
    whose ``vera_D`` / ``vera_B`` are dense matrices (AdapterHub trains full ``r x r`` and ``out x out``
    matrices) switches the module to that form (`use_dense`), which reproduces its outputs.

    Args: as `LoRA`, plus ``shared``: the adapter's ParameterDict with ``lora_A`` and ``lora_B``.

    Raises:
        ValueError: without ``shared``.
    """

    def __init__(
        self,
        in_features: int,
        out_per_group: int,
        matrices: tuple[str, ...] | None,
        config: LoRAConfig,
        generator: torch.Generator | None,
        base_weight: torch.Tensor | None = None,
        shared: nn.ParameterDict | None = None,
    ):
        super().__init__(out_per_group, matrices, config)
        if shared is None:
            raise ValueError("a VeRA adapter needs its shared A and B (the shared ParameterDict)")
        self.in_features = in_features
        object.__setattr__(self, "shared", shared)  # not a submodule: the model holds it once per adapter
        self.vera_D = nn.Parameter(torch.full((self.groups * config.r,), float(config.vera_d), dtype=self.dtype))
        self.vera_B = nn.Parameter(torch.full((sum(self.group_sizes),), float(config.vera_b), dtype=self.dtype))
        self._finish(in_features, config, generator, base_weight)

    @property
    def compute_dtype(self) -> torch.dtype:
        return self.vera_D.dtype

    def _shared(self) -> tuple[torch.Tensor, torch.Tensor]:
        a = self.shared["lora_A"][:, : self.in_features]
        b = self.shared["lora_B"][: max(self.group_sizes)]
        return a.to(self.vera_D), b.to(self.vera_D)

    def _per_group_up(self, h: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """``h`` (..., groups, r) times each group's leading rows of the shared ``b``, flattened to (..., sum d)."""
        if self.uniform:
            return (h @ b.t()).flatten(-2)
        return torch.cat([h_g @ b[:d].t() for h_g, d in zip(h.unbind(-2), self.group_sizes, strict=True)], -1)

    def use_dense(self, key: str) -> None:
        """Hold ``key`` (``"vera_D"`` or ``"vera_B"``) as a full matrix (AdapterHub's form), keeping its values.

        Raises:
            ValueError: for another key, or on a fused q/k/v projection (AdapterHub has no such form there).
        """
        if key not in ("vera_D", "vera_B"):
            raise ValueError(f"use_dense takes 'vera_D' or 'vera_B', not {key!r}")
        if self.groups != 1:
            raise ValueError("VeRA on a fused q/k/v projection keeps vera_D and vera_B as vectors")
        current = getattr(self, key)
        if current.dim() == 1:
            setattr(self, key, nn.Parameter(torch.diag(current.detach()), requires_grad=current.requires_grad))

    def _update(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self._shared()
        h = x @ a.t()  # (..., r)
        if self.vera_D.dim() == 1:
            h = h.unsqueeze(-2) * self.vera_D.view(self.groups, -1)  # (..., groups, r)
        else:
            h = (h @ self.vera_D.t()).unsqueeze(-2)
        h = self._per_group_up(h, b)  # (..., groups * d)
        return h * self.vera_B if self.vera_B.dim() == 1 else h @ self.vera_B.t()

    def _update_weight(self) -> torch.Tensor:
        a, b = self._shared()
        if self.vera_D.dim() == 1:
            da = self.vera_D.view(self.groups, -1, 1) * a  # (groups, r, in)
        else:
            da = (self.vera_D @ a).unsqueeze(0)
        if self.uniform:
            w = torch.matmul(b, da).flatten(0, 1)  # (groups * d, in)
        else:
            w = torch.cat([b[:d] @ da_g for da_g, d in zip(da.unbind(0), self.group_sizes, strict=True)])
        return self.vera_B[:, None] * w if self.vera_B.dim() == 1 else self.vera_B @ w


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
        self.lora_B = nn.Parameter(torch.zeros(sum(self.group_sizes), 1, dtype=self.dtype))
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

    @property
    def additive(self) -> bool:
        return False

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


def _per_head(target: ModelTarget, idx: int) -> int | None:
    """The attention heads of layer ``idx``'s fused q/k/v projection if its outputs are ordered per head."""
    if target.stack(idx).fused_qkv_layout != "per_head":
        return None
    return int(target.stack_config(idx).num_attention_heads)


def _with_sizes(
    target: ModelTarget, idx: int, matrices: tuple[str, ...] | None, proj: nn.Module
) -> tuple[str, ...] | None:
    """``matrices`` of a fused q/k/v projection of layer ``idx`` with the sizes of its q, k and v parts where they
    differ: with grouped-query attention (``num_key_value_heads`` < ``num_attention_heads`` in the layer's config)
    k and v have ``num_key_value_heads`` heads, q ``num_attention_heads``.

    Raises:
        ValueError: if the projection's output size does not split that way, or its outputs are ordered per head.
    """
    if not isinstance(matrices, FusedMatrices):
        return matrices
    config = target.stack_config(idx)
    heads = getattr(config, "num_attention_heads", None)
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    out_features = _shape(proj)[1]
    if not heads or kv_heads == heads:
        if out_features % 3:
            raise ValueError(f"a fused q/k/v projection needs an output size divisible by 3, got {out_features}")
        return matrices
    unit, rest = divmod(out_features, heads + 2 * kv_heads)
    if rest or matrices.heads is not None:
        raise ValueError(
            f"cannot split the fused q/k/v projection of layer {idx} ({out_features} outputs, "
            f"{'ordered per head, ' if matrices.heads is not None else ''}{heads} query heads, {kv_heads} key/value "
            "heads) into q, k and v for LoRA; adapt it with selfattn_lora=False"
        )
    return FusedMatrices(tuple(matrices), matrices.heads, (heads * unit, kv_heads * unit, kv_heads * unit))


def _grouped(matrices: tuple[str, ...], values: torch.Tensor, dim: int) -> torch.Tensor:
    """A fused projection's outputs along ``dim`` in ``[q | k | v]`` order (see `FusedMatrices`)."""
    return matrices.to_grouped(values, dim) if isinstance(matrices, FusedMatrices) else values


def _weight_oi(proj: nn.Module) -> torch.Tensor:
    """The projection weight as ``(out, in)`` (a ``Conv1D`` stores ``(in, out)``)."""
    return proj.weight.t() if isinstance(proj, Conv1D) else proj.weight


def _lora_hook(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor | None:
    state = module.__dict__[_STATE]
    loras = module.loras
    ctx = ForwardContext.get_context()
    names = active_in_order(ctx, loras, state["layer_idx"])
    if names:
        y = output
        for name in names:
            if name != state["merged"]:  # a merged adapter is in the weight already
                y = _apply(module, loras[name], args[0], y, first=name == names[0])
        return y
    if composed_here(ctx, loras, state["layer_idx"]):
        if state["merged"] is not None:
            raise RuntimeError(
                f"adapter {state['merged']!r} is merged into the weights, which applies it to every row; "
                "call reset_adapter() before running a composed or per-row setup"
            )
        try:
            return run_setup(ctx, LoRAState(args[0], output), _LoRAComposer(module)).y  # type: ignore[arg-type]
        except ValueError as e:
            if args[0].shape[0] != 1:
                raise
            raise ValueError(
                f"{e}. This projection also runs on a one-row input that serves the whole batch (DeBERTa-v2 with "
                "share_att_key=True projects its relative-position embeddings with query_proj and key_proj), which "
                "per-row setups cannot adapt: leave q and k out of attn_matrices for them, or use a Stack"
            ) from e
    return None


def _apply(proj: nn.Module, lora: nn.Module, x: torch.Tensor, y: torch.Tensor, first: bool = True) -> torch.Tensor:
    """One adapter on projection output ``y``: ``y + delta(x)`` (LoRA, VeRA, MTL-LoRA), ``y * factor(x)``
    ((IA)^3) or ``dora_scale(W) * (y + delta(x))`` (DoRA, DvoRA).

    Args:
        first: whether no other adapter ran before at this projection (DoRA requires it).

    Raises:
        RuntimeError: for a DoRA adapter after another adapter, or with another adapter merged into ``W``
            (setups are checked when activated; an `AdapterSetup` block is not).
    """
    if lora.additive:
        return y + lora.delta(x)
    if isinstance(lora, IA3):
        return y * lora.factor(x)
    merged = proj.__dict__[_STATE]["merged"]
    if not first or merged is not None:
        other = "another adapter ran before it" if merged is None else f"adapter {merged!r} is merged into the weights"
        raise RuntimeError(
            f"DoRA adapter {_name_of(proj, lora)!r} must be the first adapter at its projection, but {other}; "
            "put it first in the Stack (or call reset_adapter())"
        )
    return lora.dora_scale(_weight_oi(proj)).to(y.dtype) * (y + lora.delta(x))


def _name_of(proj: nn.Module, lora: nn.Module) -> str:
    return next((name for name, module in proj.loras.items() if module is lora), "?")


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
    def __init__(self, proj: nn.Module):
        self.proj = proj
        self.present = proj.loras

    def single(self, name: str, state: LoRAState) -> LoRAState:
        return LoRAState(state.x, _apply(self.proj, self.present[name], state.x, state.y))

    def route(self, groups: RowGroups, state: LoRAState) -> LoRAState | None:
        """Rows of additive adapters (LoRA, VeRA, MTL-LoRA) get their update added in place (no copies of
        the output); other targets use the generic routing."""
        loras = [self.present[t] if isinstance(t, str) and t in self.present else None for t in groups.targets]
        if any(lora is not None and not lora.additive for lora in loras) or any(
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
    """Registers the LoRA family (`LoRAConfig` and its presets, `MTLLoRAConfig`) on the table's
    attention and FFN projections."""

    name = "lora"
    config_class = LoRAConfig
    module_attribute = "loras"
    union_repeatable = True  # per layer and location: a union may hold configs at disjoint places

    @property
    def module_attributes(self) -> tuple[str, ...]:
        """``loras`` (per projection) and ``shared_parameters`` (VeRA's shared A and B on the base model)."""
        return (self.module_attribute, _SHARED)

    def _targets(
        self, stack: LayerStack, config: LoRAConfig, heads: int | None = None
    ) -> list[tuple[str, str, tuple[str, ...] | None]]:
        """(location key, path, fused matrices) for each projection of a ``stack`` layer this config adapts.
        ``selfattn_lora`` covers the cross-attention's projections too (as in AdapterHub). ``heads``: the
        attention heads of a fused projection whose outputs are ordered per head (see `FusedMatrices`)."""
        found: list[tuple[str, str, tuple[str, ...] | None]] = []
        if config.selfattn_lora:
            if stack.fused_qkv:
                matrices = tuple(m for m in _QKV if m in config.attn_matrices)
                if matrices:
                    found.append(("selfattn_lora", stack.fused_qkv, FusedMatrices(matrices, heads)))
            for projections in (stack.attn_projections, stack.cross_attn_projections):
                if projections:
                    found += [("selfattn_lora", projections[m], None) for m in _QKV if m in config.attn_matrices]
        if config.intermediate_lora:
            found.append(("intermediate_lora", stack.ffn_intermediate, None))
        if config.output_lora:
            found.append(("output_lora", stack.ffn_output, None))
        return found

    def add(self, target: ModelTarget, adapter_name: str, config: LoRAConfig) -> LayerModules:  # type: ignore[override]
        """Create the adapter's module on every targeted projection (and VeRA's shared A and B).

        Raises:
            ValueError: for MTL-LoRA on a fused q/k/v projection, or a projection that is neither
                ``nn.Linear`` nor ``Conv1D``.
        """
        generator = None
        if config.init_weights_seed is not None:
            generator = torch.Generator().manual_seed(config.init_weights_seed)
        sites = [
            (idx, location, matrices, target.layer_module(idx, path))
            for idx in range(len(target.layers))
            if idx not in config.leave_out
            for location, path, matrices in self._targets(target.stack(idx), config, _per_head(target, idx))
        ]
        sites = [(idx, loc, _with_sizes(target, idx, m, proj), proj) for idx, loc, m, proj in sites]
        extra: dict[str, Any] = {}
        if isinstance(config, MTLLoRAConfig):
            module_cls: type[nn.Module] = MTLLoRA
        elif config.composition_mode == "scale":
            module_cls = IA3
        elif config.is_vera:
            module_cls = VeRA
            if sites:
                extra["shared"] = _add_shared_vera(target, adapter_name, config, sites, generator)
        else:
            module_cls = LoRA
        created: LayerModules = {}
        for idx, location, matrices, proj in sites:
            in_features, out_features = _shape(proj)
            out_per_group = out_features // 3 if matrices else out_features  # equal parts; else matrices.sizes
            if generator is not None:
                generator.manual_seed(config.init_weights_seed)
            if module_cls is not IA3:
                extra["base_weight"] = _original_weight_oi(proj)
            lora = module_cls(in_features, out_per_group, matrices, config, generator, **extra)
            lora = lora.to(device=proj.weight.device, dtype=lora.dtype or proj.weight.dtype)
            lora.train(proj.training)
            lora.gating_key = (adapter_name, idx, location)
            if not hasattr(proj, "loras"):
                proj.loras = nn.ModuleDict()
            proj.loras[adapter_name] = lora
            if _STATE not in proj.__dict__:
                # first among the projection's hooks: a bottleneck whose sub-block output is this projection
                # (ALBERT's ffn_output) must see the adapted output, as in AdapterHub
                handle = proj.register_forward_hook(_lora_hook, prepend=True)
                proj.__dict__[_STATE] = {
                    "layer_idx": idx,
                    "handle": handle,
                    "merged": None,
                    "backup": None,
                    "shares": {},
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
            for share, (names, reference) in list(state["shares"].items()):
                if adapter_name in names:
                    remaining = tuple(n for n in names if n != adapter_name)
                    state["shares"][share] = (remaining, reference if reference in remaining else None)
            if len(proj.loras) == 0:
                state["handle"].remove()
                del proj.__dict__[_STATE]
                del proj.loras
        store = getattr(target.base_model, _SHARED, None)
        if isinstance(store, nn.ModuleDict) and adapter_name in store:
            del store[adapter_name]
            if len(store) == 0:
                delattr(target.base_model, _SHARED)

    def modules(self, target: ModelTarget, adapter_name: str) -> LayerModules:
        found: LayerModules = {}
        for idx in range(len(target.layers)):
            for location, path in self._all_locations(target.stack(idx)):
                proj = target.layer_module(idx, path)
                if adapter_name in getattr(proj, "loras", {}):
                    _add_module(found, idx, location, proj.loras[adapter_name])
        return found

    def _all_locations(self, stack: LayerStack) -> list[tuple[str, str]]:
        attn = [stack.fused_qkv] if stack.fused_qkv else [stack.attn_projections[m] for m in _QKV]
        attn += [stack.cross_attn_projections[m] for m in _QKV if stack.cross_attn_projections]
        return [("selfattn_lora", p) for p in attn] + [
            ("intermediate_lora", stack.ffn_intermediate),
            ("output_lora", stack.ffn_output),
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

    # ---- set-up checks and loading ---------------------------------------------------------
    def validate_setup(
        self, target: ModelTarget, setup: AdapterCompositionBlock, configs: Mapping[str, AdapterConfig]
    ) -> None:
        """Refuse setups in which a DoRA adapter is not the first adapter at one of its projections.

        DoRA rescales the projection output: ``m / ||W + dW|| * (W x + b + s dW x)``. That is defined on the
        projection's own output, so at each projection a DoRA adapter must come before every other adapter
        of its path (a Stack's earlier children; a Stack around the block). Adapters after it act on its
        output, exactly as if it were merged. Blocks that cut rows or tokens (BatchSplit, Parallel,
        MultiTask, Split, per-row routing) and Average (each child starts from the projection output)
        keep every path separate.

        Raises:
            ValueError: naming the DoRA adapter, the adapter before it, the projection and the setup.
        """
        names = setup.flatten()
        dora = {n for n in names if getattr(configs.get(n), "use_dora", False)}
        if not dora:
            return
        checked: set[frozenset[str]] = set()
        for proj in self._projections(target):
            here = frozenset(n for n in names if n in proj.loras)
            if here & dora and here not in checked:
                checked.add(here)
                _check_dora_first(setup, here, dora, None, setup, proj)

    # ---- averaging (AdapterHub's combine strategies) ---------------------------------------
    def average(
        self,
        target: ModelTarget,
        adapter_name: str,
        config: AdapterConfig,
        weights: Mapping[str, float],
        combine_strategy: str = "linear",
        svd_rank: int | None = None,
    ) -> None:
        """Set the new adapter ``adapter_name`` from the adapters in ``weights`` (name -> normalised weight).

        Strategies (AdapterHub's): ``"linear"`` (every tensor ``sum_i w_i theta_i``, VeRA's shared A and B too),
        ``"lora_linear_only_negate_b"`` (``A = sum_i |w_i| A_i``, ``B = sum_i w_i B_i``, other tensors linear) and
        ``"lora_delta_w_svd"`` (``dW = sum_i w_i s_i B_i A_i``, truncated to rank ``svd_rank`` by SVD:
        ``A = Vh[:r]``, ``B = U[:, :r] diag(S[:r]) / s`` with the new adapter's scaling ``s``; per q/k/v group of a
        fused projection; gates and DoRA magnitudes linear). VeRA, (IA)^3 and MTL-LoRA average linearly only.

        Raises:
            ValueError: for an unsupported strategy or adapter kind, a missing ``svd_rank``, or an adapter
                without a module where the new one has one (naming it).
        """
        check_strategy(self, combine_strategy, ("linear", "lora_linear_only_negate_b", "lora_delta_w_svd"))
        if combine_strategy == "lora_delta_w_svd" and svd_rank is None:
            raise ValueError("combine_strategy 'lora_delta_w_svd' needs svd_rank (the rank of the averaged adapter)")
        for proj in self._projections(target):
            if adapter_name not in proj.loras:
                continue
            missing = [n for n in weights if n not in proj.loras]
            if missing:
                raise ValueError(
                    f"cannot average adapter {missing[0]!r} into {adapter_name!r}: it has no LoRA module at "
                    f"layer {proj.__dict__[_STATE]['layer_idx']} where {adapter_name!r} has one"
                )
            new = proj.loras[adapter_name]
            if combine_strategy != "linear" and type(new) is not LoRA:
                kind = "VeRA" if isinstance(new, VeRA) else type(new).__name__
                raise ValueError(
                    f"{kind} adapters average only with combine_strategy 'linear', not {combine_strategy!r}"
                )
            sources = {n: {"m": proj.loras[n]} for n in weights}
            if combine_strategy == "linear":
                average_modules({"m": new}, sources, weights, adapter_name)
                continue
            with torch.no_grad():
                if combine_strategy == "lora_linear_only_negate_b":
                    average_modules({"m": new}, sources, weights, adapter_name)  # B (and gate, m) linear
                    new.lora_A.copy_(sum(abs(w) * proj.loras[n].lora_A for n, w in weights.items()))
                    continue
                _svd_into(new, [(proj.loras[n], w) for n, w in weights.items()])
                for key, value in new.state_dict().items():  # gate, DoRA magnitude: linear
                    if key not in ("lora_A", "lora_B") and value.is_floating_point():
                        value.copy_(sum(w * proj.loras[n].state_dict()[key] for n, w in weights.items()))
        store = getattr(target.base_model, _SHARED, None)
        if isinstance(store, nn.ModuleDict) and adapter_name in store:
            average_modules({"s": store[adapter_name]}, {n: {"s": store[n]} for n in weights}, weights, adapter_name)

    def fit_loaded_weights(self, model: nn.Module, weights: dict[str, torch.Tensor]) -> bool:
        """Accept AdapterHub's VeRA form: ``vera_D`` (r x r) and ``vera_B`` (out x out) matrices.

        A diagonal matrix becomes this module's vector (exact); a dense one (AdapterHub trains every entry)
        switches the module to the dense form (`VeRA.use_dense`), so the outputs stay AdapterHub's. A vector
        for a module in dense form becomes its diagonal matrix.

        Returns:
            Whether a module changed its parameters.
        """
        changed = False
        for key, tensor in list(weights.items()):
            path, _, attr = key.rpartition(".")
            if attr not in ("vera_D", "vera_B"):
                continue
            module = model.get_submodule(path)
            if not isinstance(module, VeRA):
                continue
            own = getattr(module, attr)
            if tensor.dim() == 2 and own.dim() == 1:
                if torch.equal(tensor, torch.diag(torch.diagonal(tensor))):
                    weights[key] = torch.diagonal(tensor).clone()
                else:
                    module.use_dense(attr)
                    changed = True
            elif tensor.dim() == 1 and own.dim() == 2:
                weights[key] = torch.diag(tensor)
        return changed

    # ---- MTL-LoRA parameter sharing --------------------------------------------------------
    def share_parameters(
        self,
        target: ModelTarget,
        adapter_names: Sequence[str],
        configs: Mapping[str, AdapterConfig],
        name: str,
        reference_adapter_name: str,
    ) -> None:
        """Make ``lora_A`` and ``lora_B`` of ``adapter_names`` one pair of parameters per projection: those of
        ``reference_adapter_name`` (AdapterHub's ``share_parameters``; MTL-LoRA shares them between tasks).

        Raises:
            TypeError: for an adapter whose config is not a `MultiTaskConfig`, or mixed config types.
            ValueError: for an empty list, a reference not in the list, a name that is taken, or tensors of
                different shapes.
        """
        if not adapter_names:
            raise ValueError("share_parameters needs at least one adapter name")
        for adapter in adapter_names:
            if not isinstance(configs.get(adapter), MultiTaskConfig):
                raise TypeError(
                    f"adapter {adapter!r} has config {type(configs.get(adapter)).__name__}; share_parameters needs "
                    "multi-task configs (MultiTaskConfig, e.g. MTLLoRAConfig)"
                )
        kinds = {type(configs[a]).__name__ for a in adapter_names}
        if len(kinds) > 1:
            raise TypeError(f"adapters {list(adapter_names)} have different config types {sorted(kinds)}")
        if reference_adapter_name not in adapter_names:
            raise ValueError(
                f"reference adapter {reference_adapter_name!r} is not one of the adapters {list(adapter_names)}"
            )
        groups = []
        for proj in self._projections(target):
            if not all(a in proj.loras for a in adapter_names):
                continue
            if name in proj.__dict__[_STATE]["shares"]:
                raise ValueError(f"parameters are already shared under the name {name!r}; unshare them first")
            ref = proj.loras[reference_adapter_name]
            for adapter in adapter_names:
                for attr in ("lora_A", "lora_B"):
                    own, theirs = getattr(proj.loras[adapter], attr), getattr(ref, attr)
                    if own.shape != theirs.shape:
                        raise ValueError(
                            f"cannot share {attr} of {adapter!r} {tuple(own.shape)} with {reference_adapter_name!r} "
                            f"{tuple(theirs.shape)}: the adapters need equal r, n_up_projection and targets"
                        )
            groups.append(proj)
        for proj in groups:
            ref = proj.loras[reference_adapter_name]
            for adapter in adapter_names:
                proj.loras[adapter].lora_A = ref.lora_A
                proj.loras[adapter].lora_B = ref.lora_B
            proj.__dict__[_STATE]["shares"][name] = (tuple(adapter_names), reference_adapter_name)

    def unshare_parameters(self, target: ModelTarget, name: str) -> None:
        """Give every adapter shared under ``name`` its own copy of the shared ``lora_A`` and ``lora_B``.

        Raises:
            ValueError: if nothing is shared under ``name``.
        """
        found = False
        for proj in self._projections(target):
            share = proj.__dict__[_STATE]["shares"].pop(name, None)
            if share is None:
                continue
            found = True
            names, reference = share
            for adapter in names:
                if adapter == reference or adapter not in proj.loras:
                    continue
                lora = proj.loras[adapter]
                for attr in ("lora_A", "lora_B"):
                    param = getattr(lora, attr)
                    setattr(lora, attr, nn.Parameter(param.detach().clone(), requires_grad=param.requires_grad))
        if not found:
            known = sorted({s for p in self._projections(target) for s in p.__dict__[_STATE]["shares"]})
            raise ValueError(f"no parameters are shared under the name {name!r}; shared names: {known}")


def _check_dora_first(
    block: object,
    here: frozenset[str],
    dora: set[str],
    before: str | None,
    setup: AdapterCompositionBlock,
    proj: nn.Module,
) -> str | None:
    """Walk ``block`` at one projection (``here``: the setup's adapters present there); ``before`` names an
    adapter that may already have run at this point. Returns the same after the block.

    Raises:
        ValueError: when a DoRA adapter may run after another adapter.
    """
    if block is None:
        return before
    if isinstance(block, str):
        if block not in here:
            return before
        if block in dora and before is not None:
            raise ValueError(
                f"DoRA adapter {block!r} runs after adapter {before!r} at {type(proj).__name__} projection "
                f"(layer {proj.__dict__[_STATE]['layer_idx']}) in {setup!r}; a DoRA adapter rescales the projection "
                "output W x + b by m / ||W + dW|| and must be the first adapter at its projection: put it first in "
                "the Stack or use it alone (BatchSplit, Parallel, MultiTask, Split and Average keep their children "
                "apart)"
            )
        return block
    if isinstance(block, Stack):
        for child in block:
            before = _check_dora_first(child, here, dora, before, setup, proj)
        return before
    # blocks whose children each start from the same state (rows, tokens, Average)
    after = before
    for child in block:  # type: ignore[attr-defined]
        ran = _check_dora_first(child, here, dora, before, setup, proj)
        after = after if ran is None else ran
    return after


def _add_shared_vera(
    target: ModelTarget,
    adapter_name: str,
    config: LoRAConfig,
    sites: Sequence[tuple[int, str, tuple[str, ...] | None, nn.Module]],
    generator: torch.Generator | None,
) -> nn.ParameterDict:
    """Create VeRA's frozen random ``lora_A`` (r x in_max) and ``lora_B`` (out_max x r) for one adapter in
    ``base_model.shared_parameters[adapter_name]`` (AdapterHub's place and keys), sized for the largest
    projection it adapts and initialised as ``config.init_weights`` says."""
    shapes = [_shape(proj) for *_, proj in sites]
    in_max = max(i for i, _ in shapes)
    out_max = max(
        max(getattr(matrices, "sizes", None) or (o // 3,)) if matrices else o
        for (_, o), (_, _, matrices, _) in zip(shapes, sites, strict=True)
    )
    dtype = getattr(torch, config.dtype) if config.dtype else None
    a = torch.zeros(config.r, in_max, dtype=dtype)
    b = torch.zeros(out_max, config.r, dtype=dtype)
    if generator is not None:
        generator.manual_seed(config.init_weights_seed)
    if config.init_weights == "lora":
        nn.init.kaiming_uniform_(a, a=math.sqrt(5), generator=generator)
    elif config.init_weights == "bert":
        nn.init.normal_(a, std=0.02, generator=generator)
        nn.init.normal_(b, std=0.02, generator=generator)
    elif config.init_weights == "ia3":
        nn.init.ones_(a)
        nn.init.ones_(b)
    else:  # vera
        nn.init.kaiming_uniform_(a, generator=generator)
        nn.init.kaiming_uniform_(b, generator=generator)
    weight = sites[0][3].weight
    shared = nn.ParameterDict(
        {
            "lora_A": nn.Parameter(a, requires_grad=False),
            "lora_B": nn.Parameter(b, requires_grad=False),
        }
    ).to(device=weight.device, dtype=dtype or weight.dtype)
    store = getattr(target.base_model, _SHARED, None)
    if store is None:
        store = nn.ModuleDict()
        target.base_model.add_module(_SHARED, store)
    store[adapter_name] = shared
    return shared


def _original_weight_oi(proj: nn.Module) -> torch.Tensor:
    """The projection's ``(out, in)`` weight without any merged adapter."""
    state = proj.__dict__.get(_STATE)
    weight = state["backup"][0] if state is not None and state["merged"] is not None else proj.weight
    return weight.t() if isinstance(proj, Conv1D) else weight


def _svd_into(new: LoRA, sources: list[tuple[LoRA, float]]) -> None:
    """Set ``new``'s A and B (rank ``r``) to the truncated SVD of ``sum_i w_i s_i B_i A_i / s_new``, per group.

    Raises:
        ValueError: if a source's shapes differ from ``new``'s (other projection size or grouping).
    """
    groups, rank = new.groups, new.lora_A.shape[0] // new.groups
    scale_new = 1.0 if new.config.use_gating else new.scaling
    delta = None
    for lora, weight in sources:
        if lora.groups != groups or lora.lora_B.shape[0] != new.lora_B.shape[0]:
            raise ValueError("cannot average LoRA modules of different shapes with 'lora_delta_w_svd'")
        scale = 1.0 if lora.config.use_gating else lora.scaling
        term = lora._update_weight().float() * (weight * scale)
        delta = term if delta is None else delta + term
    a_parts, b_parts = [], []
    for part in (delta / scale_new).split(new.group_sizes):  # per q/k/v group of a fused projection
        u, sv, vh = torch.linalg.svd(part, full_matrices=False)
        k = min(rank, sv.shape[-1])
        a = torch.zeros(rank, vh.shape[-1])
        b = torch.zeros(u.shape[0], rank)
        a[:k] = vh[:k]
        b[:, :k] = u[:, :k] * sv[None, :k]
        a_parts.append(a)
        b_parts.append(b)
    new.lora_A.copy_(torch.cat(a_parts).to(new.lora_A))
    new.lora_B.copy_(torch.cat(b_parts).to(new.lora_B))


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
        if lora.is_dora:  # before the backup: a gated DoRA adapter fails here and changes nothing
            dw = lora.delta_weight().to(proj.weight.dtype)
            f = lora.dora_scale(_weight_oi(proj)).to(proj.weight.dtype)
        state["backup"] = (
            proj.weight.detach().clone(),
            None if proj.bias is None else proj.bias.detach().clone(),
        )
        if isinstance(lora, IA3):
            f = lora.factor_vector().to(proj.weight.dtype)
            proj.weight.mul_(f if transposed else f[:, None])
            if proj.bias is not None:
                proj.bias.mul_(f)
        elif lora.is_dora:  # W <- f (W + s dW), b <- f b with f = m / ||W + dW||: the forward's formula
            proj.weight.add_(dw.t() if transposed else dw).mul_(f if transposed else f[:, None])
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
