"""Bottleneck adapters (Houlsby et al., 2019; Pfeiffer et al., 2020; He et al., 2021).

A sequential adapter maps the sub-block output ``h`` (with residual stream ``r``) to

    x   = LN(h + r)              if original_ln_before (just h + r in pre-LN models), else h
    out = up(act(down(x))) * scaling + residual       residual per ``residual_before_ln``

and the model then applies its own ``LN(out + r)`` (or ``out + r``), which is AdapterHub's
``original_ln_after=True``. A parallel adapter computes ``up(act(down(r))) * scaling`` from the
sub-block input and adds it to ``h``.

Attachment: a forward pre-hook on the table's ``residual_input`` module captures ``r``; a forward
hook on the ``output`` module replaces ``h`` by the adapter output, so the model's own residual
add and layer norm finish the computation. No model code is copied.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers.activations import get_activation

from ..configs import BnConfig
from ..context import ForwardContext
from ..integration.modules import first_input, get_or_create_host, main_output, with_main_output
from ..integration.target import ModelTarget
from .base import AdapterMethod, LayerModules, active_in_order, register_method

LOCATIONS = {"mh_adapter": "attention", "output_adapter": "ffn"}
_HANDLES = "_adapterkit_bottleneck_hooks"


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
    """

    def __init__(
        self, input_size: int, bottleneck_size: int, config: BnConfig, generator: torch.Generator | None
    ):
        super().__init__()
        self.config = config
        down: list[nn.Module] = []
        if config.ln_before:
            down.append(nn.LayerNorm(input_size))
        down += [nn.Linear(input_size, max(1, bottleneck_size)), Activation(config.non_linearity)]
        self.adapter_down = nn.Sequential(*down)
        self.adapter_up = nn.Linear(max(1, bottleneck_size), input_size)
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
        linears = [m for m in self.adapter_down if isinstance(m, nn.Linear)] + [self.adapter_up]
        kind = self.config.init_weights
        with torch.no_grad():
            if kind == "bert":
                for m in linears + ([self.gate] if self.config.use_gating else []):
                    nn.init.normal_(m.weight, 0.0, 0.02, generator=g)
                    nn.init.zeros_(m.bias)
            elif kind == "mam_adapter":
                for m in linears[:-1]:
                    nn.init.kaiming_uniform_(m.weight, a=math.sqrt(5), generator=g)
                    nn.init.zeros_(m.bias)
                nn.init.zeros_(self.adapter_up.weight)
                nn.init.zeros_(self.adapter_up.bias)
                if self.config.use_gating:
                    nn.init.normal_(self.gate.weight, 0.0, 0.02, generator=g)
                    nn.init.zeros_(self.gate.bias)
            else:  # houlsby
                for m in linears:
                    nn.init.trunc_normal_(m.weight, 0.0, 1e-2, -2e-2, 2e-2, generator=g)
                    nn.init.zeros_(m.bias)

    def adapter_input(
        self, h: torch.Tensor, r: torch.Tensor, layer_norm: nn.Module | None, summed: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(adapter input x, adapter residual) from sub-block output ``h`` and residual stream ``r``.

        ``summed``, when given, is ``h + r`` already computed by the model.
        """
        cfg = self.config
        if cfg.is_parallel:
            return r, r
        residual = h
        if cfg.original_ln_before:
            h = summed if summed is not None else h + r
            if cfg.residual_before_ln == "post_add":
                residual = h
            if layer_norm is not None:
                h = layer_norm.forward(h)  # .forward: not through hooks (the norm carries one of ours)
        if cfg.residual_before_ln is False:
            residual = h
        return h, residual

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        """``up(act(down(x))) * scaling`` (+ residual for sequential adapters)."""
        out = self.adapter_up(self.adapter_down(x))
        if not (isinstance(self.scaling, float) and self.scaling == 1.0):  # skip a full pass for the default
            out = out * self.scaling
        out = self.dropout(out)
        if self.config.use_gating:
            out = out * torch.sigmoid(self.gate(x)).mean(dim=1, keepdim=True)
        if self.config.is_parallel:
            return self.adapter_norm_after(out) if self.config.ln_after else out
        if self.config.adapter_residual_before_ln:
            out = out + residual
        if self.config.ln_after:
            out = self.adapter_norm_after(out)
        if not self.config.adapter_residual_before_ln:
            # in place: `out` is a fresh tensor here and no backward needs its old value
            out = out.add_(residual)
        return out

    def value_for_model(self, out: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """What replaces ``h`` so the model's own ``LN(value + r)`` equals the adapter's final output."""
        return out + h if self.config.is_parallel else out


@dataclass(eq=False)
class _Site:
    """One bottleneck location of one layer."""

    host: nn.Module
    layer_norm: nn.Module | None
    layer_idx: int


def _capture_residual(site: _Site, module: nn.Module, args: tuple, kwargs: dict) -> None:
    ctx = ForwardContext.get_context()
    if active_in_order(ctx, site.host.adapters, site.layer_idx):
        ctx.scratch[site] = first_input(args, kwargs)  # type: ignore[union-attr]


def _apply_adapters(site: _Site, module: nn.Module, args: tuple, output: Any) -> Any:
    """Forward hook on the sub-block output ``h``: run the active adapters on it.

    In post-LN models the work waits for the norm's pre-hook (`_apply_before_norm`), which gets
    ``h + r`` from the model and so saves recomputing it.
    """
    ctx = ForwardContext.get_context()
    names = active_in_order(ctx, site.host.adapters, site.layer_idx)
    if not names:
        return None
    h = main_output(output)
    if site.layer_norm is not None:
        ctx.scratch[(site, "h")] = (h, names)  # type: ignore[union-attr]
        return None
    r = ctx.scratch.pop(site)  # type: ignore[union-attr]
    return with_main_output(output, _run(site, names, h, r, summed=None))


def _apply_before_norm(site: _Site, module: nn.Module, args: tuple) -> tuple | None:
    """Forward pre-hook on a post-LN norm: replace its input ``h + r`` by the adapters' output + ``r``."""
    ctx = ForwardContext.get_context()
    pending = ctx.scratch.pop((site, "h"), None) if ctx is not None else None
    if pending is None:
        return None
    h, names = pending
    r = ctx.scratch.pop(site)  # type: ignore[union-attr]
    return (_run(site, names, h, r, summed=args[0]), *args[1:])


def _run(site: _Site, names: list[str], h: torch.Tensor, r: torch.Tensor, summed: torch.Tensor | None) -> torch.Tensor:
    """Apply the adapters ``names`` in order.

    Returns the value that replaces ``h`` (pre-LN, ``summed`` is None), or the norm's new input
    (post-LN, ``summed = h + r``): ``value + r``, computed as ``f + summed`` where the adapter adds
    ``h`` last, which saves a full pass.
    """
    hidden = h
    for i, name in enumerate(names):
        adapter = site.host.adapters[name]
        x, residual = adapter.adapter_input(hidden, r, site.layer_norm, summed if hidden is h else None)
        cfg = adapter.config
        adds_residual_last = not (cfg.ln_after and cfg.adapter_residual_before_ln)
        if summed is not None and i == len(names) - 1 and residual is h and adds_residual_last and not cfg.is_parallel:
            return adapter.forward(x, summed)  # f + h + r
        hidden = adapter.forward(x, residual)
    if summed is None:
        return adapter.value_for_model(hidden, h)
    if adapter.config.is_parallel:
        return hidden.add_(summed)  # f + h + r
    return hidden + r


class BottleneckMethod(AdapterMethod):
    """Registers bottleneck adapters (`BnConfig`) at the table's attention and FFN sub-blocks."""

    name = "bottleneck"
    config_class = BnConfig
    module_attribute = "adapters"

    def _check(self, config: BnConfig) -> None:
        unsupported = {
            "original_ln_after": (config.original_ln_after is False, "only True is available"),
            "phm_layer": (config.phm_layer, "Compacter (PHM layers) is not available yet"),
            "inv_adapter": (config.inv_adapter is not None, "invertible adapters are not available yet"),
            "stochastic_depth": (bool(config.stochastic_depth), "stochastic depth is not available yet"),
            "cross_adapter": (config.cross_adapter, "the supported architectures have no cross-attention"),
        }
        for key, (bad, why) in unsupported.items():
            if bad:
                raise ValueError(f"BnConfig.{key}={getattr(config, key)!r} is not supported: {why}")

    def add(self, target: ModelTarget, adapter_name: str, config: BnConfig) -> LayerModules:  # type: ignore[override]
        self._check(config)
        generator = None
        if config.init_weights_seed is not None:
            generator = torch.Generator().manual_seed(config.init_weights_seed)
        created: LayerModules = {}
        for idx, layer in enumerate(target.layers):
            if idx in config.leave_out:
                continue
            for location, block_name in LOCATIONS.items():
                if not getattr(config, location):
                    continue
                block = getattr(target.spec, block_name)
                host = get_or_create_host(layer, block.adapter_host)
                if not hasattr(host, "adapters"):
                    host.adapters = nn.ModuleDict()
                if generator is not None:
                    generator.manual_seed(config.init_weights_seed)
                size = int(target.hidden_size // config.reduction_factor_for(idx))
                ref = next(layer.parameters())
                adapter = BottleneckAdapter(target.hidden_size, size, config, generator).to(
                    ref.device, ref.dtype
                )
                adapter.train(layer.training)
                host.adapters[adapter_name] = adapter
                self._ensure_hooks(target, idx, host, block)
                created.setdefault(idx, {})[location] = adapter
        return created

    def _ensure_hooks(self, target: ModelTarget, idx: int, host: nn.Module, block: Any) -> None:
        if getattr(host, _HANDLES, None):
            return
        norm = target.layer_module(idx, block.layer_norm) if block.layer_norm else None
        site = _Site(host=host, layer_norm=norm, layer_idx=idx)
        residual_module = target.layer_module(idx, block.residual_input)
        output_module = target.layer_module(idx, block.output)
        handles = [
            residual_module.register_forward_pre_hook(partial(_capture_residual, site), with_kwargs=True),
            output_module.register_forward_hook(partial(_apply_adapters, site)),
        ]
        if norm is not None:
            handles.append(norm.register_forward_pre_hook(partial(_apply_before_norm, site)))
        object.__setattr__(host, _HANDLES, handles)

    def delete(self, target: ModelTarget, adapter_name: str) -> None:
        for host in self._hosts(target):
            if adapter_name in host.adapters:
                del host.adapters[adapter_name]
            if len(host.adapters) == 0:
                for handle in getattr(host, _HANDLES, []):
                    handle.remove()
                object.__setattr__(host, _HANDLES, [])

    def modules(self, target: ModelTarget, adapter_name: str) -> LayerModules:
        found: LayerModules = {}
        for idx, layer in enumerate(target.layers):
            for location, block_name in LOCATIONS.items():
                host = _find_host(layer, getattr(target.spec, block_name).adapter_host)
                if host is not None and adapter_name in getattr(host, "adapters", {}):
                    found.setdefault(idx, {})[location] = host.adapters[adapter_name]
        return found

    def _hosts(self, target: ModelTarget) -> list[nn.Module]:
        hosts = []
        for layer in target.layers:
            for block_name in LOCATIONS.values():
                host = _find_host(layer, getattr(target.spec, block_name).adapter_host)
                if host is not None and hasattr(host, "adapters"):
                    hosts.append(host)
        return hosts


def _find_host(layer: nn.Module, path: str) -> nn.Module | None:
    try:
        return layer.get_submodule(path)
    except AttributeError:
        return None


register_method(BottleneckMethod())
