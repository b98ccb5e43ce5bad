"""Key/value access inside attention, through transformers 5's public attention registries.

Every supported architecture computes attention as

    ALL_ATTENTION_FUNCTIONS.get_interface(config._attn_implementation, eager_attention_forward)(
        module, query, key, value, attention_mask, ...)

after its KV-cache update, and builds ``attention_mask`` with ``masking_utils.create_causal_mask`` /
``create_bidirectional_mask``, which call ``ALL_MASK_ATTENTION_FUNCTIONS[config._attn_implementation]``.
This module registers, for a base implementation ``X`` (``"eager"``, ``"sdpa"``, ...), an attention
function and a mask function named ``"adapterkit_X"`` (`AttentionInterface.register`,
`AttentionMaskInterface.register`):

- the attention function runs the *key/value hooks* registered on ``module`` (`register_kv_hook`);
  a hook may prepend key/value slots (`KVExtension`), and the mask gets one column per slot (attend,
  or not for padded slots). Then ``X`` runs: for ``"eager"`` the model's own module-level
  ``eager_attention_forward`` (so model-specific eager math stays), otherwise ``ALL_ATTENTION_FUNCTIONS[X]``;
- the mask function is ``X``'s, but while adapters run it always materializes a 4-D mask (no
  ``is_causal`` / no-padding shortcuts), so prepended slots never meet an implicit causal mask
  (SDPA's ``is_causal`` is upper-left aligned and would hide them). With no adapter running it is
  ``X``'s unchanged, so the outputs equal the base implementation's.

`use_adapter_attention` switches a model's attention configs to the wrapped implementation (one
claim per owner); `release_adapter_attention` restores the base implementation when the last owner
releases it. ``_attn_implementation`` is never serialized by transformers, so ``config.json`` never
names these implementations. The cache only ever holds the model's own keys and values.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import AttentionInterface, AttentionMaskInterface, PreTrainedConfig
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from ..context import ForwardContext

PREFIX = "adapterkit_"
"""Name prefix of the attention implementations registered here (``"adapterkit_sdpa"``)."""

_KV_HOOKS = "_adapterkit_kv_hooks"  # module.__dict__ key: {hook id: hook}
_OWNERS = "_adapterkit_attention_owners"  # model.__dict__ key: owners of the switched implementation
_CONFIGS = "_adapterkit_attention_configs"  # model.__dict__ key: the configs that were switched
_FOUR_D_BASES = ("eager", "sdpa", "paged|eager")  # bases whose masks are 4-D tensors (bool or additive)
_ADDITIVE_BASES = ("eager", "paged|eager")  # bases whose attention adds a float mask to the scores
_REGISTERED: set[str] = set()
# attention-function keyword arguments holding an additive bias over the key axis (T5's relative position bias)
_KEY_AXIS_BIASES = ("position_bias",)
_EAGER_BY_TYPE: dict[type, Callable] = {}


@dataclass
class KVExtension:
    """What a key/value hook did: the new keys and values, with ``added`` slots prepended.

    Attributes:
        key: the keys, ``(batch, num_key_value_heads, added + kv_length, head_dim)``.
        value: the values, same shape.
        added: how many slots were prepended along the key axis.
        valid: ``(batch, added)`` bool, False for slots a row must not attend to (padding), or None
            when every row attends to every added slot.
    """

    key: torch.Tensor
    value: torch.Tensor
    added: int
    valid: torch.Tensor | None = None


KVHook = Callable[[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor], KVExtension | None]
"""``hook(module, query, key, value) -> KVExtension | None`` (None: leave keys and values as they are)."""


class KVHookHandle:
    """Removes a key/value hook registered with `register_kv_hook`."""

    _next_id = 0

    def __init__(self, module: nn.Module):
        self.module = module
        self.id = KVHookHandle._next_id
        KVHookHandle._next_id += 1

    def remove(self) -> None:
        """Unregister the hook (again: nothing happens)."""
        hooks = self.module.__dict__.get(_KV_HOOKS)
        if hooks is None:
            return
        hooks.pop(self.id, None)
        if not hooks:
            del self.module.__dict__[_KV_HOOKS]


def register_kv_hook(module: nn.Module, hook: KVHook) -> KVHookHandle:
    """Run ``hook`` whenever ``module`` (an attention module) computes attention under an adapterkit
    implementation; hooks run in registration order, each on the previous one's keys and values.

    Returns:
        A handle whose ``remove()`` unregisters the hook.
    """
    handle = KVHookHandle(module)
    module.__dict__.setdefault(_KV_HOOKS, {})[handle.id] = hook
    return handle


def has_kv_hooks(module: nn.Module) -> bool:
    """Whether ``module`` has key/value hooks."""
    return bool(module.__dict__.get(_KV_HOOKS))


# ---- implementation names ------------------------------------------------------------------------
def is_adapter_attention(name: str | None) -> bool:
    """Whether ``name`` is an implementation registered here."""
    return isinstance(name, str) and name.startswith(PREFIX)


def base_attention_name(name: str | None) -> str | None:
    """The base implementation of ``name`` (``"adapterkit_sdpa"`` -> ``"sdpa"``); other names unchanged."""
    return name[len(PREFIX) :] if is_adapter_attention(name) else name  # type: ignore[index]


def adapter_attention_name(base: str | None) -> str:
    """The adapterkit implementation wrapping ``base`` (registered on first use).

    Args:
        base: a transformers attention implementation (``"eager"``, ``"sdpa"``, ``"flash_attention_2"``,
            ...); None means transformers' default for a missing value, eager; an adapterkit name is
            returned as it is.

    Raises:
        ValueError: if ``base`` is not a registered attention implementation.
    """
    if is_adapter_attention(base):
        return base  # type: ignore[return-value]
    base = base or "eager"
    if base != "eager" and base not in ALL_ATTENTION_FUNCTIONS:
        raise ValueError(
            f"attention implementation {base!r} is not registered with transformers' AttentionInterface; "
            f"known: {['eager', *ALL_ATTENTION_FUNCTIONS.valid_keys()]}"
        )
    name = PREFIX + base
    if name not in _REGISTERED:
        AttentionInterface.register(name, _make_attention(base))
        if base in ALL_MASK_ATTENTION_FUNCTIONS:
            AttentionMaskInterface.register(name, _make_mask(base))
        _REGISTERED.add(name)
    return name


def _make_attention(base: str) -> Callable:
    def attention(
        module: nn.Module,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: Any,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        hooks = module.__dict__.get(_KV_HOOKS)
        if hooks:
            for hook in list(hooks.values()):
                extension = hook(module, query, key, value)
                if extension is not None and extension.added:
                    attention_mask = extend_attention_mask(attention_mask, extension, query, module, base)
                    _extend_key_biases(kwargs, extension, key.shape[-2])
                    key, value = extension.key, extension.value
                elif extension is not None:
                    key, value = extension.key, extension.value
        return _base_function(base, module)(module, query, key, value, attention_mask, **kwargs)

    attention.__name__ = f"{PREFIX}{base}_attention_forward"
    attention.__qualname__ = attention.__name__
    return attention


def _extend_key_biases(kwargs: dict[str, Any], extension: KVExtension, kv_length: int) -> None:
    """Give the prepended slots a zero entry in the additive key-axis biases among ``kwargs`` (T5's relative
    ``position_bias``): they carry no position, and the real keys keep theirs."""
    for name in _KEY_AXIS_BIASES:
        bias = kwargs.get(name)
        if isinstance(bias, torch.Tensor) and bias.dim() == 4 and bias.shape[-1] == kv_length:
            kwargs[name] = torch.nn.functional.pad(bias, (extension.added, 0))


def _base_function(base: str, module: nn.Module) -> Callable:
    if base != "eager":
        return ALL_ATTENTION_FUNCTIONS[base]
    fn = _EAGER_BY_TYPE.get(type(module))
    if fn is None:
        for cls in type(module).__mro__:
            fn = getattr(sys.modules.get(cls.__module__), "eager_attention_forward", None)
            if fn is not None:
                break
        if fn is None:
            raise RuntimeError(
                f"{type(module).__name__} is run with eager attention, but its module "
                f"{type(module).__module__!r} defines no eager_attention_forward"
            )
        _EAGER_BY_TYPE[type(module)] = fn
    return fn


def _make_mask(base: str) -> Callable:
    def mask_function(*args: Any, **kwargs: Any) -> Any:
        if _adapters_running():
            kwargs["allow_is_causal_skip"] = False
            kwargs["allow_is_bidirectional_skip"] = False
        return ALL_MASK_ATTENTION_FUNCTIONS[base](*args, **kwargs)

    mask_function.__name__ = f"{PREFIX}{base}_mask"
    mask_function.__qualname__ = mask_function.__name__
    return mask_function


def _adapters_running() -> bool:
    ctx = ForwardContext.get_context()
    return ctx is not None and bool(ctx.active_names)


# ---- masks ---------------------------------------------------------------------------------------
def extend_attention_mask(
    mask: Any, extension: KVExtension, query: torch.Tensor, module: nn.Module, base: str = "sdpa"
) -> Any:
    """``mask`` with ``extension.added`` columns prepended along the key axis.

    The new columns attend (True for a bool mask, 0 for an additive float mask) except where
    ``extension.valid`` is False. A missing mask (None) is built as the model would have built it:
    causal (lower-right aligned, as with a cache) for a causal ``module`` with several queries, else no
    masking; a 4-D mask is built only when it is needed.

    Args:
        mask: the attention mask the model passes: a 4-D tensor ``(batch or 1, 1 or heads, q, kv)``, a
            2-D padding mask ``(batch, kv)`` (flash attention), or None.
        extension: the prepended slots.
        query: the query states ``(batch, heads, q, head_dim)`` (sizes, dtype, device).
        module: the attention module (its ``is_causal``).
        base: the base implementation; it decides the kind of mask built from None (additive float for
            eager, bool otherwise).

    Raises:
        TypeError: for a mask of another kind (e.g. flex attention's BlockMask).
    """
    added, valid = extension.added, extension.valid
    batch, q_len = query.shape[0], query.shape[-2]
    kv_len = extension.key.shape[-2] - added
    if mask is None:
        causal = bool(getattr(module, "is_causal", False)) and q_len > 1
        if not causal and valid is None:
            return None
        if base not in _FOUR_D_BASES:
            raise TypeError(
                f"cannot extend a missing attention mask for attention implementation {base!r}; "
                f"supported: {list(_FOUR_D_BASES)}"
            )
        rows = torch.arange(q_len, device=query.device)[:, None] + (kv_len - q_len)
        bool_mask = torch.arange(kv_len, device=query.device)[None, :] <= rows if causal else None
        if bool_mask is None:
            bool_mask = torch.ones(q_len, kv_len, dtype=torch.bool, device=query.device)
        mask = bool_mask.view(1, 1, q_len, kv_len)
        if base in _ADDITIVE_BASES:
            zero = torch.zeros((), dtype=query.dtype, device=query.device)
            mask = torch.where(mask, zero, torch.finfo(query.dtype).min)
    if not isinstance(mask, torch.Tensor) or mask.dim() not in (2, 4):
        raise TypeError(
            f"cannot prepend key/value slots to an attention mask of type {type(mask).__name__}"
            f"{'' if not isinstance(mask, torch.Tensor) else f' with {mask.dim()} dimensions'}; "
            "adapterkit extends 4-D masks (eager, sdpa) and 2-D padding masks"
        )
    if valid is None:
        columns = torch.ones(1, added, dtype=torch.bool, device=mask.device)
    else:
        columns = valid.to(mask.device)
    if mask.dim() == 2:
        columns = columns.expand(batch if valid is not None else mask.shape[0], added)
        return torch.cat([columns.to(mask.dtype), mask.expand(columns.shape[0], -1)], dim=-1)
    if mask.dtype != torch.bool:
        zero = torch.zeros((), dtype=mask.dtype, device=mask.device)
        columns = torch.where(columns, zero, torch.finfo(mask.dtype).min)
    rows = batch if valid is not None else mask.shape[0]
    columns = columns[:, None, None, :].expand(rows, mask.shape[1], mask.shape[2], added)
    return torch.cat([columns, mask.expand(rows, -1, -1, -1)], dim=-1)


# ---- switching a model -----------------------------------------------------------------------------
def _attention_configs(model: nn.Module) -> list[PreTrainedConfig]:
    """The distinct transformers configs of ``model`` and its submodules (attention modules read theirs)."""
    found: dict[int, PreTrainedConfig] = {}
    for module in model.modules():
        config = getattr(module, "config", None)
        if isinstance(config, PreTrainedConfig):
            found.setdefault(id(config), config)
    return list(found.values())


def use_adapter_attention(model: nn.Module, owner: str) -> None:
    """Make every attention config of ``model`` use the adapterkit implementation wrapping its current one.

    Claims are counted per ``owner`` (e.g. a method name); the switch happens at the first claim.

    Raises:
        ValueError: if a config's implementation is not registered with transformers.
    """
    owners: set[str] = model.__dict__.setdefault(_OWNERS, set())
    if not owners:
        configs = _attention_configs(model)
        names = [adapter_attention_name(c._attn_implementation) for c in configs]  # all checked first
        for config, name in zip(configs, names, strict=True):
            config._attn_implementation = name
        model.__dict__[_CONFIGS] = configs
    owners.add(owner)


def ensure_adapter_attention(model: nn.Module) -> None:
    """Re-wrap implementations changed since `use_adapter_attention` (e.g. by ``set_attn_implementation``)."""
    for config in model.__dict__.get(_CONFIGS, ()):
        if not is_adapter_attention(config._attn_implementation):
            config._attn_implementation = adapter_attention_name(config._attn_implementation)


def release_adapter_attention(model: nn.Module, owner: str) -> None:
    """Drop ``owner``'s claim; with no claim left, restore every switched config's base implementation."""
    owners: set[str] | None = model.__dict__.get(_OWNERS)
    if owners is None:
        return
    owners.discard(owner)
    if owners:
        return
    for config in model.__dict__.pop(_CONFIGS, ()):
        config._attn_implementation = base_attention_name(config._attn_implementation)
    del model.__dict__[_OWNERS]


def attention_owners(model: nn.Module) -> frozenset[str]:
    """The owners holding a claim on ``model``'s adapterkit attention."""
    return frozenset(model.__dict__.get(_OWNERS, ()))
