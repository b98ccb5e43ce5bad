"""`ModelTarget`: one adapter-enabled model seen through its architecture table entry.

It resolves table paths to modules, numbers the layers, and installs the context guards: hooks on
the model root and on each layer that open a `ForwardContext` for a forward when none is open. The
root guard also takes the adapter arguments of a forward out of its keyword arguments (see
`FORWARD_ARGUMENTS`), and the layer guards replicate the batch for `Parallel`.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Iterator, Sequence
from contextvars import ContextVar
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle
from transformers.utils import ModelOutput

from ..composition import AdapterCompositionBlock, parse_composition
from ..context import AdapterSetup, ForwardContext, RowGroups
from .architectures import ArchitectureSpec, get_architecture
from .modules import get_layer_list, get_submodule
from .spec import LayerStack

SetupResolver = Callable[[], tuple[AdapterCompositionBlock | None, frozenset[int]]]
SetupValidator = Callable[[AdapterCompositionBlock | None], None]
InputHook = Callable[[ForwardContext, nn.Module, tuple, dict[str, Any]], tuple]
"""``hook(ctx, module, args, kwargs) -> args``: sees (and may change) the inputs of the forward that opened
``ctx``; ``kwargs`` may be changed in place, new positional arguments are returned."""

# keyword arguments any forward of an adapter model accepts (taken out before the model sees them)
FORWARD_ARGUMENTS = (
    "adapter_names",  # one adapter name, block or None per row: per-row routing
    "task_ids",  # per-row child index or name for MultiTask
    "output_adapter_fusion_attentions",
    "output_adapter_gating_scores",  # gated adapters record their gates (methods.gating)
    "adapter_input_parallelized",  # the batch is already replicated for Parallel (generate does this)
)
# (an encoder-decoder's decoding step under generate() gives only the decoder inputs and the encoder's outputs)
_BATCH_INPUTS = (
    "input_ids",
    "inputs_embeds",
    "attention_mask",
    "pixel_values",
    "input_features",
    "decoder_input_ids",
    "decoder_inputs_embeds",
)
PADDING_MASKS = "padding_masks"
"""`ForwardContext.scratch` key (with the argument name) of the padding masks of stacks whose mask is not the
forward's ``attention_mask`` (see `stack_padding_mask`)."""


class ModelTarget:
    """The attach points of one model.

    Args:
        base_model: the transformers base model (``model.base_model``).
        spec: its architecture entry; looked up from ``config.model_type`` when None.
        resolve_setup: returns the model's stored (setup, skip_layers); an `AdapterSetup` block
            in force overrides the setup.

    Raises:
        ValueError: if the model type has no architecture entry, or its ``prepare`` refuses the model.
        AttributeError: if a path of the entry does not exist in this model.
    """

    def __init__(
        self,
        base_model: nn.Module,
        resolve_setup: SetupResolver,
        spec: ArchitectureSpec | None = None,
        validate_setup: SetupValidator | None = None,
    ):
        self.base_model = base_model
        self.config = base_model.config
        self.spec = spec or get_architecture(self.config.model_type, base_model)
        if self.spec.prepare is not None:
            self.spec.prepare(base_model)
        self.resolve_setup = resolve_setup
        self.validate_setup = validate_setup or (lambda setup: None)
        # every stack's layers, numbered across stacks (encoder first); the stack of each layer
        self.layers: list[nn.Module] = []
        self._layer_stacks: list[LayerStack] = []
        for stack in self.spec.stacks:
            found = get_layer_list(base_model, stack.layers)
            self.layers += found
            self._layer_stacks += [stack] * len(found)
        # the first stack's hidden size (the size of every layer unless towers differ, see `hidden_size_of`)
        self.hidden_size: int = self.spec.stacks[0].hidden_size(self.config)
        # adapter name -> layers holding its modules (kept by the model's add/delete)
        self.adapter_layers: dict[str, frozenset[int]] = {}
        self._guard_handles: list[RemovableHandle] = []
        # the model the adapter API sits on (the root guarded by `install_context_guards`)
        self.root: nn.Module = base_model
        # name -> hook run on the inputs of every forward that opens a context (see `prepare_inputs`)
        self.input_hooks: dict[str, InputHook] = {}

    def layer_module(self, layer_idx: int, path: str) -> nn.Module:
        """The module at ``path`` inside layer ``layer_idx``."""
        return get_submodule(self.layers[layer_idx], path)

    def stack(self, layer_idx: int) -> LayerStack:
        """The table's `LayerStack` that layer ``layer_idx`` belongs to."""
        return self._layer_stacks[layer_idx]

    def stack_layers(self, stack: LayerStack) -> range:
        """The (model-wide) indices of the layers of ``stack``."""
        indices = [i for i, s in enumerate(self._layer_stacks) if s is stack]
        return range(indices[0], indices[-1] + 1) if indices else range(0)

    def hidden_size_of(self, layer_idx: int) -> int:
        """The hidden size of layer ``layer_idx`` (towers of a multimodal model may differ)."""
        return self._layer_stacks[layer_idx].hidden_size(self.config)

    def stack_config(self, layer_idx: int) -> Any:
        """The config that sizes layer ``layer_idx`` (the model config, or a tower's sub-config)."""
        return self._layer_stacks[layer_idx].config_of(self.config)

    # ---- forward context -------------------------------------------------------------------
    def open_context(self, owner: object, kwargs: dict[str, Any] | None = None) -> ForwardContext | None:
        """Open a forward context owned by ``owner`` unless one is open already. Returns it if opened.

        Args:
            owner: the module whose forward this is.
            kwargs: the forward's keyword arguments; the `FORWARD_ARGUMENTS` are taken out of it.

        Raises:
            ValueError: for ``adapter_names`` naming an unknown adapter or not one per row.
        """
        extra = {k: kwargs.pop(k) for k in FORWARD_ARGUMENTS if kwargs is not None and k in kwargs}
        if ForwardContext.get_context() is not None:
            return None
        setup, skip_layers = self.resolve_setup()
        override = AdapterSetup.get_context()
        if override is not None:
            setup = override.adapter_setup
            self.validate_setup(setup)  # as set_active_adapters does, before anything runs
        routing = extra.get("adapter_names")
        if routing is None:
            routing = _ROUTING.get()
        groups = None
        if routing is not None:
            groups = self._row_groups(routing, _batch_size(kwargs or {}))
        ctx = ForwardContext(setup, skip_layers, row_groups=groups, task_ids=extra.get("task_ids"))
        ctx.options["output_adapter_fusion_attentions"] = bool(extra.get("output_adapter_fusion_attentions"))
        if extra.get("output_adapter_gating_scores"):
            ctx.options["output_adapter_gating_scores"] = True
            ctx.outputs["adapter_gating_scores"] = {}  # present (maybe empty) whenever asked for, as in AdapterHub
        if ctx.parallel_channels > 1 and (extra.get("adapter_input_parallelized") or _INPUT_PARALLELIZED.get()):
            ctx.replicated = True
        ctx.enter(owner)
        return ctx

    def _row_groups(self, per_row: Sequence[Any], batch_size: int | None) -> RowGroups:
        targets = [parse_composition(t) if t is not None and not isinstance(t, str) else t for t in per_row]
        for target in set(targets):
            if target is not None:
                self.validate_setup(parse_composition(target))
        if batch_size is not None and batch_size != len(targets):
            if batch_size % len(targets):
                raise ValueError(f"adapter_names has {len(targets)} entries for a batch of {batch_size} rows")
            # generate() expands each row for beams / return sequences: repeat each entry as it does
            targets = [t for t in targets for _ in range(batch_size // len(targets))]
        return RowGroups.from_rows(targets)

    def close_context(self, owner: object) -> None:
        """Close the current forward context if ``owner`` opened it."""
        ctx = ForwardContext.get_context()
        if ctx is not None:
            ctx.exit(owner)

    def install_context_guards(self, root: nn.Module) -> None:
        """Hook ``root`` and every layer so each forward runs inside a forward context.

        The layer guards matter when a layer runs on its own, e.g. when gradient checkpointing
        recomputes it during the backward pass; they also replicate the batch for `Parallel`.
        """
        self.remove_context_guards()
        self.root = root
        # the base model too: users call ``model.base_model(...)`` directly; and an encoder-decoder's encoder,
        # which generate() runs on its own before the decoding steps
        entry_points = [root, self.base_model]
        if self.spec.is_encoder_decoder:
            entry_points.append(self.base_model.get_encoder())
        for module in dict.fromkeys(entry_points):
            self._guard_handles.append(module.register_forward_pre_hook(self._root_pre_hook, with_kwargs=True))
            self._guard_handles.append(module.register_forward_hook(self._root_post_hook, always_call=True))
        for stack in self.spec.stacks[1:]:
            owner = stack.layers.split(".*.")[0].rpartition(".")[0]
            if owner:  # a stack entered after the replication (a decoder after its encoder) gets copies too
                module = get_submodule(self.base_model, owner)
                self._guard_handles.append(module.register_forward_pre_hook(_stack_guard, with_kwargs=True))
        for idx, layer in enumerate(self.layers):
            hook = _LayerGuard(self, idx)
            self._guard_handles.append(layer.register_forward_pre_hook(hook, with_kwargs=True))
            self._guard_handles.append(layer.register_forward_hook(self._post_hook, always_call=True))

    def remove_context_guards(self) -> None:
        """Remove the hooks installed by :meth:`install_context_guards`."""
        for handle in self._guard_handles:
            handle.remove()
        self._guard_handles.clear()

    def _root_pre_hook(self, module: nn.Module, args: Any, kwargs: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        if args and "input_ids" not in kwargs and isinstance(args[0], torch.Tensor):
            kwargs = {**kwargs, "_first_positional": args[0]}
        ctx = self.open_context(module, kwargs)
        kwargs.pop("_first_positional", None)
        if ctx is not None:
            args = self.prepare_inputs(ctx, module, args, kwargs)
        return args, kwargs

    def prepare_inputs(self, ctx: ForwardContext, module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> tuple:
        """Record the padding mask of the forward that opened ``ctx`` (``ctx.attention_mask``) and run the
        `input_hooks` on its inputs. Returns the positional arguments (``kwargs`` is changed in place)."""
        ctx.attention_mask = padding_mask_rows(forward_argument(module, args, kwargs, "attention_mask"))
        for argument in {s.padding_mask for s in self.spec.stacks} - {"attention_mask"}:  # e.g. a decoder's
            ctx.scratch[(PADDING_MASKS, argument)] = padding_mask_rows(forward_argument(module, args, kwargs, argument))
        for hook in list(self.input_hooks.values()):
            args = hook(ctx, module, args, kwargs)
        return args

    def _post_hook(self, module: nn.Module, args: Any, output: Any) -> None:
        self.close_context(module)

    def _root_post_hook(self, module: nn.Module, args: Any, output: Any) -> Any:
        """Close the forward's context and attach what its hooks collected (e.g.
        ``adapter_fusion_attentions``) to a ``ModelOutput`` as extra fields."""
        ctx = ForwardContext.get_context()
        if ctx is None or not ctx.exit(module):
            return None
        if ctx.outputs and isinstance(output, ModelOutput):
            for key, value in ctx.outputs.items():
                output[key] = value
            return output
        return None

    def input_batch_size(self, module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> int | None:
        """Rows of a forward call's batch (``input_ids``, ``inputs_embeds``, ... or the first positional tensor)."""
        size = _batch_size(kwargs)
        if size is None and args and isinstance(args[0], torch.Tensor):
            size = args[0].shape[0]
        return size

    def replicate_inputs(self, ctx: ForwardContext, module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> tuple:
        """For a `Parallel` setup whose channels differ before the first layer (e.g. at the embeddings): repeat the
        forward's batch inputs once per channel, channel-major, as ``generate()`` does, so every layer sees the
        replicated batch (``ctx.replicated``). Returns the positional arguments (``kwargs`` changes in place)."""
        rows = self.input_batch_size(module, args, kwargs)
        if rows is None or ctx.replicated or ctx.parallel_channels == 1:
            return args
        channels = ctx.parallel_channels

        def repeat(value: Any) -> Any:
            if isinstance(value, torch.Tensor) and value.dim() >= 2 and value.shape[0] == rows:
                return value.repeat(channels, *([1] * (value.dim() - 1)))
            return value

        args = tuple(repeat(a) for a in args)
        for key, value in list(kwargs.items()):
            kwargs[key] = repeat(value)
        ctx.replicated = True
        ctx.attention_mask = padding_mask_rows(forward_argument(module, args, kwargs, "attention_mask"))
        return args

    # ---- Parallel --------------------------------------------------------------------------
    def replication_layer(self, ctx: ForwardContext) -> int:
        """The first layer that runs an adapter of the setup: `Parallel` replicates the batch there,
        so the layers below run once (AdapterDrop). Layer 0 if no layer runs one."""
        layers = [
            idx for name in ctx.active_names for idx in self.adapter_layers.get(name, ()) if idx not in ctx.skip_layers
        ]
        return min(layers, default=0)


class _LayerGuard:
    """Forward pre-hook of one layer: opens a context if none is open (a layer run on its own) and
    replicates the layer's batch inputs for `Parallel` from the replication layer on."""

    def __init__(self, target: ModelTarget, idx: int):
        self.target = target
        self.idx = idx

    def __call__(self, module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> tuple[tuple, dict] | None:
        ctx = self.target.open_context(module)
        if ctx is None:
            ctx = ForwardContext.get_context()
        if ctx is None or ctx.parallel_channels == 1:
            return None
        if not ctx.replicated:
            if self.idx < self.target.replication_layer(ctx):
                return None
            hidden = args[0] if args else kwargs["hidden_states"]
            ctx.original_batch_size = hidden.shape[0]
            ctx.replicated = True
        elif ctx.original_batch_size is None:
            hidden = args[0] if args else kwargs["hidden_states"]
            ctx.original_batch_size = hidden.shape[0] // ctx.parallel_channels
        return _replicate(args, ctx), {k: _replicate(v, ctx) for k, v in kwargs.items()}


def _stack_guard(module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> tuple[tuple, dict] | None:
    """Forward pre-hook of a stack's module (an encoder-decoder's decoder): once `Parallel` has replicated the
    batch in an earlier stack, the stack's own inputs (decoder input ids, the encoder's padding mask) are repeated
    too, before the stack builds its masks from them."""
    ctx = ForwardContext.get_context()
    if ctx is None or ctx.parallel_channels == 1 or not ctx.replicated or ctx.original_batch_size is None:
        return None
    return _replicate(args, ctx), {k: _replicate(v, ctx) for k, v in kwargs.items()}


def _replicate(value: Any, ctx: ForwardContext) -> Any:
    """``value`` with every batch-first tensor of the un-replicated batch size repeated once per channel
    (cached per tensor, so masks shared by all layers are repeated once)."""
    if isinstance(value, torch.Tensor):
        if value.dim() < 2 or value.shape[0] != ctx.original_batch_size:
            return value
        cache = ctx.scratch.setdefault("parallel_replicas", {})
        hit = cache.get(id(value))
        if hit is None or hit[0] is not value:
            hit = (value, value.repeat(ctx.parallel_channels, *([1] * (value.dim() - 1))))
            cache[id(value)] = hit
        return hit[1]
    if isinstance(value, tuple):
        return tuple(_replicate(v, ctx) for v in value)
    if isinstance(value, list):
        return [_replicate(v, ctx) for v in value]
    return value


_ARGUMENT_INDEX: dict[tuple[type, str], int | None] = {}


def _argument_index(module: nn.Module, name: str) -> int | None:
    """Position of parameter ``name`` in ``type(module).forward`` (after ``self``), or None."""
    key = (type(module), name)
    if key not in _ARGUMENT_INDEX:
        try:
            params = list(inspect.signature(type(module).forward).parameters.values())[1:]
        except (TypeError, ValueError):
            params = []
        positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
        names = [p.name for p in params if p.kind in positional]
        _ARGUMENT_INDEX[key] = names.index(name) if name in names else None
    return _ARGUMENT_INDEX[key]


def forward_argument(module: nn.Module, args: tuple, kwargs: dict[str, Any], name: str) -> Any:
    """The value of ``module``'s forward argument ``name`` in a call ``(args, kwargs)``, or None."""
    if name in kwargs:
        return kwargs[name]
    index = _argument_index(module, name)
    return args[index] if index is not None and index < len(args) else None


def replace_forward_argument(module: nn.Module, args: tuple, kwargs: dict[str, Any], name: str, value: Any) -> tuple:
    """Set ``module``'s forward argument ``name`` to ``value`` where the call passes it (``kwargs`` in place,
    or the returned positional arguments), else as a keyword. Returns the positional arguments."""
    index = _argument_index(module, name)
    if name not in kwargs and index is not None and index < len(args):
        return (*args[:index], value, *args[index + 1 :])
    kwargs[name] = value
    return args


def stack_padding_mask(ctx: ForwardContext, stack: LayerStack) -> torch.Tensor | None:
    """The padding mask ``(rows, tokens)`` of ``stack``'s layers in the forward of ``ctx`` (its
    `LayerStack.padding_mask` argument), or None when the forward gave none."""
    if stack.padding_mask == "attention_mask":
        return ctx.attention_mask
    return ctx.scratch.get((PADDING_MASKS, stack.padding_mask))


def padding_mask_rows(mask: Any) -> torch.Tensor | None:
    """A padding mask as ``(rows, tokens)`` (a ``(batch, choices, tokens)`` mask is flattened); None for
    anything else (no mask, or a ready-made 4-D attention mask)."""
    if not isinstance(mask, torch.Tensor) or mask.dim() not in (2, 3) or (mask.dim() == 3 and mask.is_floating_point()):
        return None
    return mask.reshape(-1, mask.shape[-1]) if mask.dim() == 3 else mask


def _batch_size(kwargs: dict[str, Any]) -> int | None:
    for key in (*_BATCH_INPUTS, "_first_positional"):
        value = kwargs.get(key)
        if isinstance(value, torch.Tensor):
            return value.shape[0]
    return None


_ROUTING: ContextVar[Sequence[Any] | None] = ContextVar("adapterkit_routing", default=None)
_INPUT_PARALLELIZED: ContextVar[bool] = ContextVar("adapterkit_input_parallelized", default=False)


@contextlib.contextmanager
def generation_arguments(adapter_names: Sequence[Any] | None, input_parallelized: bool) -> Iterator[None]:
    """Adapter arguments for every forward inside the block (``generate()`` calls forward many times
    and rejects keyword arguments the model's forward does not name)."""
    tokens = (_ROUTING.set(adapter_names), _INPUT_PARALLELIZED.set(input_parallelized))
    try:
        yield
    finally:
        _ROUTING.reset(tokens[0])
        _INPUT_PARALLELIZED.reset(tokens[1])
