"""Prefix tuning (Li & Liang, 2021, https://arxiv.org/abs/2101.00190).

Each self-attention layer ``i`` gets ``L = prefix_length`` extra key/value slots that every query
attends to:

    attention(q, [P_k^i; K], [P_v^i; V])       P_k^i, P_v^i: (num_key_value_heads, L, head_dim)

The prefixes of all layers come from one module per adapter. With ``flat=True`` they are a parameter
``control_trans`` of ``L * n_layers * 2 * heads * head_dim`` values; otherwise an MLP produces them
from a learned embedding, ``control_trans(wte(0..L-1))`` with ``control_trans = Linear(hidden,
bottleneck_size) -> non_linearity -> Linear(bottleneck_size, n_layers * 2 * heads * head_dim)``
(``n_layers`` counts the layers not left out). Dropout applies to the prefix keys and values; with
``use_gating`` a per-layer gate ``mean_t sigmoid(W h_t + b)`` on the attention input ``h`` scales them.

Attachment: no model code is touched. The prefixes are prepended inside the attention function
through transformers' public ``AttentionInterface`` (see `integration.attention`); a key/value hook on
each attention module does the work. The KV cache never holds prefixes, so ``generate()`` adds them
at every step. Module layout and state-dict names are AdapterHub's:
``<base>.prefix_tuning.prefix_tunings.<name>.<location>.{wte.weight, control_trans.0/2.*}`` (flat:
``...<location>.control_trans``) and gates ``<attention>.prefix_tuning.prefix_gates.<name>.*``.

Composition: `Stack(a, b)` prepends ``a``'s prefix, then ``b``'s (keys ``[b; a; x]``, as AdapterHub);
`BatchSplit`, `Parallel`, `MultiTask` and per-row ``adapter_names`` give rows their own prefixes (rows
with shorter prefixes are padded with key slots they do not attend to). `Average` and `Split` are not
defined for prefixes: averaging key/value sets of different lengths, or giving some query tokens a
prefix the others do not see, has no meaning, so `set_active_adapters` refuses them.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..composition import BatchSplit, MultiTask, Parallel, Stack
from ..configs.prefix_tuning import PrefixTuningConfig
from ..context import ForwardContext
from ..integration.attention import (
    KVExtension,
    base_attention_name,
    ensure_adapter_attention,
    register_kv_hook,
    release_adapter_attention,
    use_adapter_attention,
)
from ..integration.modules import first_input, get_submodule
from ..integration.target import ModelTarget
from .base import AdapterMethod, LayerModules, active_in_order, composed_here, register_method
from .bottleneck import Activation
from .compose import Composer, SiteState, run_setup
from .gating import store_gating_score

POOL_ATTRIBUTE = "prefix_tuning"
"""Attribute of the base model holding the `PrefixTuningPool`, and of each attention module holding its
`PrefixTuningLayer` (AdapterHub's names)."""
SUPPORTED_ATTENTION = ("eager", "sdpa")


def _reset_linear(linear: nn.Linear, generator: torch.Generator) -> None:
    """``nn.Linear``'s default initialisation, drawn from ``generator``."""
    nn.init.kaiming_uniform_(linear.weight, a=math.sqrt(5), generator=generator)
    if linear.bias is not None:
        bound = 1 / math.sqrt(linear.in_features) if linear.in_features > 0 else 0.0
        nn.init.uniform_(linear.bias, -bound, bound, generator=generator)


class _PrefixModule(nn.Module, ABC):
    """Sizes shared by both prefix forms.

    Args:
        n_layers: layers that get a prefix.
        n_heads: key/value heads per layer (``num_key_value_heads``).
        input_size: hidden size of the model.
        config: the adapter's config.
        n_embd_per_head: head dimension.
    """

    def __init__(self, n_layers: int, n_heads: int, input_size: int, config: PrefixTuningConfig, n_embd_per_head: int):
        super().__init__()
        self.n_layers = n_layers
        self.n_heads = n_heads
        self.input_size = input_size
        self.n_embd_per_head = n_embd_per_head
        self.config = config
        self.dropout = nn.Dropout(config.dropout)

    def key_values(self) -> torch.Tensor:
        """``(n_layers * 2, n_heads, L, head_dim)``: layer ``p``'s keys at ``2p``, its values at ``2p + 1``
        (no dropout: it applies per row where the prefixes are used)."""
        flat = self.flat_weights()
        length = self.config.prefix_length
        # AdapterHub's layout (L, n_layers * 2, heads, head_dim)
        return flat.view(length, self.n_layers * 2, self.n_heads, self.n_embd_per_head).permute(1, 2, 0, 3)

    @abstractmethod
    def flat_weights(self) -> torch.Tensor:
        """All prefixes as one vector in `FlatPrefixTuning`'s layout."""


class PrefixTuning(_PrefixModule):
    """The prefixes of all layers of one adapter, produced by an MLP from a learned embedding.

    Args: as `_PrefixModule`, plus
        generator: random source for initialisation (seeded ``init_weights_seed``); None: PyTorch's
            default initialisation from the global generator.
    """

    def __init__(
        self,
        n_layers: int,
        n_heads: int,
        input_size: int,
        config: PrefixTuningConfig,
        n_embd_per_head: int,
        generator: torch.Generator | None = None,
    ):
        super().__init__(n_layers, n_heads, input_size, config, n_embd_per_head)
        self.wte = nn.Embedding(config.prefix_length, input_size)
        self.control_trans = nn.Sequential(
            nn.Linear(input_size, config.bottleneck_size),
            Activation(config.non_linearity),
            nn.Linear(config.bottleneck_size, n_layers * 2 * n_heads * n_embd_per_head),
        )
        if generator is not None:
            with torch.no_grad():
                nn.init.normal_(self.wte.weight, generator=generator)
                _reset_linear(self.control_trans[0], generator)
                _reset_linear(self.control_trans[2], generator)

    def flat_weights(self) -> torch.Tensor:
        """The produced prefixes as one vector in `FlatPrefixTuning`'s layout."""
        tokens = torch.arange(self.config.prefix_length, device=self.wte.weight.device)
        return self.control_trans(self.wte(tokens)).reshape(-1)


class FlatPrefixTuning(_PrefixModule):
    """The prefixes of all layers of one adapter as one trained parameter (``flat=True``).

    Args: as `PrefixTuning`.
    """

    def __init__(
        self,
        n_layers: int,
        n_heads: int,
        input_size: int,
        config: PrefixTuningConfig,
        n_embd_per_head: int,
        generator: torch.Generator | None = None,
    ):
        super().__init__(n_layers, n_heads, input_size, config, n_embd_per_head)
        size = config.prefix_length * n_layers * 2 * n_heads * n_embd_per_head
        self.control_trans = nn.Parameter(torch.randn(size, generator=generator))

    def flat_weights(self) -> torch.Tensor:
        return self.control_trans


class PrefixTuningGroup(nn.ModuleDict):
    """One adapter's prefix modules by location key (``"self_prefix"``; DistilBERT ``"self"``)."""

    def eject(self) -> None:
        """Replace every MLP-form prefix by the flat prefix it produces (same outputs, no MLP)."""
        for location, module in list(self.items()):
            if not isinstance(module, PrefixTuning):
                continue
            config = module.config.replace(flat=True)
            flat = FlatPrefixTuning(module.n_layers, module.n_heads, module.input_size, config, module.n_embd_per_head)
            with torch.no_grad():
                weights = module.flat_weights().detach().clone()
            flat.control_trans = nn.Parameter(weights, requires_grad=any(p.requires_grad for p in module.parameters()))
            flat.train(module.training)
            self[location] = flat


class PrefixTuningPool(nn.Module):
    """Holds every adapter's `PrefixTuningGroup` (``base_model.prefix_tuning.prefix_tunings``).

    Per forward, the active adapters' prefixes are computed once, when the base model starts (outside any
    activation-checkpointed layer), and kept in the forward context; a layer run on its own computes
    them when it first needs them.
    """

    def __init__(self) -> None:
        super().__init__()
        self.prefix_tunings = nn.ModuleDict()

    def key_values(self, name: str, location: str) -> torch.Tensor:
        """Adapter ``name``'s prefixes at ``location`` for the current forward (see `PrefixTuning.key_values`)."""
        ctx = ForwardContext.get_context()
        cache: dict[tuple[str, str], torch.Tensor] = ctx.scratch.setdefault(self, {}) if ctx is not None else {}
        states = cache.get((name, location))
        if states is None:
            states = self.prefix_tunings[name][location].key_values()
            cache[(name, location)] = states
        return states

    def precompute(self, owner: nn.Module, args: Any, kwargs: Any) -> None:
        """Forward pre-hook of the pool's owner (the base model, or the half of a composite model holding this
        pool): compute the active adapters' prefixes for this forward.

        It also re-wraps an attention implementation changed since the adapters were added.

        Raises:
            ValueError: if prefixes are active and the model now uses an attention implementation
                prefix tuning cannot extend.
        """
        ensure_adapter_attention(self.__dict__.get("_model", owner))
        ctx = ForwardContext.get_context()
        if ctx is None:
            return
        names = [name for name in ctx.active_names if name in self.prefix_tunings]
        base = base_attention_name(owner.config._attn_implementation) or "eager"
        if names and base not in SUPPORTED_ATTENTION:
            raise ValueError(
                f"prefix tuning adapters {sorted(names)} need attn_implementation in {list(SUPPORTED_ATTENTION)}, "
                f"but the model was switched to {base!r}"
            )
        for name in names:
            for location in self.prefix_tunings[name]:
                self.key_values(name, location)


class PrefixTuningLayer(nn.Module):
    """The prefix site of one attention module (``<attention>.prefix_tuning``): which adapters have a
    prefix here (and their index among the adapter's layers) and their gates (``prefix_gates``).

    Args:
        pool: the model's `PrefixTuningPool` (referenced, not registered as a child).
        layer_idx: the layer of this attention module.
        location: the prefix location key.
        n_heads: key/value heads; ``head_dim``: their size (checked against the model's keys).
    """

    def __init__(self, pool: PrefixTuningPool, layer_idx: int, location: str, n_heads: int, head_dim: int):
        super().__init__()
        self.prefix_gates = nn.ModuleDict()
        self.layer_idx = layer_idx
        self.location = location
        self.n_heads, self.head_dim = n_heads, head_dim
        self.prefixes: dict[str, int] = {}
        object.__setattr__(self, "pool", pool)  # a reference: the pool's weights live under the base model
        self._handles: list[Any] = []

    def attach(self, attention: nn.Module) -> None:
        """Install the key/value hook and the gate-input pre-hook on ``attention``."""
        self._handles = [
            register_kv_hook(attention, self.extend),
            attention.register_forward_pre_hook(self._capture_input, with_kwargs=True),
        ]

    def detach(self) -> None:
        """Remove the hooks installed by `attach`."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _capture_input(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        if len(self.prefix_gates):
            ctx = ForwardContext.get_context()
            if ctx is not None:
                ctx.scratch[(self, "input")] = first_input(args, kwargs)

    def prefix(
        self, name: str, batch: int, hidden: torch.Tensor | None, like: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Adapter ``name``'s (keys, values) here, each ``(batch, n_heads, L, head_dim)``, with dropout and gate."""
        states = self.pool.key_values(name, self.location)
        idx = 2 * self.prefixes[name]
        key = states[idx].unsqueeze(0).expand(batch, -1, -1, -1)
        value = states[idx + 1].unsqueeze(0).expand(batch, -1, -1, -1)
        dropout = self.pool.prefix_tunings[name][self.location].dropout
        if dropout.p > 0 and dropout.training:
            key, value = dropout(key), dropout(value)
        if name in self.prefix_gates:
            if hidden is None:
                raise RuntimeError(f"the gate of prefix {name!r} in layer {self.layer_idx} got no attention input")
            gate = torch.sigmoid(self.prefix_gates[name](hidden)).mean(dim=1)  # (batch, 1 or 2)
            store_gating_score((name, self.layer_idx, self.location), gate)
            key = key * gate[:, 0].view(-1, 1, 1, 1)
            value = value * gate[:, -1].view(-1, 1, 1, 1)
        return key.to(like.dtype), value.to(like.dtype)

    def extend(
        self, module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor
    ) -> KVExtension | None:
        """Key/value hook: prepend the prefixes of the adapters this forward runs here."""
        ctx = ForwardContext.get_context()
        hidden = ctx.scratch.pop((self, "input"), None) if ctx is not None else None
        names = active_in_order(ctx, self.prefixes, self.layer_idx)
        if not names and not composed_here(ctx, self.prefixes, self.layer_idx):
            return None
        if key.dim() != 4 or key.shape[1] != self.n_heads or key.shape[-1] != self.head_dim:
            raise RuntimeError(
                f"prefix tuning in layer {self.layer_idx} expects keys of shape (batch, {self.n_heads}, length, "
                f"{self.head_dim}), got {tuple(key.shape)}"
            )
        if names:
            keys, values = [key], [value]
            for name in names:  # Stack(a, b): [b; a; x]
                prefix_key, prefix_value = self.prefix(name, key.shape[0], hidden, key)
                keys.insert(0, prefix_key)
                values.insert(0, prefix_value)
            added = sum(k.shape[2] for k in keys[:-1])
            return KVExtension(torch.cat(keys, dim=2), torch.cat(values, dim=2), added)
        valid = torch.ones(key.shape[0], 0, dtype=torch.bool, device=key.device)
        state = run_setup(ctx, PrefixState(key, value, valid, hidden), _PrefixComposer(self))  # type: ignore[arg-type]
        return KVExtension(state.key, state.value, state.added, state.valid if state.padded else None)


@dataclass
class PrefixState(SiteState):
    """Keys and values at a prefix site, with the prefix slots prepended so far.

    Attributes:
        key, value: ``(batch, heads, added + kv_length, head_dim)``.
        valid: ``(batch, added)`` bool: which prepended slots each row attends to (False: padding).
        hidden: the attention input ``(batch, tokens, hidden)`` for gates, or None.
        padded: whether some rows have padded slots (else every entry of ``valid`` is True).
    """

    key: torch.Tensor
    value: torch.Tensor
    valid: torch.Tensor
    hidden: torch.Tensor | None = None
    padded: bool = False

    @property
    def added(self) -> int:
        """Slots prepended so far."""
        return self.valid.shape[1]

    @property
    def batch_size(self) -> int:
        return self.key.shape[0]

    @property
    def seq_len(self) -> int:
        return self.key.shape[2] - self.added

    def rows(self, index: slice | torch.Tensor) -> PrefixState:
        hidden = None if self.hidden is None else self.hidden[index]
        return PrefixState(self.key[index], self.value[index], self.valid[index], hidden, self.padded)

    def tokens(self, index: slice) -> PrefixState:
        raise ValueError("prefix tuning cannot run inside Split: a prefix belongs to all tokens of a row")

    @classmethod
    def cat(cls, states: Sequence[PrefixState], dim: int) -> PrefixState:
        """Rows concatenated; rows with fewer prefix slots get masked-out slots in front."""
        if dim != 0:
            raise ValueError("prefix tuning states can only be joined along the batch")
        longest = max(s.added for s in states)
        keys, values, valid = [], [], []
        padded = any(s.padded for s in states)
        for s in states:
            pad = longest - s.added
            if pad:
                padded = True
                keys.append(F.pad(s.key, (0, 0, pad, 0)))
                values.append(F.pad(s.value, (0, 0, pad, 0)))
                valid.append(F.pad(s.valid, (pad, 0), value=False))
            else:
                keys.append(s.key)
                values.append(s.value)
                valid.append(s.valid)
        hiddens = [s.hidden for s in states]
        hidden = torch.cat(hiddens, 0) if all(h is not None for h in hiddens) else None  # type: ignore[arg-type]
        return PrefixState(torch.cat(keys, 0), torch.cat(values, 0), torch.cat(valid, 0), hidden, padded)

    @classmethod
    def weighted_sum(cls, states: Sequence[PrefixState], weights: Sequence[float], start: PrefixState) -> PrefixState:
        raise ValueError("prefix tuning cannot run inside Average: key/value sets cannot be averaged")


class _PrefixComposer(Composer[PrefixState]):
    def __init__(self, site: PrefixTuningLayer):
        self.site = site
        self.present = site.prefixes  # type: ignore[assignment]

    def single(self, name: str, state: PrefixState) -> PrefixState:
        key, value = self.site.prefix(name, state.batch_size, state.hidden, state.key)
        ones = torch.ones(state.batch_size, key.shape[2], dtype=torch.bool, device=state.valid.device)
        return PrefixState(
            torch.cat([key, state.key], dim=2),
            torch.cat([value, state.value], dim=2),
            torch.cat([ones, state.valid], dim=1),
            state.hidden,
            state.padded,
        )


def head_layout(config: Any, hidden_size: int) -> tuple[int, int]:
    """(key/value heads, head dimension) of a model config, as AdapterHub sizes prefixes.

    Key/value heads are ``num_key_value_heads`` (GQA) or ``num_attention_heads``; the head dimension is
    ``d_kv``, ``head_dim`` or ``hidden_size // num_attention_heads``.
    """
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "d_kv", None) or getattr(config, "head_dim", None) or hidden_size // heads
    return kv_heads, head_dim


class PrefixTuningMethod(AdapterMethod):
    """Registers prefix tuning (`PrefixTuningConfig`) at every self-attention of the table's layers."""

    name = "prefix_tuning"
    config_class = PrefixTuningConfig
    module_attribute = "prefix_tunings"
    supported_blocks = (Stack, BatchSplit, Parallel, MultiTask)

    @property
    def module_attributes(self) -> tuple[str, ...]:
        return ("prefix_tunings", "prefix_gates")

    def is_redundant_saved_key(self, key: str) -> bool:
        """AdapterHub registers its prefix pool as a child of every attention's ``prefix_tuning`` module, so
        its files repeat the pool's weights under ``<attention>.prefix_tuning.pool.prefix_tunings.*``."""
        return f".{POOL_ATTRIBUTE}.pool.prefix_tunings." in f".{key}"

    def add(self, target: ModelTarget, adapter_name: str, config: PrefixTuningConfig) -> LayerModules:  # type: ignore[override]
        base = base_attention_name(target.config._attn_implementation) or "eager"
        if base not in SUPPORTED_ATTENTION:
            raise ValueError(
                f"prefix tuning needs attn_implementation in {list(SUPPORTED_ATTENTION)}, but this model uses "
                f"{base!r}; switch with model.set_attn_implementation('sdpa') before adding {adapter_name!r}"
            )
        own_attention = sorted({s.name or s.layers for s in target.spec.stacks if not s.attention_interface})
        if own_attention:
            raise ValueError(
                f"prefix tuning is not available for {target.spec.model_type!r}: its attention "
                f"({', '.join(own_attention)}) does not go through transformers' AttentionInterface, where prefix "
                "tuning adds its keys and values; "
                "use LoRA, a bottleneck adapter or prompt tuning instead"
            )
        places = self._places(target, config)
        if not places:
            raise ValueError(
                f"PrefixTuningConfig.leave_out={config.leave_out!r} (encoder_prefix={config.encoder_prefix}, "
                f"cross_prefix={config.cross_prefix}) leaves no attention of the {len(target.layers)} layers"
            )
        ref = next(target.base_model.parameters())
        seed = config.init_weights_seed
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        module_cls = FlatPrefixTuning if config.flat else PrefixTuning
        for (pool_path, location), sites in places.items():
            pool = self._pool(target, pool_path, create=True)
            group = pool.prefix_tunings[adapter_name] if adapter_name in pool.prefix_tunings else PrefixTuningGroup()
            pool.prefix_tunings[adapter_name] = group  # type: ignore[index]
            first = sites[0][0]
            hidden_size = target.hidden_size_of(first)
            n_heads, head_dim = head_layout(target.stack_config(first), hidden_size)
            prefix = module_cls(len(sites), n_heads, hidden_size, config, head_dim, generator)
            prefix = prefix.to(ref.device, ref.dtype)
            prefix.train(target.base_model.training)
            group[location] = prefix
            for prefix_id, (idx, path) in enumerate(sites):
                attention = target.layer_module(idx, path)
                site = getattr(attention, POOL_ATTRIBUTE, None)
                if site is None:
                    site = PrefixTuningLayer(pool, idx, location, n_heads, head_dim)  # type: ignore[arg-type]
                    site.train(attention.training)
                    attention.add_module(POOL_ATTRIBUTE, site)
                    site.attach(attention)
                site.prefixes[adapter_name] = prefix_id
                if config.use_gating:
                    gate = nn.Linear(hidden_size, 1 if config.shared_gating else 2)
                    if generator is not None:
                        generator.manual_seed(seed)  # type: ignore[arg-type]
                        _reset_linear(gate, generator)
                    with torch.no_grad():
                        nn.init.normal_(gate.weight, 0.0, 0.02, generator=generator)
                    gate = gate.to(ref.device, ref.dtype)
                    gate.train(attention.training)
                    site.prefix_gates[adapter_name] = gate
        use_adapter_attention(target.base_model, self.name)
        return self.modules(target, adapter_name)

    def _pool(self, target: ModelTarget, path: str | None, create: bool = False) -> PrefixTuningPool | None:
        """The prefix pool at ``path`` below the base model (None: the base model's), created if asked."""
        owner = get_submodule(target.base_model, path or "")
        pool = getattr(owner, POOL_ATTRIBUTE, None)
        if pool is None and create:
            pool = PrefixTuningPool()
            pool.train(owner.training)
            owner.add_module(POOL_ATTRIBUTE, pool)
            object.__setattr__(pool, "_model", target.base_model)  # whose attention configs were switched
            handle = owner.register_forward_pre_hook(pool.precompute, with_kwargs=True)
            object.__setattr__(pool, "_handle", handle)
        return pool if isinstance(pool, PrefixTuningPool) else None

    def _pools(self, target: ModelTarget) -> list[tuple[nn.Module, PrefixTuningPool]]:
        """(owner, pool) of every prefix pool of the model's stacks that exists."""
        found: dict[int, tuple[nn.Module, PrefixTuningPool]] = {}
        for stack in target.spec.stacks:
            owner = get_submodule(target.base_model, stack.prefix_pool or "")
            pool = getattr(owner, POOL_ATTRIBUTE, None)
            if isinstance(pool, PrefixTuningPool):
                found.setdefault(id(pool), (owner, pool))
        return list(found.values())

    @staticmethod
    def _places(target: ModelTarget, config: PrefixTuningConfig) -> dict[tuple[str | None, str], list[tuple[int, str]]]:
        """``{(pool path, location key): [(layer, attention path), ...]}`` of the attentions that get ``config``'s
        prefix: every self-attention (an encoder-decoder's encoder only with ``encoder_prefix``) and, with
        ``cross_prefix``, every cross-attention; layers in ``leave_out`` get none."""
        places: dict[tuple[str | None, str], list[tuple[int, str]]] = {}
        encoder_decoder = target.spec.is_encoder_decoder
        for idx in range(len(target.layers)):
            if idx in config.leave_out:
                continue
            stack = target.stack(idx)
            pool = stack.prefix_pool
            if config.encoder_prefix or not encoder_decoder or stack.cross_attention is not None:
                places.setdefault((pool, stack.prefix_location), []).append((idx, stack.attention_module))
            if config.cross_prefix and stack.cross_attention_module is not None:
                places.setdefault((pool, stack.cross_prefix_location), []).append((idx, stack.cross_attention_module))
        return places

    def _sites(self, target: ModelTarget) -> list[tuple[int, nn.Module, PrefixTuningLayer]]:
        found = []
        for idx in range(len(target.layers)):
            stack = target.stack(idx)
            for path in (stack.attention_module, stack.cross_attention_module):
                attention = target.layer_module(idx, path) if path is not None else None
                site = getattr(attention, POOL_ATTRIBUTE, None)
                if isinstance(site, PrefixTuningLayer):
                    found.append((idx, attention, site))
        return found

    def delete(self, target: ModelTarget, adapter_name: str) -> None:
        for _, attention, site in self._sites(target):
            site.prefixes.pop(adapter_name, None)
            if adapter_name in site.prefix_gates:
                del site.prefix_gates[adapter_name]
            if not site.prefixes:
                site.detach()
                delattr(attention, POOL_ATTRIBUTE)
        for owner, pool in self._pools(target):
            if adapter_name in pool.prefix_tunings:
                del pool.prefix_tunings[adapter_name]
            if len(pool.prefix_tunings) == 0:
                pool.__dict__["_handle"].remove()
                delattr(owner, POOL_ATTRIBUTE)
        if not self._pools(target):
            release_adapter_attention(target.base_model, self.name)

    def modules(self, target: ModelTarget, adapter_name: str) -> LayerModules:
        """``{layer: {location: ModuleDict(prefix=..., gate=...)}}`` as AdapterHub's ``get_adapter``: the
        prefix module (shared by all layers) in the adapter's first layer, gates where they exist; the
        adapter's other layers map to ``{}``."""
        found: LayerModules = {}
        for idx, _, site in self._sites(target):
            if adapter_name not in site.prefixes:
                continue
            entry: dict[str, nn.Module] = {}
            pool = site.pool
            if site.prefixes[adapter_name] == 0 and adapter_name in pool.prefix_tunings:
                entry["prefix"] = pool.prefix_tunings[adapter_name][site.location]
            if adapter_name in site.prefix_gates:
                entry["gate"] = site.prefix_gates[adapter_name]
            found.setdefault(idx, {})
            if entry:
                found[idx][site.location] = nn.ModuleDict(entry)
        return found

    def eject(self, target: ModelTarget, adapter_name: str, config: PrefixTuningConfig) -> PrefixTuningConfig:
        """Turn adapter ``adapter_name``'s MLP into the flat prefixes it produces (outputs stay the same).

        Returns:
            The adapter's config with ``flat=True``, to store in place of ``config``.
        """
        pools = [pool for _, pool in self._pools(target)]
        groups = [pool.prefix_tunings[adapter_name] for pool in pools if adapter_name in pool.prefix_tunings]
        if not groups:
            raise ValueError(f"no prefix tuning adapter named {adapter_name!r}")
        for group in groups:
            group.eject()
        return config.replace(flat=True)


register_method(PrefixTuningMethod())
