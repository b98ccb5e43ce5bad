"""`FlexibleHeadsMixin`: named, switchable prediction heads on an adapter model."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import nn

from ..composition import AdapterCompositionBlock, BatchSplit, Fuse, MultiTask, Parallel, Stack, combination_weights
from ..context import AdapterSetup, ForwardContext, RowGroups
from ..heads import HEAD_TYPES, PredictionHead
from ..heads.outputs import MultiHeadOutput

#: What selects heads: a name, a list of names (one per `Parallel` channel, or several heads on the
#: same rows), a `BatchSplit` of names (one per split of the batch), or None.
HeadSetup = str | list[str | None] | BatchSplit | None


@dataclass(frozen=True)
class HeadPlan:
    """The heads one forward runs and on which rows of the base model's output.

    Attributes:
        kind: ``"single"`` (one head, all rows: the head's own output type), ``"parallel"`` (head i
            on channel i's rows), ``"batch_split"`` (head i on split i), ``"all_rows"`` (every head
            on all rows), ``"per_row"`` (per-row routing: each row through its target's head).
        heads: the head names, in output order.
        batch_sizes: rows per head for ``"batch_split"``.
        group_heads: for ``"per_row"``, the index into ``heads`` of each routing group.
        groups: for ``"per_row"``, the forward's routing groups.
    """

    kind: str
    heads: tuple[str, ...]
    batch_sizes: tuple[int, ...] = ()
    group_heads: tuple[int, ...] | None = None
    groups: RowGroups | None = None


class FlexibleHeadsMixin:
    """Several named heads on one model; one (or none) is active per forward.

    Head choice per forward: the ``head=`` argument, else the head of an enclosing `AdapterSetup`,
    else `active_head`. With no head the base model's outputs are returned. A `Parallel` setup runs
    one head per channel and a top-level `BatchSplit` one head per split, returning a
    `MultiHeadOutput` (see docs/parallel_and_generation.md).
    """

    heads: nn.ModuleDict
    _active_head: str | None
    _active_heads: list[str | None] | BatchSplit | None
    _custom_head_types: dict[str, type[PredictionHead]]

    def _init_heads(self) -> None:
        self.heads = nn.ModuleDict()
        self._active_head = None  # the single active head
        self._active_heads = None  # a multi-head setting (list or BatchSplit), overriding it
        self._custom_head_types = {}
        saved = getattr(self.config, "prediction_heads", None) or {}  # type: ignore[attr-defined]
        self.config.prediction_heads = {}  # type: ignore[attr-defined]
        for name, config in saved.items():
            self.add_prediction_head_from_config(name, config, set_active=False)

    # ---- adding and removing ---------------------------------------------------------------
    def head_class(self, head_type: str) -> type[PredictionHead]:
        """The head class registered for ``head_type``.

        Raises:
            ValueError: for an unknown type, listing the known ones.
        """
        cls = self._custom_head_types.get(head_type) or HEAD_TYPES.get(head_type)
        if cls is None:
            known = sorted([*HEAD_TYPES, *self._custom_head_types])
            raise ValueError(f"unknown head type {head_type!r}; known: {known}")
        return cls

    def add_prediction_head(
        self, head: PredictionHead, overwrite_ok: bool = False, set_active: bool = True
    ) -> None:
        """Add a built head under ``head.name``.

        Raises:
            ValueError: if the name is taken and ``overwrite_ok`` is False.
        """
        if head.name in self.heads and not overwrite_ok:
            raise ValueError(
                f"a head named {head.name!r} exists already; pass overwrite_ok=True to replace it"
            )
        self.heads[head.name] = head
        self.config.prediction_heads[head.name] = head.config  # type: ignore[attr-defined]
        if set_active:
            self.active_head = head.name

    def add_prediction_head_from_config(
        self, head_name: str, config: dict[str, Any], overwrite_ok: bool = False, set_active: bool = True
    ) -> None:
        """Build and add a head from its saved config dict (``head_type`` selects the class)."""
        config = dict(config)
        cls = self.head_class(config.pop("head_type"))
        label2id = config.pop("label2id", None)
        if label2id is not None:
            config["id2label"] = {int(i): label for label, i in label2id.items()}
        self.add_prediction_head(
            cls(self, head_name, **config), overwrite_ok=overwrite_ok, set_active=set_active
        )

    def add_classification_head(
        self,
        head_name: str,
        num_labels: int = 2,
        layers: int = 2,
        activation_function: str = "tanh",
        overwrite_ok: bool = False,
        multilabel: bool = False,
        id2label: dict[int, str] | None = None,
        use_pooler: bool = False,
    ) -> None:
        """Add a sequence classification head (multi-label with ``multilabel=True``)."""
        head_type = "multilabel_classification" if multilabel else "classification"
        head = self.head_class(head_type)(
            self,
            head_name,
            num_labels=num_labels,
            layers=layers,
            activation_function=activation_function,
            id2label=id2label,
            use_pooler=use_pooler,
        )
        self.add_prediction_head(head, overwrite_ok=overwrite_ok)

    def add_image_classification_head(
        self,
        head_name: str,
        num_labels: int = 2,
        layers: int = 1,
        activation_function: str = "tanh",
        overwrite_ok: bool = False,
        multilabel: bool = False,
        id2label: dict[int, str] | None = None,
        use_pooler: bool | None = None,
    ) -> None:
        """Add an image classification head (ViT, BEiT; multi-label with ``multilabel=True``).

        Args:
            use_pooler: read the base model's pooler output instead of the class token; None: the
                architecture's default (True for BEiT, whose heads always read its mean-pooling pooler).

        Raises:
            ValueError: if the name is taken and ``overwrite_ok`` is False.
        """
        if use_pooler is None:
            use_pooler = self._adapter_target.spec.pooled_summary  # type: ignore[attr-defined]
        head = self.head_class("image_classification")(
            self,
            head_name,
            num_labels=num_labels,
            layers=layers,
            activation_function=activation_function,
            multilabel=multilabel,
            id2label=id2label,
            use_pooler=use_pooler,
        )
        self.add_prediction_head(head, overwrite_ok=overwrite_ok)

    def add_tagging_head(
        self,
        head_name: str,
        num_labels: int = 2,
        layers: int = 1,
        activation_function: str = "tanh",
        overwrite_ok: bool = False,
        id2label: dict[int, str] | None = None,
    ) -> None:
        """Add a token classification head (one label per token).

        Raises:
            ValueError: if the name is taken and ``overwrite_ok`` is False.
        """
        head = self.head_class("tagging")(
            self,
            head_name,
            num_labels=num_labels,
            layers=layers,
            activation_function=activation_function,
            id2label=id2label,
        )
        self.add_prediction_head(head, overwrite_ok=overwrite_ok)

    def add_qa_head(
        self,
        head_name: str,
        num_labels: int = 2,
        layers: int = 1,
        activation_function: str = "tanh",
        overwrite_ok: bool = False,
        id2label: dict[int, str] | None = None,
    ) -> None:
        """Add an extractive question answering head (start/end logits).

        Raises:
            ValueError: if the name is taken and ``overwrite_ok`` is False, or ``num_labels`` is not 2.
        """
        head = self.head_class("question_answering")(
            self,
            head_name,
            num_labels=num_labels,
            layers=layers,
            activation_function=activation_function,
            id2label=id2label,
        )
        self.add_prediction_head(head, overwrite_ok=overwrite_ok)

    def add_multiple_choice_head(
        self,
        head_name: str,
        num_choices: int = 2,
        layers: int = 2,
        activation_function: str = "tanh",
        overwrite_ok: bool = False,
        id2label: dict[int, str] | None = None,
        use_pooler: bool = False,
    ) -> None:
        """Add a multiple choice head (inputs ``(batch, num_choices, seq)``).

        Raises:
            ValueError: if the name is taken and ``overwrite_ok`` is False.
        """
        head = self.head_class("multiple_choice")(
            self,
            head_name,
            num_choices=num_choices,
            layers=layers,
            activation_function=activation_function,
            id2label=id2label,
            use_pooler=use_pooler,
        )
        self.add_prediction_head(head, overwrite_ok=overwrite_ok)

    def add_masked_lm_head(
        self, head_name: str, activation_function: str = "gelu", layers: int = 2, overwrite_ok: bool = False
    ) -> None:
        """Add a BERT-style masked LM head whose output weight is tied to the input embeddings.

        Raises:
            ValueError: if the name is taken and ``overwrite_ok`` is False.
        """
        head = self.head_class("masked_lm")(
            self, head_name, layers=layers, activation_function=activation_function
        )
        self.add_prediction_head(head, overwrite_ok=overwrite_ok)

    def add_causal_lm_head(
        self, head_name: str, activation_function: str = "gelu", layers: int = 2, overwrite_ok: bool = False
    ) -> None:
        """Add a causal LM head (with LayerNorm and output bias) tied to the input embeddings.

        Raises:
            ValueError: if the name is taken and ``overwrite_ok`` is False.
        """
        head = self.head_class("causal_lm")(
            self,
            head_name,
            layers=layers,
            layer_norm=True,
            bias=True,
            activation_function=activation_function,
        )
        self.add_prediction_head(head, overwrite_ok=overwrite_ok)

    def add_seq2seq_lm_head(self, head_name: str, layers: int = 1, overwrite_ok: bool = False) -> None:
        """Add a sequence-to-sequence LM head on the decoder output (encoder-decoder models), tied to the input
        embeddings when the model ties them (see `heads.Seq2SeqLMHead`).

        Raises:
            ValueError: if the name is taken and ``overwrite_ok`` is False.
        """
        head = self.head_class("seq2seq_lm")(self, head_name, layers=layers)
        self.add_prediction_head(head, overwrite_ok=overwrite_ok)

    def register_custom_head(self, identifier: str, head_cls: type[PredictionHead]) -> None:
        """Make ``head_cls`` available as head type ``identifier`` on this model."""
        head_cls.head_type = head_cls.head_type or identifier
        self._custom_head_types[identifier] = head_cls

    def add_custom_head(
        self,
        head_type: str,
        head_name: str,
        overwrite_ok: bool = False,
        set_active: bool = True,
        **kwargs: Any,
    ) -> None:
        """Add a head of a type registered with `register_custom_head`."""
        head = self.head_class(head_type)(self, head_name, **kwargs)
        head.config["head_type"] = head_type
        self.add_prediction_head(head, overwrite_ok=overwrite_ok, set_active=set_active)

    def average_head(
        self,
        head_name: str,
        head_list: list[str] | Mapping[str, float],
        weights: list[float] | None = None,
        normalize_weights: bool = True,
        overwrite_ok: bool = False,
        set_active: bool = False,
    ) -> None:
        """Add head ``head_name`` whose parameters are the weighted sum of heads of one class and config.

        Args:
            head_name: the new head.
            head_list: the heads to combine, or a dict name -> weight.
            weights: one weight per head (default: equal weights ``1 / n``).
            normalize_weights: divide given weights by their sum.
            overwrite_ok: replace an existing head ``head_name``.
            set_active: make the new head the active head.

        Raises:
            ValueError: for an unknown head, an empty list, weights that do not match or sum to 0, heads of
                different classes or configs (naming them), or a taken name.
        """
        if isinstance(head_list, Mapping):
            weights = list(head_list.values()) if weights is None else weights
        names = list(head_list)
        if not names:
            raise ValueError("average_head needs at least one head to average")
        for name in names:
            if name not in self.heads:
                raise ValueError(f"no head named {name!r}; this model has {sorted(self.heads)}")
        first = self.heads[names[0]]

        def comparable(config: Mapping[str, Any]) -> dict[str, Any]:
            return {k: v for k, v in config.items() if k != "dropout_prob"}

        for name in names[1:]:
            head = self.heads[name]
            if type(head) is not type(first) or comparable(head.config) != comparable(first.config):
                raise ValueError(
                    f"cannot average heads {names[0]!r} ({type(first).__name__}) and {name!r} "
                    f"({type(head).__name__}): heads must have one class and config"
                )
        if head_name in self.heads and not overwrite_ok:
            raise ValueError(f"a head named {head_name!r} exists already; pass overwrite_ok=True to replace it")
        shares = combination_weights(len(names), weights, normalize_weights, "average_head", f"heads {names}")
        combined = dict(zip(names, shares, strict=True))
        averaged: dict[str, torch.Tensor] = {}
        with torch.no_grad():
            for name, weight in combined.items():
                for key, value in self.heads[name].state_dict().items():
                    if not value.is_floating_point():
                        averaged.setdefault(key, value.clone())
                    elif key in averaged:
                        averaged[key] += weight * value
                    else:
                        averaged[key] = weight * value
        if head_name in self.heads:
            self.delete_head(head_name)
        self.add_prediction_head_from_config(head_name, first.config, set_active=set_active)
        self.heads[head_name].load_state_dict(averaged)

    def delete_head(self, head_name: str) -> None:
        """Remove a head (an unknown name is ignored)."""
        if head_name not in self.heads:
            return
        del self.heads[head_name]
        self.config.prediction_heads.pop(head_name, None)  # type: ignore[attr-defined]
        tied = getattr(self, "all_tied_weights_keys", None)
        if isinstance(tied, dict):  # transformers' record of this head's tie to the embeddings
            for key in [k for k in tied if k.startswith(f"heads.{head_name}.")]:
                del tied[key]
        if self._active_head == head_name:
            self._active_head = None
        if self._active_heads is not None and head_name in list(self._active_heads):
            self._active_heads = None

    # ---- persistence -----------------------------------------------------------------------
    def save_head(self, save_directory: str | os.PathLike, head_name: str, use_safetensors: bool = True) -> None:
        """Write head ``head_name`` to a folder (``head_config.json`` + ``model_head.safetensors``)."""
        from ..io import save_head

        if head_name not in self.heads:
            raise ValueError(f"no head named {head_name!r}; this model has {sorted(self.heads)}")
        save_head(self, save_directory, head_name, use_safetensors=use_safetensors)

    def load_head(self, save_directory: str | os.PathLike, load_as: str | None = None,
                  id2label: dict[int, str] | None = None) -> str:
        """Load a head folder written by `save_head` (or AdapterHub). Returns the head's name."""
        from ..io import load_head

        return load_head(self, save_directory, load_as=load_as, id2label=id2label)

    def save_all_heads(self, save_directory: str | os.PathLike, use_safetensors: bool = True) -> None:
        """Save every head into its own sub-folder of ``save_directory``."""
        for name in self.heads:
            self.save_head(os.path.join(save_directory, name), name, use_safetensors=use_safetensors)

    # ---- activation ------------------------------------------------------------------------
    @property
    def active_head(self) -> HeadSetup:
        """The head(s) a forward uses when it names none.

        One of: a head name (all rows); a list of names (one per `Parallel` channel, or, with a
        single-channel setup, every head on all rows); a `BatchSplit` of names (one head per split
        of the batch); None (the base model's outputs). A None entry in a list or `BatchSplit`
        stands for the model's single active head (the last name set here). `set_active_adapters`
        sets it from the setup. Setting a name also switches ``config.id2label``.
        """
        return self._active_heads if self._active_heads is not None else self._active_head

    @active_head.setter
    def active_head(self, head_setup: HeadSetup) -> None:
        if head_setup is None or isinstance(head_setup, str):
            if head_setup is not None and head_setup not in self.heads:
                raise ValueError(f"no head named {head_setup!r}; this model has {sorted(self.heads)}")
            self._active_heads = None
            self._active_head = head_setup
            if head_setup is not None and "label2id" in self.heads[head_setup].config:
                label2id = self.heads[head_setup].config["label2id"]
                self.config.label2id = dict(label2id)  # type: ignore[attr-defined]
                self.config.id2label = {i: label for label, i in label2id.items()}  # type: ignore[attr-defined]
            return
        self._active_heads = self._checked_head_setup(head_setup, "active_head")

    def _checked_head_setup(self, head_setup: Any, where: str) -> list[str | None] | BatchSplit:
        """A list or `BatchSplit` of head names (None entries allowed), each checked to exist.

        Raises:
            TypeError: for another kind of value.
            ValueError: for a name that is not a head of this model.
        """
        if isinstance(head_setup, BatchSplit):
            entries = list(head_setup.children)
        elif isinstance(head_setup, (list, tuple)):
            entries = list(head_setup)
        else:
            raise TypeError(
                f"{where} must be a head name, a list of head names or a BatchSplit of head names, "
                f"got {type(head_setup).__name__}"
            )
        for entry in entries:
            if entry is not None and not isinstance(entry, str):
                raise TypeError(f"{where} entries must be head names or None, got {entry!r}")
            if entry is not None and entry not in self.heads:
                raise ValueError(f"{where} names no head {entry!r}; this model has {sorted(self.heads)}")
        return head_setup if isinstance(head_setup, BatchSplit) else entries

    def get_labels_dict(self, head_name: str | None = None) -> dict[int, str] | None:
        """``id -> label`` of a head (default: the single active head)."""
        head = self.heads[head_name or self._active_head]
        label2id = head.config.get("label2id")
        return {i: label for label, i in label2id.items()} if label2id else None

    def get_labels(self, head_name: str | None = None) -> list[str] | None:
        """The label names of a head, ordered by id."""
        labels = self.get_labels_dict(head_name)
        return [labels[i] for i in sorted(labels)] if labels else None

    def set_active_adapters(self, adapter_setup: Any, skip_layers: list[int] | None = None) -> None:
        """As the adapter mixin's, and also activate the head(s) the setup implies when they exist.

        A single-channel setup activates the head named after its last adapter (or after its
        `Fuse`, when such a head exists); a `Parallel` setup one head per channel; a top-level
        `BatchSplit` one head per split (see `active_head`). When such heads are missing the
        active head is left as it is (and a `Parallel` forward then raises, naming them).
        """
        super().set_active_adapters(adapter_setup, skip_layers=skip_layers)  # type: ignore[misc]
        setup = self.adapters_config.active_setup  # type: ignore[attr-defined]
        self._active_heads = None
        if setup is None:
            return
        derived = self._derived_heads(setup)
        if isinstance(derived, str):
            if derived in self.heads:
                self.active_head = derived
            return
        if derived is not None and all(self._head_or_default(n) in self.heads for n in derived):
            resolved = [self._head_or_default(n) for n in derived]
            if isinstance(derived, BatchSplit):
                self._active_heads = BatchSplit(*resolved, batch_sizes=derived.batch_sizes)
            else:
                self._active_heads = resolved

    # ---- head choice per forward -----------------------------------------------------------
    def _head_of(self, node: Any) -> str | None:
        """The head a channel / split / routing target implies: its last adapter, or the name of a
        trailing `Fuse` when a head of that name exists; None for an identity (no adapter) and for a
        trailing `MultiTask` (its rows belong to different tasks)."""
        if node is None or isinstance(node, str):
            return node
        tail = node
        while isinstance(tail, Stack):
            tail = tail.children[-1]
        if isinstance(tail, Fuse) and tail.name in self.heads:
            return tail.name
        if isinstance(tail, MultiTask):
            return None
        return node.last()

    def _derived_heads(self, setup: AdapterCompositionBlock) -> str | list[str | None] | BatchSplit | None:
        """The heads a setup implies (AdapterHub's ``parse_heads_from_composition``, plus Fuse names):
        one per `Parallel` channel, a `BatchSplit` of heads for a top-level `BatchSplit` (also as the
        last child of the top-level Stack), else one name. None entries: identity children."""
        parallel = setup if isinstance(setup, Parallel) else None
        if parallel is None and isinstance(setup, Stack):
            parallel = next((c for c in setup.children if isinstance(c, Parallel)), None)
        if parallel is not None:
            return [self._head_of(c) for c in parallel.children]
        split = setup if isinstance(setup, BatchSplit) else None
        if split is None and isinstance(setup, Stack) and isinstance(setup.children[-1], BatchSplit):
            split = setup.children[-1]
        if split is not None:
            return BatchSplit(*[self._head_of(c) for c in split.children], batch_sizes=split.batch_sizes)
        return self._head_of(setup)

    def _head_or_default(self, name: str | None) -> str | None:
        """``name``, or the single active head for a None (identity) entry."""
        return self._active_head if name is None else name

    def _head_plan(self, head: HeadSetup, ctx: ForwardContext | None) -> HeadPlan | None:
        """Which heads this forward runs on which rows (None: return the base model's outputs).

        Priority: the ``head`` argument, an enclosing `AdapterSetup`'s ``head_setup`` (given, or
        derived from its adapters), `active_head`; a `Parallel` setup needs one head per channel
        (derived from the channels when the chosen setting is not such a list).

        Raises:
            ValueError: for a head that does not exist, a head list whose length is not the number
                of `Parallel` channels, or a `Parallel` setup whose channels' heads are missing.
        """
        if ctx is not None:
            setup, channels, groups = ctx.setup, ctx.parallel_channels, ctx.row_groups
        else:
            setup, _ = self._stored_setup()  # type: ignore[attr-defined]
            override = AdapterSetup.get_context()
            setup = override.adapter_setup if override is not None else setup
            channels, groups = (setup.parallel_channels if setup is not None else 1), None
        override = AdapterSetup.get_context()
        if head is not None:
            spec, where, explicit = head, "head", True
        elif override is not None and override.head_setup_given:
            spec, where, explicit = override.head_setup, "AdapterSetup head_setup", True
        elif override is not None and override.adapter_setup is not None and groups is None:
            spec, where, explicit = self._derived_heads(override.adapter_setup), "the AdapterSetup's heads", False
            if not self._resolvable(spec):
                spec = self.active_head
        else:
            spec, where, explicit = self.active_head, "active_head", False
        if isinstance(spec, str) and spec not in self.heads:
            raise ValueError(f"{where} names no head {spec!r}; this model has {sorted(self.heads)}")
        if channels > 1:
            return self._parallel_plan(spec, where, explicit, setup, channels)
        if groups is not None and not explicit:
            return self._routing_plan(groups)
        if spec is None:
            return None
        if isinstance(spec, str):
            return HeadPlan("single", (spec,))
        entries = self._checked_head_setup(spec, where)
        names = tuple(self._required_head(n, where, i) for i, n in enumerate(entries))
        if isinstance(entries, BatchSplit):
            return HeadPlan("batch_split", names, tuple(entries.batch_sizes))
        return HeadPlan("all_rows", names)

    def _resolvable(self, spec: Any) -> bool:
        if spec is None:
            return False
        if isinstance(spec, str):
            return spec in self.heads
        return all(self._head_or_default(n) in self.heads for n in spec)

    def _required_head(self, name: str | None, where: str, index: int) -> str:
        resolved = self._head_or_default(name)
        if resolved is None:
            raise ValueError(
                f"entry {index} of {where} is None (the base model without adapters), which uses the model's "
                "single active head, but none is set: set model.active_head to a head name or name the head"
            )
        if resolved not in self.heads:
            raise ValueError(f"{where} names no head {resolved!r}; this model has {sorted(self.heads)}")
        return resolved

    def _parallel_plan(
        self, spec: Any, where: str, explicit: bool, setup: AdapterCompositionBlock, channels: int
    ) -> HeadPlan | None:
        if isinstance(spec, (list, tuple)):
            if len(spec) != channels:
                raise ValueError(
                    f"the setup {setup!r} runs {channels} Parallel channels and needs one head per channel, "
                    f"but {where} lists {len(spec)} heads: {list(spec)}"
                )
            entries = self._checked_head_setup(spec, where)
            return HeadPlan("parallel", tuple(self._required_head(n, where, i) for i, n in enumerate(entries)))
        if explicit:
            raise ValueError(
                f"the setup {setup!r} runs {channels} Parallel channels and needs one head per channel, but "
                f"{where} is {spec!r}; pass a list of {channels} head names (the same name may repeat)"
            )
        derived = self._derived_heads(setup)
        if not self.heads:
            return None
        names = [self._head_or_default(n) for n in derived]  # type: ignore[union-attr]
        missing = [
            f"channel {i} ({child!r}) -> {name!r}"
            for i, (child, name) in enumerate(zip(_channels(setup), names, strict=True))
            if name not in self.heads
        ]
        if missing:
            raise ValueError(
                f"the setup {setup!r} runs {channels} Parallel channels, each through the head named after its "
                f"last adapter (a None channel: the model's single active head), but these heads are missing: "
                f"{'; '.join(missing)}. This model has heads {sorted(self.heads)}; add them, or choose heads with "
                f"head=[...], AdapterSetup(..., head_setup=[...]) or model.active_head = [...]"
            )
        return HeadPlan("parallel", tuple(names))  # type: ignore[arg-type]

    def _routing_plan(self, groups: RowGroups) -> HeadPlan | None:
        """Per-row routing (``adapter_names``): each row goes through the head named after its
        target's last adapter, else the model's single active head."""
        names = []
        for target in groups.targets:
            name = self._head_of(target)
            names.append(name if name in self.heads else self._active_head)
        if all(n is None for n in names):
            return None
        if any(n is None for n in names):
            target = groups.targets[names.index(None)]
            raise ValueError(
                f"rows routed to {target!r} have no head (no head of that name and no single active head); "
                f"set model.active_head or add the head"
            )
        distinct = tuple(dict.fromkeys(names))
        if len(distinct) == 1:
            return HeadPlan("single", distinct)
        return HeadPlan("per_row", distinct, group_heads=tuple(distinct.index(n) for n in names), groups=groups)

    def _run_heads(self, plan: HeadPlan, outputs: Any, head_inputs: list[dict[str, Any]], return_dict: bool) -> Any:
        """Run the heads of a multi-head ``plan`` on their rows of the base model ``outputs``.

        ``head_inputs[i]`` are head ``i``'s keyword inputs (labels, attention mask, input ids);
        batch tensors among them are cut to the head's rows like the outputs.

        Raises:
            ValueError: if the rows cannot be split as the plan says (naming sizes).
        """
        total = outputs[0].shape[0]
        order = None
        if plan.kind == "parallel":
            n = len(plan.heads)
            if total % n:
                raise ValueError(f"{n} Parallel heads cannot split a base model output of {total} rows")
            per = total // n
            rows: list[slice | torch.Tensor] = [slice(i * per, (i + 1) * per) for i in range(n)]
        elif plan.kind == "batch_split":
            if sum(plan.batch_sizes) != total:
                raise ValueError(
                    f"the BatchSplit heads {list(plan.heads)} have batch_sizes {list(plan.batch_sizes)} "
                    f"(sum {sum(plan.batch_sizes)}) but the batch has {total} rows"
                )
            bounds = [0]
            for size in plan.batch_sizes:
                bounds.append(bounds[-1] + size)
            rows = [slice(bounds[i], bounds[i + 1]) for i in range(len(plan.heads))]
        elif plan.kind == "per_row":
            assert plan.groups is not None and plan.group_heads is not None
            device = outputs[0].device
            rows = []
            for h in range(len(plan.heads)):
                idx = [plan.groups.rows[g] for g, owner in enumerate(plan.group_heads) if owner == h]
                rows.append(torch.cat(idx).to(device))
            order = torch.argsort(torch.cat(rows))
        else:
            rows = [slice(None)] * len(plan.heads)
        head_outputs = []
        ctx = ForwardContext.get_context()
        for name, selected, inputs in zip(plan.heads, rows, head_inputs, strict=True):
            cut_outputs = _cut_output(outputs, selected, total)
            cut_inputs = {k: _cut(v, selected, total) for k, v in inputs.items()}
            if ctx is not None:  # methods acting inside heads (invertible adapters) read which rows these are
                ctx.head_rows = None if isinstance(selected, slice) and selected == slice(None) else selected
            try:
                head_outputs.append(self.heads[name](cut_outputs, return_dict=True, **cut_inputs))
            finally:
                if ctx is not None:
                    ctx.head_rows = None
        losses = [out.get("loss") for out in head_outputs]
        loss = sum(losses[1:], losses[0]) if all(x is not None for x in losses) else None
        result = MultiHeadOutput(
            head_outputs=head_outputs,
            loss=loss,
            past_key_values=outputs.get("past_key_values"),
            hidden_states=outputs.get("hidden_states"),
            attentions=outputs.get("attentions"),
        )
        if order is not None:  # read by MultiHeadOutput.logits
            object.__setattr__(result, "_row_order", order)
        return result if return_dict else result.to_tuple()

    def _implied_heads(self, setup: AdapterCompositionBlock | None) -> set[str]:
        """Names of existing heads a setup's forward uses (for `train_adapter`)."""
        if setup is None:
            return set()
        derived = self._derived_heads(setup)
        names = [derived] if isinstance(derived, str) else list(derived or ())
        return {n for n in (self._head_or_default(n) for n in names) if n is not None and n in self.heads}

    def _trainable_heads(self, names: frozenset[str]) -> None:
        """Freeze all heads except those in ``names`` (or the active head when none match)."""
        chosen = {n for n in names if n in self.heads} or (
            {self._active_head} if self._active_head else set()
        )
        base_params = {id(p) for p in self.base_model.parameters()}  # type: ignore[attr-defined]
        for name, head in self.heads.items():
            for param in head.parameters():
                if id(param) not in base_params:  # an LM head's tied embedding stays as train_adapter set it
                    param.requires_grad = name in chosen


def _channels(setup: AdapterCompositionBlock) -> tuple[Any, ...]:
    """The children of the setup's `Parallel` block (the channels)."""
    if isinstance(setup, Parallel):
        return setup.children
    return next(c for c in setup.children if isinstance(c, Parallel)).children


def _cut(value: Any, rows: slice | torch.Tensor, total: int) -> Any:
    """``value`` restricted to ``rows`` when it is a batch tensor of ``total`` rows (recursing into
    tuples and lists); anything else (other batch sizes, e.g. states below the `Parallel`
    replication, shared by all channels) is returned as is."""
    if isinstance(value, torch.Tensor):
        if value.dim() == 0 or value.shape[0] != total or (isinstance(rows, slice) and rows == slice(None)):
            return value
        return value[rows] if isinstance(rows, slice) else value.index_select(0, rows.to(value.device))
    if isinstance(value, tuple):
        return tuple(_cut(v, rows, total) for v in value)
    if isinstance(value, list):
        return [_cut(v, rows, total) for v in value]
    return value


def _cut_output(outputs: Any, rows: slice | torch.Tensor, total: int) -> Any:
    """A copy of the base model's ``ModelOutput`` holding only ``rows`` (the cache is kept whole)."""
    if isinstance(rows, slice) and rows == slice(None):
        return outputs
    names = {f.name for f in fields(outputs)}
    cut = {k: v if k == "past_key_values" else _cut(v, rows, total) for k, v in outputs.items() if k in names}
    return type(outputs)(**cut)
