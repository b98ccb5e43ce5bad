"""`FlexibleHeadsMixin`: named, switchable prediction heads on an adapter model."""

from __future__ import annotations

import os
from typing import Any

from torch import nn

from ..context import AdapterSetup
from ..heads import HEAD_TYPES, PredictionHead


class FlexibleHeadsMixin:
    """Several named heads on one model; one (or none) is active per forward.

    Head choice per forward: the ``head=`` argument, else the head of an enclosing `AdapterSetup`,
    else `active_head`. With no head the base model's outputs are returned.
    """

    heads: nn.ModuleDict
    _active_head: str | None
    _custom_head_types: dict[str, type[PredictionHead]]

    def _init_heads(self) -> None:
        self.heads = nn.ModuleDict()
        self._active_head = None
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
    def active_head(self) -> str | None:
        """The head used when a forward names none; setting it also switches ``config.id2label``."""
        return self._active_head

    @active_head.setter
    def active_head(self, head_name: str | None) -> None:
        if head_name is not None and head_name not in self.heads:
            raise ValueError(f"no head named {head_name!r}; this model has {sorted(self.heads)}")
        self._active_head = head_name
        if head_name is not None and "label2id" in self.heads[head_name].config:
            label2id = self.heads[head_name].config["label2id"]
            self.config.label2id = dict(label2id)  # type: ignore[attr-defined]
            self.config.id2label = {i: label for label, i in label2id.items()}  # type: ignore[attr-defined]

    def get_labels_dict(self, head_name: str | None = None) -> dict[int, str] | None:
        """``id -> label`` of a head (default: the active head)."""
        head = self.heads[head_name or self._active_head]
        label2id = head.config.get("label2id")
        return {i: label for label, i in label2id.items()} if label2id else None

    def get_labels(self, head_name: str | None = None) -> list[str] | None:
        """The label names of a head, ordered by id."""
        labels = self.get_labels_dict(head_name)
        return [labels[i] for i in sorted(labels)] if labels else None

    def _resolve_head(self, head: str | None) -> str | None:
        if head is not None:
            return head
        setup = AdapterSetup.get_context()
        if setup is not None and setup.head_setup in self.heads:
            return setup.head_setup
        return self._active_head

    def set_active_adapters(self, adapter_setup: Any, skip_layers: list[int] | None = None) -> None:
        """As the adapter mixin's, and also activate the head named after the setup's last adapter."""
        super().set_active_adapters(adapter_setup, skip_layers=skip_layers)  # type: ignore[misc]
        setup = self.adapters_config.active_setup  # type: ignore[attr-defined]
        if setup is not None and setup.last() in self.heads:
            self.active_head = setup.last()

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
