"""Prompt tuning (Lester et al., 2021, https://arxiv.org/abs/2104.08691).

An adapter is ``P = prompt_length`` learned vectors inserted into the embedding output ``X`` (after the
embeddings' own position/type embeddings, LayerNorm and dropout, so the prompt gets none of them):

    combine="prefix"              [P; x_0 ... x_T-1]
    combine="prefix_after_bos"    [x_0; P; x_1 ... x_T-1]

The layers see ``T + P`` tokens and the model returns ``T + P`` hidden states (AdapterHub's behaviour; a head
that reads position 0 reads the first prompt vector with ``"prefix"``). Before the model builds its attention
masks, the forward's inputs are made to fit: a 2-D (or multiple-choice 3-D) ``attention_mask`` gets ones at the
prompt's positions, token-level integer ``labels`` (the shape of the input ids) get ``-100`` there, and
``start_positions`` / ``end_positions`` move with their tokens.

Attachment: a forward hook on the table's ``embedding_output`` module and an input hook of the forward context
(`ModelTarget.input_hooks`) for the inputs; the prompts live in ``<base>.prompt_tuning.prompt_tunings.<name>.
prompt_embedding.weight`` (AdapterHub's key). Decoder-only architectures are refused at ``add_adapter`` (see
`PromptTuningMethod.add`).

Composition: `Stack(a, b)` inserts ``a``'s prompt, then ``b``'s (``[P_b; P_a; X]`` with ``"prefix"``), where
AdapterHub uses only the setup's first adapter. Rows are independent: `BatchSplit`, `MultiTask` and per-row
``adapter_names`` give each row its own prompts; rows whose prompts are shorter than the longest are padded at
the end with masked positions, so every row's outputs equal running it alone. `Parallel` (its copies are made
after the embeddings), `Average` and `Split` (prompts of different lengths have no average or token split) are
refused at ``set_active_adapters``.
"""

from __future__ import annotations

import functools
import inspect
import logging
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..composition import BatchSplit, MultiTask, Stack
from ..configs.prompt_tuning import PromptTuningConfig
from ..context import ForwardContext, RowGroups
from ..integration.modules import get_submodule
from ..integration.target import ModelTarget, forward_argument, padding_mask_rows, replace_forward_argument
from .base import AdapterMethod, LayerModules, register_method
from .compose import row_plan

logger = logging.getLogger(__name__)

POOL_ATTRIBUTE = "prompt_tuning"
"""Attribute of the base model holding the `PromptTuningPool` (AdapterHub's name)."""
LOCATION = "prompt"
_PLAN = "prompt_plan"  # ForwardContext.scratch key: the prompt adapters of each input row
_UNPROMPTED = "prompt_unprompted"  # ForwardContext.scratch key: {id(extended input): (extended, original)}
_IGNORE_INDEX = -100


class PromptTuning(nn.Module):
    """One adapter's prompt: ``prompt_embedding`` (``prompt_length x embedding size``).

    Args:
        config: the adapter's config.
        embedding_size: width of the embedding output.
        word_embeddings: the model's input embeddings (for ``prompt_init="from_string"``).
        tokenizer: tokenizer for ``"from_string"`` (None: none could be found; the prompt then starts uniform).
        generator: random source for the uniform initialisation.
    """

    def __init__(
        self,
        config: PromptTuningConfig,
        embedding_size: int,
        word_embeddings: nn.Module,
        tokenizer: Any,
        generator: torch.Generator | None,
    ):
        super().__init__()
        self.config = config
        self.prompt_embedding = nn.Embedding(config.prompt_length, embedding_size)
        with torch.no_grad():
            if config.prompt_init == "from_string" and tokenizer is not None:
                ids: list[int] = list(tokenizer(config.prompt_init_text)["input_ids"])
                if not ids:
                    raise ValueError(f"PromptTuningConfig.prompt_init_text={config.prompt_init_text!r} gives no tokens")
                ids = (ids * math.ceil(config.prompt_length / len(ids)))[: config.prompt_length]
                device = next(word_embeddings.parameters()).device
                weights = word_embeddings(torch.tensor(ids, device=device)).detach()
                self.prompt_embedding.weight.copy_(weights.to(self.prompt_embedding.weight.dtype))
            else:
                scale = config.random_uniform_scale
                nn.init.uniform_(self.prompt_embedding.weight, -scale, scale, generator=generator)

    @property
    def length(self) -> int:
        """Number of prompt vectors."""
        return self.config.prompt_length

    @property
    def at(self) -> int:
        """Where the prompt goes in the sequence (0: before the first token, 1: after it)."""
        return 0 if self.config.combine == "prefix" else 1


class PromptTuningPool(nn.Module):
    """Every adapter's `PromptTuning` (``base_model.prompt_tuning.prompt_tunings``) and the hooks that insert
    them.

    Args:
        target: the model's attach points.
    """

    def __init__(self, target: ModelTarget):
        super().__init__()
        self.prompt_tunings = nn.ModuleDict()
        object.__setattr__(self, "_target", target)  # a reference, not a child module
        path = target.spec.prompt_output or target.spec.embedding_output or target.spec.embeddings
        self._handle = get_submodule(target.base_model, path).register_forward_hook(self._insert)
        embeddings = get_submodule(target.base_model, target.spec.embeddings or path)
        self._embeddings_handle = embeddings.register_forward_pre_hook(self._unprompted_inputs, with_kwargs=True)
        # a model taking positions that its embeddings do not (ModernBERT's rotary layers) derives them from the
        # input length: it gets the prompted length; models whose embeddings take positions (BERT) keep theirs
        self._positions_after_embeddings = _takes(type(target.base_model), "position_ids") and not _takes(
            type(embeddings), "position_ids"
        )
        target.input_hooks[LOCATION] = self._prepare_inputs

    def detach(self) -> None:
        """Remove the hooks."""
        self._handle.remove()
        self._embeddings_handle.remove()
        self._target.input_hooks.pop(LOCATION, None)

    # ---- per-row plan ---------------------------------------------------------------------------------
    def plan(self, ctx: ForwardContext, rows: int) -> list[tuple[str, ...]]:
        """The prompt adapters each of ``rows`` rows inserts, in order (kept in the context for this forward)."""
        plan = ctx.scratch.get(_PLAN)
        if plan is None or len(plan) != rows:
            plan = row_plan(ctx, rows, self.prompt_tunings, _append, start=())
            ctx.scratch[_PLAN] = plan
        return plan

    def _steps(self, names: tuple[str, ...]) -> list[tuple[int, int]]:
        """(position, length) of each insertion of a row inserting ``names``."""
        return [(self.prompt_tunings[n].at, self.prompt_tunings[n].length) for n in names]

    def _per_group(
        self,
        plan: list[tuple[str, ...]],
        value: torch.Tensor,
        fn: Callable[[torch.Tensor, tuple[str, ...]], torch.Tensor],
    ) -> torch.Tensor:
        """``fn(rows, names)`` on the rows of each distinct plan entry, right-padded to the longest and put back in
        row order (``value`` is batch-first; each group's result keeps its own length before padding)."""
        if all(p == plan[0] for p in plan):
            return fn(value, plan[0])
        groups = RowGroups.from_rows(plan, device=value.device)
        parts = [fn(value.index_select(0, idx), names) for names, idx in zip(groups.targets, groups.rows, strict=True)]
        return torch.cat(parts).index_select(0, groups.inverse)

    def _extra(self, plan: list[tuple[str, ...]]) -> int:
        return max(sum(length for _, length in self._steps(names)) for names in plan)

    # ---- inputs ---------------------------------------------------------------------------------------
    def _prepare_inputs(self, ctx: ForwardContext, module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> tuple:
        """Input hook: make the mask, token labels and answer positions fit the prompted sequence."""
        if not ctx.active_names & set(self.prompt_tunings):
            return args
        rows = self._target.input_batch_size(module, args, kwargs)
        ids = forward_argument(module, args, kwargs, "input_ids")
        embeds = forward_argument(module, args, kwargs, "inputs_embeds")
        tokens = ids.shape[-1] if isinstance(ids, torch.Tensor) else embeds.shape[-2] if embeds is not None else None
        encoder_decoder = self._target.spec.is_encoder_decoder
        mask = forward_argument(module, args, kwargs, "attention_mask")
        if tokens is None and encoder_decoder and isinstance(mask, torch.Tensor):
            tokens = _unprompted_length(kwargs.get("encoder_outputs"), mask, self, ctx, rows)
        if rows is not None and tokens is None and not encoder_decoder:
            lengths = {sum(n for _, n in self._steps(names)) for names in self.plan(ctx, rows)}
            if len(lengths) > 1:  # e.g. images: no token mask to pad the shorter prompts with
                raise ValueError(
                    f"prompt tuning: the rows of this batch get prompts of different lengths {sorted(lengths)}; "
                    "padding the shorter ones needs a mask over the tokens, which this "
                    f"{self._target.spec.model_type!r} forward does not take (no input_ids or inputs_embeds); give "
                    "the rows prompts of one length"
                )
        if rows is None or tokens is None:
            return args
        plan = self.plan(ctx, rows)
        if not any(plan):
            return args
        extra = self._extra(plan)
        if mask is None and len({sum(n for _, n in self._steps(names)) for names in plan}) > 1:
            # rows with shorter prompts get padding positions, which need a mask
            shape = ids.shape if isinstance(ids, torch.Tensor) else embeds.shape[:-1]
            device = ids.device if isinstance(ids, torch.Tensor) else embeds.device
            mask = torch.ones(shape, dtype=torch.long, device=device)
        unprompted: dict[int, tuple[torch.Tensor, torch.Tensor | None]] = {}
        if isinstance(mask, torch.Tensor) and mask.dim() in (2, 3) and mask.shape[-1] == tokens:
            new_mask = self._per_group(plan, mask, lambda m, names: self._insert_along(m, names, 1, 0, extra))
            args = replace_forward_argument(module, args, kwargs, "attention_mask", new_mask)
            ctx.attention_mask = padding_mask_rows(new_mask)
            unprompted[id(new_mask)] = (new_mask, mask)
        if (
            self._positions_after_embeddings
            and _takes(type(module), "position_ids")
            and forward_argument(module, args, kwargs, "position_ids") is None
        ):
            device = new_mask.device if unprompted else (ids if isinstance(ids, torch.Tensor) else embeds).device
            positions = torch.arange(tokens + extra, device=device).unsqueeze(0)
            args = replace_forward_argument(module, args, kwargs, "position_ids", positions)
        ctx.scratch[_UNPROMPTED] = unprompted
        if encoder_decoder:  # labels and answer positions belong to the decoder's (unprompted) tokens
            return args
        labels = kwargs.get("labels")
        if (
            isinstance(labels, torch.Tensor)
            and not labels.is_floating_point()
            and labels.dim() >= 2
            and labels.shape[0] == rows
            and labels.shape[-1] == tokens
        ):
            kwargs["labels"] = self._per_group(
                plan, labels, lambda v, names: self._insert_along(v, names, _IGNORE_INDEX, _IGNORE_INDEX, extra)
            )
        for key in ("start_positions", "end_positions"):
            positions = kwargs.get(key)
            if isinstance(positions, torch.Tensor) and positions.dim() == 1 and positions.shape[0] == rows:
                kwargs[key] = self._per_group(plan, positions, self._shift_positions)
        return args

    def _insert_along(
        self, value: torch.Tensor, names: tuple[str, ...], fill: int, pad: int, total: int
    ) -> torch.Tensor:
        """``value`` (``(..., tokens)``) with ``fill`` at the prompt positions of ``names``, then ``pad`` up to
        ``total`` extra positions."""
        added = 0
        for at, length in self._steps(names):
            block = value.new_full((*value.shape[:-1], length), fill)
            value = torch.cat([value[..., :at], block, value[..., at:]], dim=-1)
            added += length
        if added < total:
            value = torch.cat([value, value.new_full((*value.shape[:-1], total - added), pad)], dim=-1)
        return value

    def _shift_positions(self, positions: torch.Tensor, names: tuple[str, ...]) -> torch.Tensor:
        for at, length in self._steps(names):
            positions = torch.where(positions >= at, positions + length, positions)
        return positions

    def _unprompted_inputs(self, module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> tuple | None:
        """Forward pre-hook of the embeddings: they run on the tokens alone, so an extended mask passed into them
        (DeBERTa zeroes padded embeddings with it) is given back at its original length."""
        ctx = ForwardContext.get_context()
        swaps = ctx.scratch.get(_UNPROMPTED) if ctx is not None else None
        if not swaps:
            return None

        def original(value: Any) -> Any:
            hit = swaps.get(id(value))
            return hit[1] if hit is not None and hit[0] is value else value

        return tuple(original(a) for a in args), {k: original(v) for k, v in kwargs.items()}

    # ---- the embedding output ---------------------------------------------------------------------------
    def _insert(self, module: nn.Module, args: tuple, output: Any) -> Any:
        """Forward hook on the embedding output: insert each row's prompts."""
        ctx = ForwardContext.get_context()
        if ctx is None or not ctx.active_names & set(self.prompt_tunings):
            return None
        hidden = output[0] if isinstance(output, tuple) else output
        plan = ctx.scratch.get(_PLAN)
        if plan is None:
            plan = self.plan(ctx, hidden.shape[0])
        if len(plan) != hidden.shape[0]:
            if hidden.shape[0] % len(plan):
                raise RuntimeError(f"prompt tuning: the embeddings have {hidden.shape[0]} rows, the inputs {len(plan)}")
            per = hidden.shape[0] // len(plan)  # multiple choice: each input row's choices, in order
            plan = [names for names in plan for _ in range(per)]
        if not any(plan):
            return None
        extra = self._extra(plan)
        hidden = self._per_group(plan, hidden, lambda h, names: self._prompted(h, names, extra))
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

    def _prompted(self, hidden: torch.Tensor, names: tuple[str, ...], total: int) -> torch.Tensor:
        added = 0
        for name in names:
            prompt = self.prompt_tunings[name]
            vectors = prompt.prompt_embedding.weight.to(hidden.dtype).unsqueeze(0).expand(hidden.shape[0], -1, -1)
            at = prompt.at
            hidden = torch.cat([hidden[:, :at], vectors, hidden[:, at:]], dim=1)
            added += prompt.length
        if added < total:
            hidden = torch.cat([hidden, hidden.new_zeros(hidden.shape[0], total - added, hidden.shape[2])], dim=1)
        return hidden


@functools.cache
def _takes(module_type: type, name: str) -> bool:
    """Whether ``module_type.forward`` has a parameter ``name``."""
    try:
        return name in inspect.signature(module_type.forward).parameters
    except (TypeError, ValueError):
        return False


def _unprompted_length(
    encoder_outputs: Any, mask: torch.Tensor, pool: PromptTuningPool, ctx: ForwardContext, rows: int | None
) -> int | None:
    """The encoder's input length when an encoder-decoder forward gets ``encoder_outputs`` (prompted already)
    with the unprompted padding ``mask`` (generate()'s decoding steps); None when the mask fits the outputs."""
    hidden = getattr(encoder_outputs, "last_hidden_state", None)
    if hidden is None and isinstance(encoder_outputs, (tuple, list)) and encoder_outputs:
        hidden = encoder_outputs[0]
    if not isinstance(hidden, torch.Tensor) or rows is None:
        return None
    plan = pool.plan(ctx, rows)
    if any(plan) and hidden.shape[1] == mask.shape[-1] + pool._extra(plan):
        return mask.shape[-1]
    return None


def _append(value: object, name: str) -> tuple[str, ...]:
    return (*value, name)  # type: ignore[misc]


def _find_tokenizer(target: ModelTarget) -> Any:
    """The model's tokenizer, from ``config.tokenizer_name_or_path`` (AdapterHub's key) or ``config.name_or_path``;
    None if there is none or it cannot be loaded."""
    from transformers import AutoTokenizer

    for source in (
        getattr(target.config, "tokenizer_name_or_path", None),
        getattr(target.config, "name_or_path", None),
    ):
        if not source:
            continue
        try:
            return AutoTokenizer.from_pretrained(source)
        except (OSError, ValueError) as e:
            logger.warning("could not load a tokenizer from %r: %s", source, e)
    return None


class PromptTuningMethod(AdapterMethod):
    """Registers prompt tuning (`PromptTuningConfig`) at the table's embedding output."""

    name = "prompt_tuning"
    config_class = PromptTuningConfig
    module_attribute = "prompt_tunings"
    supported_blocks = (Stack, BatchSplit, MultiTask)

    def add(  # type: ignore[override]
        self, target: ModelTarget, adapter_name: str, config: PromptTuningConfig, tokenizer: Any = None
    ) -> LayerModules:
        """Create ``adapter_name``'s prompt.

        Args:
            target: the model's attach points.
            adapter_name: the adapter's name.
            config: its config.
            tokenizer: for ``prompt_init="from_string"``: a callable returning ``{"input_ids": [...]}`` for a text
                (a transformers tokenizer). Without it the model config's ``tokenizer_name_or_path`` or
                ``name_or_path`` is loaded with ``AutoTokenizer``; if that fails too, the prompt starts uniform
                (with a warning; loading saved weights does not need the tokenizer).

        Raises:
            ValueError: for a decoder-only architecture, one without token embeddings, one whose entry declares
                a `prompt_tuning_refusal`, or ``prompt_init="from_string"`` on patch embeddings.
        """
        if (target.spec.prompt_output or target.spec.embedding_output or target.spec.embeddings) is None:
            raise ValueError(
                f"prompt tuning is not available for {target.spec.model_type!r}: the model has no token embeddings "
                "at its input (its table entry has embeddings=None) to put prompts beside; use prefix tuning"
            )
        if target.spec.decoder_only:
            raise ValueError(
                f"prompt tuning is not available for {target.spec.model_type!r} (decoder-only): the prompt would "
                "shift the positions the model derives from the input length (GPT-2 also reshapes its output to the "
                "input length), labels and the KV cache of generate(); AdapterHub refuses these models too. Use "
                "prefix tuning, which adds key/value slots without changing the sequence."
            )
        if target.spec.prompt_tuning_refusal:
            raise ValueError(
                f"prompt tuning is not available for {target.spec.model_type!r}: {target.spec.prompt_tuning_refusal}"
            )
        base = target.base_model
        pool = getattr(base, POOL_ATTRIBUTE, None)
        if pool is None:
            pool = PromptTuningPool(target)
            base.add_module(POOL_ATTRIBUTE, pool)
        word_embeddings = base.get_input_embeddings()
        tokens = isinstance(word_embeddings, nn.Embedding)  # else patch embeddings (vision): sized by the layers
        size = getattr(target.config, "embedding_size", None) or (
            word_embeddings.weight.shape[1] if tokens else target.hidden_size
        )
        if config.prompt_init == "from_string" and not tokens:
            raise ValueError(
                f"PromptTuningConfig.prompt_init='from_string' needs token embeddings; {target.spec.model_type!r} "
                f"embeds its input with a {type(word_embeddings).__name__}: use prompt_init='random_uniform'"
            )
        if config.prompt_init == "from_string" and tokenizer is None:
            tokenizer = _find_tokenizer(target)
            if tokenizer is None:
                logger.warning(
                    "prompt tuning adapter %r: prompt_init='from_string' needs a tokenizer (pass tokenizer=... to "
                    "add_adapter, or set config.tokenizer_name_or_path); its prompt starts uniform instead",
                    adapter_name,
                )
        generator = (
            torch.Generator().manual_seed(config.init_weights_seed) if config.init_weights_seed is not None else None
        )
        prompt = PromptTuning(config, size, word_embeddings, tokenizer, generator)
        ref = next(word_embeddings.parameters())
        prompt.to(ref.device, ref.dtype).train(base.training)
        pool.prompt_tunings[adapter_name] = prompt
        return {-1: {LOCATION: prompt}}

    def delete(self, target: ModelTarget, adapter_name: str) -> None:
        base = target.base_model
        pool = getattr(base, POOL_ATTRIBUTE, None)
        if pool is None or adapter_name not in pool.prompt_tunings:
            return
        del pool.prompt_tunings[adapter_name]
        if len(pool.prompt_tunings) == 0:
            pool.detach()
            delattr(base, POOL_ATTRIBUTE)

    def modules(self, target: ModelTarget, adapter_name: str) -> LayerModules:
        pool = getattr(target.base_model, POOL_ATTRIBUTE, None)
        if pool is None or adapter_name not in pool.prompt_tunings:
            return {}
        return {-1: {LOCATION: pool.prompt_tunings[adapter_name]}}


register_method(PromptTuningMethod())
