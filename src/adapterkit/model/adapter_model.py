"""`AutoAdapterModel` and the per-architecture ``XxxAdapterModel`` classes (base model + flexible heads).

``BertAdapterModel`` and friends are made on demand from the transformers base class of a
``model_type`` (``BertModel`` -> ``BertAdapterModel``), subclassing its ``XxxPreTrainedModel`` so
weight init, ``from_pretrained`` and ``save_pretrained`` are transformers' own. The base model sits
under the usual prefix (``bert``, ``transformer``, ``model``), and heads under ``heads``, which are
AdapterHub's key names.
"""

from __future__ import annotations

import os
from typing import Any

from torch import nn
from transformers import AutoConfig, GenerationMixin, PretrainedConfig, PreTrainedModel
from transformers.models.auto.modeling_auto import MODEL_MAPPING

from ..composition import AdapterSetupSpec, parse_composition
from ..context import ForwardContext
from ..heads.conversion import checkpoint_conversion, from_static_checkpoint
from ..heads.seq2seq_lm import Seq2SeqLMHead, decoder_input_ids_from_labels
from ..integration.architectures import get_architecture
from .generation import GenerationAdaptersMixin
from .heads_mixin import FlexibleHeadsMixin, HeadSetup
from .mixin import ModelAdaptersMixin


class AdapterModel(FlexibleHeadsMixin, ModelAdaptersMixin):
    """Behaviour shared by every ``XxxAdapterModel``; combine with a ``XxxPreTrainedModel`` to use."""

    _base_class: type[PreTrainedModel]
    # heads return a per-batch mean loss; the Trainer must scale it for gradient accumulation itself
    accepts_loss_kwargs = False

    def __init__(self, config: PretrainedConfig, *args: Any, **kwargs: Any):
        super().__init__(config, *args, **kwargs)
        setattr(self, self.base_model_prefix, self._base_class(config))
        self.post_init()
        # after post_init, so transformers' weight init does not overwrite adapter initialisation
        self._init_adapters()
        self._init_heads()

    def forward(
        self,
        input_ids: Any = None,
        attention_mask: Any = None,
        token_type_ids: Any = None,
        position_ids: Any = None,
        inputs_embeds: Any = None,
        labels: Any = None,
        start_positions: Any = None,
        end_positions: Any = None,
        decoder_input_ids: Any = None,
        decoder_attention_mask: Any = None,
        decoder_inputs_embeds: Any = None,
        encoder_outputs: Any = None,
        past_key_values: Any = None,
        use_cache: bool | None = None,
        head: HeadSetup = None,
        return_dict: bool | None = None,
        **kwargs: Any,
    ) -> Any:
        """Run the base model with the active adapters, then the chosen head(s).

        Args:
            input_ids, attention_mask, **kwargs: the base model's inputs; head inputs such as
                ``labels`` or ``start_positions`` go to the head(s) (each head gets them whole: with
                `Parallel`, labels of the original batch size serve every channel).
            decoder_input_ids, decoder_attention_mask, decoder_inputs_embeds, encoder_outputs: an
                encoder-decoder's decoder inputs and precomputed encoder output. Without decoder inputs they are
                derived as transformers' ``XxxForConditionalGeneration`` does: the labels of a ``seq2seq_lm``
                head shifted right, else ``input_ids`` shifted right (`heads.seq2seq_lm.decoder_input_ids_from_labels`).
            past_key_values, use_cache: the cache, as for the base model (``generate()`` passes them).
            head: the head to use: a name, a list of names (one per `Parallel` channel), or a
                `BatchSplit` of names (default: `AdapterSetup`'s head, then `active_head`).
            return_dict: return a ``ModelOutput`` (default) or a tuple.

        Returns:
            The head's output; a `MultiHeadOutput` when several heads run (a `Parallel` setup, a
            top-level `BatchSplit`, a list of heads, or per-row routing over several heads); the
            base model's output when no head is chosen.

        Raises:
            ValueError: for an unknown head, a head list that does not match the `Parallel`
                channels, or missing channel heads (before the base model runs); heads that need
                different model inputs (e.g. multiple choice with classification).
        """
        return_dict = True if return_dict is None else return_dict
        # named so the Trainer keeps these dataset columns; only the given ones reach the models
        named = {"token_type_ids": token_type_ids, "position_ids": position_ids, "inputs_embeds": inputs_embeds,
                 "labels": labels, "start_positions": start_positions, "end_positions": end_positions,
                 "decoder_input_ids": decoder_input_ids, "decoder_attention_mask": decoder_attention_mask,
                 "decoder_inputs_embeds": decoder_inputs_embeds, "encoder_outputs": encoder_outputs,
                 "past_key_values": past_key_values, "use_cache": use_cache}
        kwargs.update({k: v for k, v in named.items() if v is not None})
        plan = self._head_plan(head, ForwardContext.get_context())
        # only what is given: vision and speech base models take pixel_values / input_features instead
        inputs: dict[str, Any] = {
            k: v for k, v in (("input_ids", input_ids), ("attention_mask", attention_mask)) if v is not None
        }
        if plan is None:
            for key in ("labels", "start_positions", "end_positions"):
                kwargs.pop(key, None)
            self._add_decoder_inputs(inputs, kwargs, [], {})
            outputs = self.base_model(**inputs, **kwargs, return_dict=True)
            return outputs if return_dict else outputs.to_tuple()
        modules = [self.heads[name] for name in plan.heads]
        label_names = [key for m in modules for key in m.get_label_names()]
        labels_given = {key: kwargs.pop(key) for key in dict.fromkeys(label_names) if key in kwargs}
        self._add_decoder_inputs(inputs, kwargs, modules, labels_given)
        inputs = _prepare_inputs(modules, {**inputs, **kwargs})
        outputs = self.base_model(**inputs, return_dict=True)
        common = {"attention_mask": inputs.get("attention_mask"), "input_ids": inputs.get("input_ids")}
        head_inputs = [
            {**common, **{k: labels_given[k] for k in m.get_label_names() if k in labels_given}} for m in modules
        ]
        if plan.kind == "single":
            return modules[0](outputs, return_dict=return_dict, **head_inputs[0])
        return self._run_heads(plan, outputs, head_inputs, return_dict)

    def _add_decoder_inputs(
        self, inputs: dict[str, Any], kwargs: dict[str, Any], heads: list[Any], labels: dict[str, Any]
    ) -> None:
        """An encoder-decoder forward without decoder inputs gets ``decoder_input_ids`` (in ``kwargs``): the labels
        of a ``seq2seq_lm`` head shifted right, else ``input_ids`` shifted right (what BART does itself and
        AdapterHub's T5 model does)."""
        if not self._adapter_target.spec.is_encoder_decoder:
            return
        if kwargs.get("decoder_input_ids") is not None or kwargs.get("decoder_inputs_embeds") is not None:
            return
        source = inputs.get("input_ids")
        if labels.get("labels") is not None and any(isinstance(h, Seq2SeqLMHead) for h in heads):
            source = labels["labels"]
        if source is not None:
            kwargs["decoder_input_ids"] = decoder_input_ids_from_labels(self, source)

    def train_adapter(self, adapter_setup: AdapterSetupSpec, train_embeddings: bool = False) -> None:
        """Train only the adapters of ``adapter_setup`` and their heads; everything else is frozen.

        Trainable heads: those named like the setup's adapters and the heads its forward runs (one
        per `Parallel` channel or `BatchSplit` split, see `active_head`), else the active head.
        """
        super().train_adapter(adapter_setup, train_embeddings=train_embeddings)
        setup = parse_composition(adapter_setup)
        names = set(setup.flatten()) if setup is not None else set()
        self._trainable_heads(frozenset(names | self._implied_heads(setup)))


def _prepare_inputs(heads: list[Any], inputs: dict[str, Any]) -> dict[str, Any]:
    """The base model's inputs as the heads need them (e.g. multiple choice flattens its inputs).

    Raises:
        ValueError: if the heads prepare inputs differently and so cannot share one forward.
    """
    kinds = {type(h).prepare_inputs for h in heads}
    if len(kinds) > 1:
        described = sorted({f"{h.name!r} ({h.config.get('head_type')})" for h in heads})
        raise ValueError(
            f"heads {', '.join(described)} need differently shaped model inputs and cannot run in one forward"
        )
    prepared = inputs
    for h in heads:  # every head records what it needs (e.g. the number of choices)
        prepared = h.prepare_inputs(inputs)
    return prepared


_CLASSES: dict[type[PreTrainedModel], type[PreTrainedModel]] = {}


def adapter_model_class(config: PretrainedConfig) -> type[PreTrainedModel]:
    """The ``XxxAdapterModel`` class for ``config.model_type`` (made once, then cached).

    Raises:
        ValueError: if the model type is not in the architecture table or has no transformers base model.
    """
    get_architecture(config.model_type)
    base_class = MODEL_MAPPING.get(type(config), None)
    if base_class is None:
        raise ValueError(f"transformers has no base model class for config {type(config).__name__}")
    if base_class not in _CLASSES:
        pretrained = next(c for c in base_class.__mro__[1:] if issubclass(c, PreTrainedModel))
        name = base_class.__name__.removesuffix("Model") + "AdapterModel"
        # every adapter model can generate through a causal_lm head (AdapterHub's classes inherit
        # GenerationMixin too); GenerationAdaptersMixin comes first so its generate() wraps transformers'
        _CLASSES[base_class] = type(
            name,
            (AdapterModel, GenerationAdaptersMixin, pretrained, GenerationMixin),
            {"_base_class": base_class, "__module__": __name__},
        )
    return _CLASSES[base_class]


class AutoAdapterModel:
    """Builds the ``XxxAdapterModel`` matching a config or checkpoint (like transformers' Auto classes)."""

    def __init__(self) -> None:
        raise OSError("use AutoAdapterModel.from_pretrained(...) or AutoAdapterModel.from_config(...)")

    @staticmethod
    def from_config(config: PretrainedConfig, **kwargs: Any) -> PreTrainedModel:
        """A randomly initialised adapter model for ``config``."""
        return adapter_model_class(config)(config, **kwargs)

    @staticmethod
    def from_pretrained(
        pretrained_model_name_or_path: str | os.PathLike, *args: Any, **kwargs: Any
    ) -> PreTrainedModel:
        """Load a checkpoint (a base model, or a full adapter model saved with ``save_pretrained``).

        Adapters and heads recorded in its ``config.json`` are re-created and their weights loaded. A
        checkpoint of a transformers head class (``BertForSequenceClassification``, ``GPT2LMHeadModel``, ...)
        gets its head as a flexible head named ``default`` (see `heads.conversion`). Keyword arguments go to
        transformers' ``from_pretrained``.
        """
        config = kwargs.pop("config", None)
        if config is None:
            hub_keys = (
                "cache_dir",
                "force_download",
                "local_files_only",
                "token",
                "revision",
                "trust_remote_code",
            )
            config = AutoConfig.from_pretrained(
                pretrained_model_name_or_path, **{k: kwargs[k] for k in hub_keys if k in kwargs}
            )
        model_class = adapter_model_class(config)
        conversion = checkpoint_conversion(config) if pretrained_model_name_or_path is not None else None
        if conversion is not None:
            return from_static_checkpoint(
                model_class, pretrained_model_name_or_path, conversion, *args, config=config, **kwargs
            )
        return model_class.from_pretrained(pretrained_model_name_or_path, *args, config=config, **kwargs)


def is_adapter_model(model: nn.Module) -> bool:
    """Whether ``model`` is an ``XxxAdapterModel`` (flexible heads)."""
    return isinstance(model, AdapterModel)
