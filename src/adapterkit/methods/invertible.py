"""Invertible adapters (MAD-X, Pfeiffer et al., 2020, https://arxiv.org/abs/2005.00052).

A bottleneck adapter whose config sets ``inv_adapter`` (``"nice"`` or ``"glow"``) also gets one invertible
coupling block ``f`` on the embedding output, applied as ``x -> f(x)`` before the first layer and as
``y -> f^{-1}(y)`` right before a language-model head's vocabulary projection (after the head's own transform),
so input and output embeddings stay tied through the adapter. With ``x = [x1, x2]`` split in halves of the
embedding size and ``F, G, s1, s2`` small MLPs ``Linear(d, d // inv_adapter_reduction_factor) -> act ->
Linear`` (act = the adapter's ``non_linearity``):

    NICE   y1 = x1 + F(x2)                y2 = x2 + G(y1)
    GLOW   [s2, t2] = s2(x2)              y1 = e(s2) * x1 + t2
           [s1, t1] = s1(y1)              y2 = e(s1) * x2 + t1          e(s) = exp(5 * 0.636 * atan(s / 5))

This module is a part of the bottleneck method (`methods.bottleneck` delegates the ``inv_adapter`` part of a
`BnConfig` here), not a method of its own: the core sees one bottleneck adapter with one more module,
``{-1: {"invertible": module}}`` in ``get_adapter``, weights ``<base>.invertible_adapters.<name>.{F,G}.{0,2}.*``
(GLOW ``.{s1,s2}.*``), AdapterHub's names.

Attachment: a forward hook on the table's ``embedding_output`` module (BERT-like ``embeddings``, GPT-2 ``drop``,
Llama ``embed_tokens``), and forward pre-hooks on the model's output embeddings (``get_output_embeddings()`` of
the model and of each flexible head) for the inverse. Which module a row uses: the *first* adapter of the row's
setup (AdapterHub's ``first()``; if that adapter has no invertible module, none runs). Rows are independent, so
`BatchSplit`, `MultiTask` and per-row ``adapter_names`` give each row its first adapter's module, and each
`Parallel` channel uses its own (AdapterHub: the whole setup's first adapter for every row). When the channels
differ there, the batch is replicated at the model input (as ``generate()`` does), since the channels differ from
the embeddings on.

GLOW differs from AdapterHub 1.3.0, whose GLOW forward cuts the sequence axis instead of the features, never uses
``s2`` and fails on the first forward: here it is the coupling above (its inverse is AdapterHub's inverse, cut
along the features), with AdapterHub's parameter names and shapes.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..configs import BnConfig
from ..context import ForwardContext, RowGroups
from ..integration.modules import get_submodule
from ..integration.target import ModelTarget
from .compose import row_plan

ATTRIBUTE = "invertible_adapters"
"""Attribute of the base model (an encoder-decoder's encoder, `ArchitectureSpec.invertible_host`) holding every
adapter's invertible module (AdapterHub's name)."""
LOCATION = "invertible"
_SITE = "_adapterkit_invertible_site"  # base_model.__dict__ key of the `_Site`
_PLAN = "invertible_plan"  # ForwardContext.scratch key: the per-row module names of this forward
_GLOW_CLAMP = 5.0


def _subnet(size_in: int, size_out: int, non_linearity: str | None, reduction_factor: float) -> nn.Sequential:
    from .bottleneck import Activation  # here: the bottleneck method imports this module

    hidden = int(size_in // reduction_factor)
    return nn.Sequential(nn.Linear(size_in, hidden), Activation(non_linearity), nn.Linear(hidden, size_out))


class NICECouplingBlock(nn.Module):
    """Additive coupling (Dinh et al., 2015): ``y1 = x1 + F(x2)``, ``y2 = x2 + G(y1)``.

    Args:
        size: the embedding size (split into ``size // 2`` and the rest).
        non_linearity: activation inside ``F`` and ``G``.
        reduction_factor: hidden size of ``F`` and ``G`` is their input size divided by it.
    """

    def __init__(self, size: int, non_linearity: str | None, reduction_factor: float):
        super().__init__()
        self.split_len1 = size // 2
        self.split_len2 = size - size // 2
        self.F = _subnet(self.split_len2, self.split_len1, non_linearity, reduction_factor)
        self.G = _subnet(self.split_len1, self.split_len2, non_linearity, reduction_factor)

    def forward(self, x: torch.Tensor, rev: bool = False) -> torch.Tensor:
        """``f(x)``, or ``f^{-1}(x)`` with ``rev`` (features on the last axis)."""
        x1, x2 = x[..., : self.split_len1], x[..., self.split_len1 :]
        if not rev:
            y1 = x1 + self.F(x2)
            y2 = x2 + self.G(y1)
        else:
            y2 = x2 - self.G(x1)
            y1 = x1 - self.F(y2)
        return torch.cat((y1, y2), dim=-1)


class GLOWCouplingBlock(nn.Module):
    """Affine coupling with soft-clamped scales (Kingma & Dhariwal, 2018; FrEIA's GLOW block).

    ``s1`` maps the first half to ``[scale, shift]`` of the second, ``s2`` the second half to those of the first;
    scales are ``e(s) = exp(clamp * 0.636 * atan(s / clamp))``, so each feature is scaled by at most
    ``exp(±clamp)``.

    Args: as `NICECouplingBlock`, plus
        clamp: the soft clamp (AdapterHub: 5).
    """

    def __init__(self, size: int, non_linearity: str | None, reduction_factor: float, clamp: float = _GLOW_CLAMP):
        super().__init__()
        self.split_len1 = size // 2
        self.split_len2 = size - size // 2
        self.clamp = clamp
        self.s1 = _subnet(self.split_len1, 2 * self.split_len2, non_linearity, reduction_factor)
        self.s2 = _subnet(self.split_len2, 2 * self.split_len1, non_linearity, reduction_factor)

    def _e(self, s: torch.Tensor) -> torch.Tensor:
        return torch.exp(self.clamp * 0.636 * torch.atan(s / self.clamp))

    def forward(self, x: torch.Tensor, rev: bool = False) -> torch.Tensor:
        """``f(x)``, or ``f^{-1}(x)`` with ``rev`` (features on the last axis)."""
        x1, x2 = x[..., : self.split_len1], x[..., self.split_len1 :]
        n1, n2 = self.split_len1, self.split_len2
        if not rev:
            r2 = self.s2(x2)
            y1 = self._e(r2[..., :n1]) * x1 + r2[..., n1:]
            r1 = self.s1(y1)
            y2 = self._e(r1[..., :n2]) * x2 + r1[..., n2:]
        else:
            r1 = self.s1(x1)
            y2 = (x2 - r1[..., n2:]) / self._e(r1[..., :n2])
            r2 = self.s2(y2)
            y1 = (x1 - r2[..., n1:]) / self._e(r2[..., :n1])
        return torch.cat((y1, y2), dim=-1)


_BLOCKS: dict[str, type[nn.Module]] = {"nice": NICECouplingBlock, "glow": GLOWCouplingBlock}


def _init_bert(module: nn.Module, generator: torch.Generator | None) -> None:
    """AdapterHub's ``init_bert_weights``: Linear weights N(0, 0.02), biases 0."""
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.02, generator=generator)
                nn.init.zeros_(m.bias)


class _Site:
    """The hooks of one model: the forward hook on the embedding output and the inverse pre-hooks on its output
    embeddings (found again at every forward, as flexible heads come and go)."""

    def __init__(self, target: ModelTarget, embedding_output: nn.Module):
        self.target = target
        self.adapters: nn.ModuleDict = getattr(_host(target), ATTRIBUTE)
        # first among the embedding output's hooks: AdapterHub applies it before inserting prompts
        self.embedding_handle = embedding_output.register_forward_hook(self._forward_hook, prepend=True)
        self.target.input_hooks[LOCATION] = self._input_hook
        self.output_handles: dict[int, tuple[weakref.ref, Any]] = {}

    def remove(self) -> None:
        self.embedding_handle.remove()
        self.target.input_hooks.pop(LOCATION, None)
        for _, handle in self.output_handles.values():
            handle.remove()
        self.output_handles.clear()

    # ---- which module each row uses ------------------------------------------------------------------
    def plan(self, ctx: ForwardContext, rows: int) -> list[str | None]:
        """The first adapter of each row's setup, for the rows of the base model output: ``rows`` embedding rows,
        times the channels when `Parallel` replicates them later (the channels then agree: the input hook
        replicated the input otherwise). Kept in the context for the inverse."""
        if ctx.parallel_channels > 1 and not ctx.replicated:
            rows *= ctx.parallel_channels
        plan = ctx.scratch.get(_PLAN)
        if plan is None or len(plan) != rows:
            plan = row_plan(ctx, rows, _EVERY_NAME, _first)
            ctx.scratch[_PLAN] = plan
        return plan

    def _input_hook(self, ctx: ForwardContext, module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> tuple:
        """Replicate the model inputs for a `Parallel` setup whose channels use different invertible modules, and
        plan the rows' modules for the inverse (also for a forward that skips the embeddings: an encoder-decoder's
        decoding step given ``encoder_outputs``)."""
        if not ctx.active_names & set(self.adapters):
            return args
        rows = self.target.input_batch_size(module, args, kwargs)
        if rows is None:
            return args
        if ctx.parallel_channels > 1 and not ctx.replicated:
            per_row = row_plan(ctx, rows * ctx.parallel_channels, _EVERY_NAME, _first)
            channels = {
                tuple(self._modules_of(per_row[i * rows : (i + 1) * rows])) for i in range(ctx.parallel_channels)
            }
            if len(channels) > 1:
                args = self.target.replicate_inputs(ctx, module, args, kwargs)
                rows = self.target.input_batch_size(module, args, kwargs) or rows
        self.plan(ctx, rows)
        return args

    def _modules_of(self, names: list[str | None]) -> list[str | None]:
        return [name if name in self.adapters else None for name in names]

    def apply(self, x: torch.Tensor, names: list[str | None], rev: bool) -> torch.Tensor:
        """``x`` with each row's module (``names[i]``, None or one without a module: unchanged) applied."""
        names = self._modules_of(names)
        if all(n == names[0] for n in names):
            return x if names[0] is None else self.adapters[names[0]](x, rev=rev)
        groups = RowGroups.from_rows(names, device=x.device)
        parts = []
        for name, idx in zip(groups.targets, groups.rows, strict=True):
            part = x.index_select(0, idx)
            parts.append(part if name is None else self.adapters[name](part, rev=rev))
        return torch.cat(parts).index_select(0, groups.inverse)

    # ---- hooks ---------------------------------------------------------------------------------------
    def _forward_hook(self, module: nn.Module, args: tuple, output: Any) -> Any:
        ctx = ForwardContext.get_context()
        if ctx is None or not ctx.active_names & set(self.adapters):
            return None
        self._hook_output_embeddings()
        hidden = output[0] if isinstance(output, tuple) else output
        hidden = self.apply(hidden, self.plan(ctx, hidden.shape[0])[: hidden.shape[0]], rev=False)
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

    def _inverse_pre_hook(self, module: nn.Module, args: tuple) -> tuple | None:
        ctx = ForwardContext.get_context()
        plan = ctx.scratch.get(_PLAN) if ctx is not None else None
        if plan is None or not args:
            return None
        rows = ctx.head_rows  # type: ignore[union-attr]
        if rows is not None:
            plan = plan[rows] if isinstance(rows, slice) else [plan[i] for i in rows.tolist()]
        if len(plan) != args[0].shape[0]:
            raise RuntimeError(
                f"invertible adapters: the output embeddings got {args[0].shape[0]} rows, but this forward's "
                f"embeddings had {len(plan)}"
            )
        return (self.apply(args[0], plan, rev=True), *args[1:])

    def _hook_output_embeddings(self) -> None:
        for module in _output_embeddings(self.target.root):
            key = id(module)
            known = self.output_handles.get(key)
            if known is not None and known[0]() is module:
                continue
            handle = module.register_forward_pre_hook(self._inverse_pre_hook)
            self.output_handles[key] = (weakref.ref(module), handle)


def _first(value: object, name: str) -> object:
    return value if value is not None else name


class _EveryName:
    """A container holding every name: a row's first adapter counts even if it has no invertible module."""

    def __contains__(self, item: object) -> bool:
        return True


_EVERY_NAME = _EveryName()


def _output_embeddings(root: nn.Module) -> list[nn.Module]:
    """The vocabulary projections of ``root``: its own ``get_output_embeddings()`` and those of its flexible heads."""
    found: list[nn.Module] = []
    candidates: list[Any] = [root, *getattr(root, "heads", {}).values()]
    for candidate in candidates:
        getter: Callable[[], Any] | None = getattr(candidate, "get_output_embeddings", None)
        module = getter() if callable(getter) else None
        if isinstance(module, nn.Module) and all(module is not m for m in found):
            found.append(module)
    return found


def _host(target: ModelTarget) -> nn.Module:
    """The module holding the ``invertible_adapters`` dict (`ArchitectureSpec.invertible_host`)."""
    return get_submodule(target.base_model, target.spec.invertible_host)


def _embedding_size(target: ModelTarget) -> int:
    return getattr(target.config, "embedding_size", None) or target.hidden_size


def add(target: ModelTarget, adapter_name: str, config: BnConfig) -> dict[int, dict[str, nn.Module]]:
    """Create ``adapter_name``'s invertible module if ``config.inv_adapter`` asks for one.

    Returns:
        ``{-1: {"invertible": module}}``, or ``{}`` without ``inv_adapter``.

    Raises:
        ValueError: for a missing or too large ``inv_adapter_reduction_factor``; for a model without token
            embeddings (``ArchitectureSpec.embeddings`` None, e.g. Whisper's audio encoder).
    """
    if config.inv_adapter is None:
        return {}
    if (target.spec.embedding_output or target.spec.embeddings) is None:
        raise ValueError(
            f"invertible adapters (inv_adapter={config.inv_adapter!r}) are not available for "
            f"{target.spec.model_type!r}: the model has no token embeddings at its input (its table entry has "
            "embeddings=None); use the config without inv_adapter"
        )
    size = _embedding_size(target)
    factor = config.inv_adapter_reduction_factor
    if not isinstance(factor, (int, float)) or isinstance(factor, bool) or factor <= 0 or int(size // 2 // factor) < 1:
        raise ValueError(
            f"BnConfig.inv_adapter_reduction_factor={factor!r} is not allowed with inv_adapter="
            f"{config.inv_adapter!r}; expected a positive number at most {size // 2} (half the embedding size "
            f"{size} divided by it is the coupling networks' hidden size)"
        )
    base, host = target.base_model, _host(target)
    if not hasattr(host, ATTRIBUTE):
        host.add_module(ATTRIBUTE, nn.ModuleDict())
    adapters: nn.ModuleDict = getattr(host, ATTRIBUTE)
    generator = (
        torch.Generator().manual_seed(config.init_weights_seed) if config.init_weights_seed is not None else None
    )
    module = _BLOCKS[config.inv_adapter](size, config.non_linearity, factor)
    _init_bert(module, generator)
    ref = next(base.parameters())
    module.to(ref.device, ref.dtype).train(base.training)
    adapters[adapter_name] = module
    if _SITE not in base.__dict__:
        path = target.spec.embedding_output or target.spec.embeddings
        base.__dict__[_SITE] = _Site(target, get_submodule(base, path))
    return {-1: {LOCATION: module}}


def delete(target: ModelTarget, adapter_name: str) -> None:
    """Remove ``adapter_name``'s invertible module (and the hooks, with the last one)."""
    base, host = target.base_model, _host(target)
    adapters = getattr(host, ATTRIBUTE, None)
    if adapters is None or adapter_name not in adapters:
        return
    del adapters[adapter_name]
    if len(adapters) == 0:
        site = base.__dict__.pop(_SITE, None)
        if site is not None:
            site.remove()
        delattr(host, ATTRIBUTE)


def modules(target: ModelTarget, adapter_name: str) -> dict[int, dict[str, nn.Module]]:
    """``{-1: {"invertible": module}}`` for ``adapter_name``, or ``{}``."""
    adapters = getattr(_host(target), ATTRIBUTE, None)
    if adapters is None or adapter_name not in adapters:
        return {}
    return {-1: {LOCATION: adapters[adapter_name]}}
