"""Converting the static heads of transformers' ``XxxForY`` models into flexible heads.

A transformers head class (``BertForSequenceClassification``, ``GPT2LMHeadModel``, ...) carries one fixed
head; an adapter model carries named, switchable heads (`PredictionHead`). The table here says, per
``(model_type, kind)``, how a static head maps onto a flexible one:

- the *kind* comes from the class-name suffix (`HEAD_KINDS`: ``ForSequenceClassification`` ->
  ``classification``, ``LMHeadModel`` -> ``causal_lm``, ...);
- a `StaticHead` entry names, for every module index of the flexible head, the static module whose
  parameters go there (AdapterHub's ``layers`` lists), plus the flexible head's config (``layers``,
  ``activation_function``, ``use_pooler``, ``bias``, ...), where a `FromConfig` value is read from the
  model config (e.g. BERT's ``hidden_act``).

Weights move module by module: ``<static module>.<param>`` -> ``heads.<name>.<index>.<param>``. Parameters
the static class ties (its ``_tied_weights_keys``, e.g. ``cls.predictions.decoder.bias`` ->
``cls.predictions.bias``) are read under either name; a head parameter that is the base model's own
(an LM head tied to the input embeddings) stays the base model's.

Used by `AutoAdapterModel.from_pretrained` (a static-head checkpoint gets a head named ``default``) and by
``load_adapter`` / ``load_head`` (a head saved from a static-head model becomes a flexible head). Other
architectures add rows with `register_static_head`.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import transformers
from safetensors import safe_open
from torch import nn
from transformers import PretrainedConfig
from transformers.utils import cached_file

from . import HEAD_TYPES

logger = logging.getLogger(__name__)

#: Class-name suffix of a transformers head class -> the flexible head type it converts to by default.
HEAD_KINDS: dict[str, str] = {
    "ForSequenceClassification": "classification",
    "ForTokenClassification": "tagging",
    "ForQuestionAnswering": "question_answering",
    "ForMultipleChoice": "multiple_choice",
    "ForMaskedLM": "masked_lm",
    "ForCausalLM": "causal_lm",
    "ForConditionalGeneration": "seq2seq_lm",
    "ForImageClassification": "image_classification",
}
#: Other class-name suffixes of the same kinds (``BertLMHeadModel``, ``GPT2LMHeadModel``).
KIND_ALIASES: dict[str, str] = {"LMHeadModel": "ForCausalLM"}

#: Checkpoint keys of old checkpoints (TF-converted BERT: ``LayerNorm.gamma``), tried after the new name.
_LEGACY_PARAM_NAMES = {"weight": "gamma", "bias": "beta"}
_HUB_KEYS = ("cache_dir", "local_files_only", "token", "revision", "proxies", "subfolder")


@dataclass(frozen=True)
class FromConfig:
    """A head config value read from the model config: the first of ``attributes`` that is set (not None),
    else ``default``.

    Example: ``FromConfig("classifier_dropout", "hidden_dropout", default=0.1)``.
    """

    attributes: tuple[str, ...]
    default: Any = None

    def __init__(self, *attributes: str, default: Any = None):
        object.__setattr__(self, "attributes", attributes)
        object.__setattr__(self, "default", default)

    def resolve(self, config: PretrainedConfig) -> Any:
        """The value for ``config``."""
        for attribute in self.attributes:
            value = getattr(config, attribute, None)
            if value is not None:
                return value
        return self.default


@dataclass(frozen=True)
class StaticHead:
    """How one static head maps onto a flexible head.

    Attributes:
        modules: one entry per module of the flexible head (index 0, 1, ...): the static head's module path
            (relative to the static model, e.g. ``"classifier.dense"``) whose parameters go there, or None
            for a module without weights (dropout, activation).
        config: the flexible head's config entries (``layers``, ``activation_function``, ``use_pooler``,
            ``bias``, ``dropout_prob``, ...); values may be `FromConfig`. Labels (``num_labels`` /
            ``num_choices``, ``id2label``) are added from the model config.
        head_type: the flexible head type (default: the kind's, see `HEAD_KINDS`).
    """

    modules: tuple[str | None, ...]
    config: Mapping[str, Any] = field(default_factory=dict)
    head_type: str | None = None


#: A table row: a `StaticHead`, or a function of the model config returning one (for heads whose layout
#: depends on the config); it raises ValueError for a config it cannot convert.
StaticHeadEntry = StaticHead | Callable[[PretrainedConfig], StaticHead]

#: ``(model_type, kind or full class name) -> entry``; a class-name key overrides the suffix rule.
STATIC_HEADS: dict[tuple[str, str], StaticHeadEntry] = {}


def register_static_head(model_type: str, kind: str, head: StaticHeadEntry) -> None:
    """Declare how ``model_type``'s static head of ``kind`` converts to a flexible head.

    Args:
        model_type: the config's ``model_type`` (``"t5"``).
        kind: a `HEAD_KINDS` suffix (``"ForConditionalGeneration"``), or a full class name for a class
            that does not follow the suffix rule.
        head: a `StaticHead`, or a function of the model config returning one.

    Raises:
        ValueError: if ``kind`` is neither a known suffix nor a class name.
    """
    if kind not in HEAD_KINDS and not (kind[:1].isupper() and not kind.startswith("For") and kind not in KIND_ALIASES):
        raise ValueError(f"kind {kind!r} is neither a head kind ({sorted(HEAD_KINDS)}) nor a class name")
    STATIC_HEADS[(model_type, kind)] = head


def kind_of(class_name: str) -> str | None:
    """The `HEAD_KINDS` suffix of a transformers class name (None: not a known head class)."""
    for suffix in sorted([*HEAD_KINDS, *KIND_ALIASES], key=len, reverse=True):
        if class_name.endswith(suffix) and class_name != suffix:
            return KIND_ALIASES.get(suffix, suffix)
    return None


@dataclass(frozen=True)
class HeadConversion:
    """A `StaticHead` resolved for one static class and model config.

    Attributes:
        class_name: the static class (``BertForSequenceClassification``).
        head_type: the flexible head type.
        modules: static module path per flexible module index (None: no weights).
        config: the flexible head's config without labels.
        tied: the static class's tied parameters (``_tied_weights_keys``: tied name -> source name).
        base_prefix: the static class's base-model attribute (``bert``, ``transformer``), if known.
    """

    class_name: str
    head_type: str
    modules: tuple[str | None, ...]
    config: dict[str, Any]
    tied: dict[str, str]
    base_prefix: str | None

    def head_config(
        self, label2id: Mapping[str, int] | None = None, num_labels: int | None = None
    ) -> dict[str, Any]:
        """The flexible head's config dict (``head_type`` included), with labels where the head takes them.

        ``label2id`` default: ``LABEL_<i>`` for ``num_labels`` (default 2) labels.
        """
        config: dict[str, Any] = {"head_type": self.head_type, **self.config}
        accepted = inspect.signature(HEAD_TYPES[self.head_type]).parameters
        count = num_labels or (len(label2id) if label2id else 2)
        if "num_choices" in accepted:
            config["num_choices"] = count
        elif "num_labels" in accepted:
            config["num_labels"] = count
        if "id2label" in accepted and ("num_labels" in config or "num_choices" in config):
            config["label2id"] = (
                {str(k): int(v) for k, v in label2id.items()} if label2id else {f"LABEL_{i}": i for i in range(count)}
            )
        return config

    def source_names(self, key: str) -> list[str]:
        """Static names under which the flexible head's parameter ``key`` (``<index>.<param>``) may be stored,
        best first (its own name, the name it is tied to, legacy names). Empty for a module without weights."""
        index, _, local = key.partition(".")
        module = self.modules[int(index)]
        if module is None:
            return []
        names = [f"{module}.{local}"]
        if names[0] in self.tied:
            names.append(self.tied[names[0]])
        stem, _, last = local.rpartition(".")
        if last in _LEGACY_PARAM_NAMES:
            names.append(f"{module}.{stem + '.' if stem else ''}{_LEGACY_PARAM_NAMES[last]}")
        return names

    def wanted_keys(self) -> Callable[[str], bool]:
        """Whether a checkpoint key belongs to the static head (its modules, or a tie source of them that is
        not part of the base model)."""
        prefixes = tuple(f"{m}." for m in self.modules if m is not None)
        base = f"{self.base_prefix}." if self.base_prefix else None
        sources = {
            source
            for target, source in self.tied.items()
            if target.startswith(prefixes) and not (base and source.startswith(base))
        }
        return lambda key: key.startswith(prefixes) or key in sources


def static_head_conversion(class_name: str, config: PretrainedConfig) -> HeadConversion | None:
    """How the static head of ``class_name`` converts for ``config`` (None: no table row for it).

    Raises:
        ValueError: if the row cannot convert this config, or names a head type that does not exist.
    """
    kind = kind_of(class_name)
    entry = STATIC_HEADS.get((config.model_type, class_name))
    if entry is None and kind is not None:
        entry = STATIC_HEADS.get((config.model_type, kind))
    if entry is None:
        return None
    head = entry if isinstance(entry, StaticHead) else entry(config)
    head_type = head.head_type or (HEAD_KINDS[kind] if kind else None)
    if head_type is None:
        raise ValueError(f"the static head row for {class_name} needs a head_type")
    resolved = {k: v.resolve(config) if isinstance(v, FromConfig) else v for k, v in head.config.items()}
    if head_type == "classification" and getattr(config, "problem_type", None) == "multi_label_classification":
        head_type = "multilabel_classification"
    if head_type not in HEAD_TYPES:
        raise ValueError(
            f"{class_name} converts to head type {head_type!r}, which is not registered; known: {sorted(HEAD_TYPES)}"
        )
    tied = getattr(getattr(transformers, class_name, None), "_tied_weights_keys", None)
    tied = tied if isinstance(tied, Mapping) else {}  # older classes list tied names without their sources
    return HeadConversion(
        class_name=class_name,
        head_type=head_type,
        modules=tuple(head.modules),
        config=resolved,
        tied={k: v for k, v in tied.items() if isinstance(k, str) and isinstance(v, str)},
        base_prefix=base_prefix_of(class_name),
    )


def base_prefix_of(class_name: str | None) -> str | None:
    """The base-model attribute (``base_model_prefix``) of a transformers class, or of the base class behind an
    ``XxxAdapterModel`` name; None for an unknown name."""
    name = class_name or ""
    cls = getattr(transformers, name, None) or getattr(transformers, name.removesuffix("AdapterModel") + "Model", None)
    prefix = getattr(cls, "base_model_prefix", None)
    return prefix if isinstance(prefix, str) and prefix else None


def checkpoint_conversion(config: PretrainedConfig) -> HeadConversion | None:
    """The conversion for a checkpoint's config: its ``architectures[0]`` is a static head class with a table
    row, and it holds no flexible heads (``prediction_heads``). None otherwise."""
    if getattr(config, "prediction_heads", None):
        return None
    architectures = getattr(config, "architectures", None) or []
    if not architectures:
        return None
    conversion = static_head_conversion(architectures[0], config)
    if conversion is None and kind_of(architectures[0]) is not None:
        logger.info("%s has no flexible head conversion for model type %r; its head is not loaded",
                    architectures[0], config.model_type)
    return conversion


def convert_static_head(
    model: nn.Module,
    conversion: HeadConversion,
    weights: Mapping[str, torch.Tensor],
    head_name: str,
    label2id: Mapping[str, int] | None = None,
    num_labels: int | None = None,
    set_active: bool = False,
    strict: bool = True,
) -> None:
    """Add flexible head ``head_name`` to ``model`` holding the static head ``weights``.

    Args:
        model: an adapter model (flexible heads).
        conversion: from `static_head_conversion`.
        weights: the static head's tensors under the static model's names (``classifier.weight``).
        head_name: the new head's name (an existing head of that name is replaced).
        label2id: label names (default ``LABEL_<i>``); also written to ``model.config`` when the head is active.
        num_labels: number of labels (default: ``len(label2id)``).
        set_active: make the head the active head.
        strict: refuse ``weights`` keys that belong to no module of the head.

    Raises:
        ValueError: for missing, unexpected or misshapen weights; the model keeps its previous heads.
    """
    previous = model.heads[head_name] if head_name in model.heads else None
    was_active = previous is not None and model.active_head == head_name
    model.add_prediction_head_from_config(
        head_name, conversion.head_config(label2id, num_labels), overwrite_ok=True, set_active=False
    )
    try:
        _copy_static_weights(model, conversion, weights, head_name, strict)
    except Exception:
        model.delete_head(head_name)
        if previous is not None:
            model.add_prediction_head(previous, set_active=was_active)
        raise
    if set_active:
        model.active_head = head_name


def _copy_static_weights(
    model: nn.Module, conversion: HeadConversion, weights: Mapping[str, torch.Tensor], head_name: str, strict: bool
) -> None:
    head = model.heads[head_name]
    if len(head) != len(conversion.modules):
        raise ValueError(
            f"the static head row for {conversion.class_name} lists {len(conversion.modules)} modules, but the "
            f"{conversion.head_type} head built from {conversion.config} has {len(head)}"
        )
    base = {id(p) for p in model.base_model.parameters()}
    matched: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    claimed: set[str] = set()
    missing: list[str] = []
    for key, target in head.state_dict(keep_vars=True).items():
        names = conversion.source_names(key)
        claimed.update(names)
        if id(target) in base:  # tied to the input embeddings: the base model's own weight
            continue
        source = next((n for n in names if n in weights), None)
        if source is None:
            missing.append(f"{key} (from {names[0] if names else 'no static module'})")
            continue
        if weights[source].shape != target.shape:
            raise ValueError(
                f"{conversion.class_name} weight {source} has shape {tuple(weights[source].shape)}, head "
                f"{head_name!r} needs {tuple(target.shape)} at {key}"
            )
        matched[key] = (target, weights[source])
    unexpected = sorted(k for k in weights if k not in claimed) if strict else []
    if missing or unexpected:
        raise ValueError(
            f"the {conversion.class_name} head weights do not fit a {conversion.head_type} head: missing "
            f"{missing[:5]}, unexpected {unexpected[:5]}"
        )
    with torch.no_grad():
        for target, tensor in matched.values():
            target.copy_(tensor.to(device=target.device, dtype=target.dtype))


# ---- reading a checkpoint's tensors ------------------------------------------------------------------


def _checkpoint_file(path: str | os.PathLike, name: str, hub: Mapping[str, Any]) -> str | None:
    try:
        return cached_file(path, name, **hub)
    except OSError:
        return None


def checkpoint_tensors(
    path: str | os.PathLike, wanted: Callable[[str], bool], variant: str | None = None, **hub: Any
) -> dict[str, torch.Tensor]:
    """The tensors of a transformers checkpoint whose keys pass ``wanted``; only the files holding them are read.

    Reads ``model.safetensors`` (sharded or not), else ``pytorch_model.bin`` with ``torch.load(weights_only=True)``.

    Args:
        path: a local folder or a Hub model id (resolved by transformers' ``cached_file``).
        wanted: key filter.
        variant: the checkpoint variant (``model.<variant>.safetensors``).
        hub: ``cache_dir``, ``local_files_only``, ``token``, ``revision``, ``proxies``, ``subfolder``.

    Raises:
        FileNotFoundError: if the checkpoint has no weights file.
    """

    def named(name: str) -> str:
        stem, _, ext = name.rpartition(".")
        return f"{stem}.{variant}.{ext}" if variant else name

    for single, index in (("model.safetensors", "model.safetensors.index.json"),
                          ("pytorch_model.bin", "pytorch_model.bin.index.json")):
        files: Iterable[str | None]
        index_file = _checkpoint_file(path, named(index), hub)
        if index_file is not None:
            with open(index_file, encoding="utf-8") as f:
                weight_map: dict[str, str] = json.load(f)["weight_map"]
            shards = sorted({shard for key, shard in weight_map.items() if wanted(key)})
            files = [_checkpoint_file(path, shard, hub) for shard in shards]
        else:
            file = _checkpoint_file(path, named(single), hub)
            if file is None:
                continue
            files = [file]
        tensors: dict[str, torch.Tensor] = {}
        for file in files:
            if file is None:
                raise FileNotFoundError(f"a shard listed in {index_file} is missing")
            tensors.update(_read_file(file, wanted))
        return tensors
    raise FileNotFoundError(f"no model.safetensors or pytorch_model.bin in {path}")


def _read_file(file: str, wanted: Callable[[str], bool]) -> dict[str, torch.Tensor]:
    if file.endswith(".safetensors"):
        with safe_open(file, framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys() if wanted(k)}
    data = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
    return {k: v for k, v in data.items() if wanted(k)}


def from_static_checkpoint(
    model_class: type, path: str | os.PathLike, conversion: HeadConversion, *args: Any, **kwargs: Any
) -> Any:
    """Load a static-head checkpoint as ``model_class`` (an ``XxxAdapterModel``) with its head as ``default``.

    The base model loads through transformers' ``from_pretrained``; the head's tensors are read from the
    checkpoint files and converted (`convert_static_head`), and ``config.id2label`` / ``label2id`` are kept.
    When the static class keeps its base model under another attribute than ``model_class`` (Llama's
    question answering class: ``transformer``), that prefix is renamed and the tensors go to
    ``from_pretrained`` as ``state_dict``.

    Returns:
        What ``from_pretrained`` returns (the model, or ``(model, loading_info)``).
    """
    config = kwargs["config"]
    hub = {k: kwargs[k] for k in _HUB_KEYS if k in kwargs}
    variant = kwargs.get("variant")
    ours = model_class.base_model_prefix
    theirs = conversion.base_prefix
    if theirs and theirs != ours:
        tensors = checkpoint_tensors(path, lambda key: True, variant, **hub)
        head = {k: v for k, v in tensors.items() if conversion.wanted_keys()(k)}
        renamed = {
            (f"{ours}.{k[len(theirs) + 1:]}" if k.startswith(f"{theirs}.") else k): v
            for k, v in tensors.items()
            if k not in head
        }
        rest = {k: v for k, v in kwargs.items() if k not in (*_HUB_KEYS, "variant", "force_download")}
        loaded = model_class.from_pretrained(None, *args, state_dict=renamed, **rest)
    else:
        loaded = model_class.from_pretrained(path, *args, **kwargs)
        head = checkpoint_tensors(path, conversion.wanted_keys(), variant, **hub)
    model = loaded[0] if isinstance(loaded, tuple) else loaded
    label2id = dict(getattr(config, "label2id", None) or {}) or None
    convert_static_head(
        model, conversion, head, "default", label2id=label2id, num_labels=getattr(config, "num_labels", None),
        set_active=True, strict=False,
    )
    logger.info("converted the %s head into the flexible head 'default' (%s)", conversion.class_name,
                conversion.head_type)
    return loaded


# ---- the table -------------------------------------------------------------------------------------


def _one_linear(module: str, **config: Any) -> StaticHead:
    """``[Dropout, Linear]``: one Linear on the token, CLS or pooled output."""
    return StaticHead((None, module), {"layers": 1, "activation_function": None, **config})


def _two_linears(first: str, last: str, activation: Any, **config: Any) -> StaticHead:
    """``[Dropout, Linear, activation, Dropout, Linear]``."""
    return StaticHead((None, first, None, None, last), {"layers": 2, "activation_function": activation, **config})


def _lm(dense: str, norm: str, decoder: str, activation: Any) -> StaticHead:
    """``[Linear, activation, LayerNorm, Linear]``: BERT-style LM head (kinds ForMaskedLM and ForCausalLM)."""
    return StaticHead(
        (dense, None, norm, decoder),
        {"layers": 2, "activation_function": activation, "layer_norm": True, "bias": True},
    )


def _electra_multiple_choice(config: PretrainedConfig) -> StaticHead:
    """ELECTRA's multiple choice head: a sequence summary (first token, projection, activation) + a Linear."""
    summary = (
        getattr(config, "summary_type", "first"),
        getattr(config, "summary_use_proj", True),
        getattr(config, "summary_proj_to_labels", False),
    )
    if summary != ("first", True, False):
        raise ValueError(
            "ElectraForMultipleChoice converts only with summary_type='first', summary_use_proj=True and "
            f"summary_proj_to_labels=False; this config has {summary}"
        )
    return _two_linears(
        "sequence_summary.summary", "classifier", FromConfig("summary_activation"),
        dropout_prob=FromConfig("summary_last_dropout", default=0.0),
    )


_TOKEN_DROPOUT = FromConfig("classifier_dropout", "hidden_dropout", default=0.1)  # transformers' decoder rule
_BERT_LM = _lm(
    "cls.predictions.transform.dense", "cls.predictions.transform.LayerNorm", "cls.predictions.decoder",
    FromConfig("hidden_act"),
)
_ROBERTA_LM = _lm("lm_head.dense", "lm_head.layer_norm", "lm_head.decoder", "gelu")
_ELECTRA_LM = _lm("generator_predictions.dense", "generator_predictions.LayerNorm", "generator_lm_head", "gelu")

_ROBERTA: dict[str, StaticHeadEntry] = {
    "ForSequenceClassification": _two_linears("classifier.dense", "classifier.out_proj", "tanh"),
    "ForMultipleChoice": _one_linear("classifier", use_pooler=True, dropout_prob=FromConfig("hidden_dropout_prob")),
    "ForTokenClassification": _one_linear("classifier"),
    "ForQuestionAnswering": _one_linear("qa_outputs", dropout_prob=0.0),
    "ForMaskedLM": _ROBERTA_LM,
    "ForCausalLM": _ROBERTA_LM,
}
_DECODER: dict[str, StaticHeadEntry] = {
    "ForSequenceClassification": _one_linear("score", bias=False, dropout_prob=0.0),
    "ForTokenClassification": _one_linear(
        "score", dropout_prob=_TOKEN_DROPOUT, bias=FromConfig("token_classification_bias", default=True)
    ),
    "ForQuestionAnswering": _one_linear("qa_outputs", dropout_prob=0.0),
    "ForCausalLM": StaticHead(("lm_head",)),
}
_ROWS: dict[str, dict[str, StaticHeadEntry]] = {
    "bert": {
        "ForSequenceClassification": _one_linear("classifier", use_pooler=True),
        "ForMultipleChoice": _one_linear("classifier", use_pooler=True),
        "ForTokenClassification": _one_linear("classifier"),
        "ForQuestionAnswering": _one_linear("qa_outputs", dropout_prob=0.0),
        "ForMaskedLM": _BERT_LM,
        "ForCausalLM": _BERT_LM,
        "BertForNextSentencePrediction": StaticHead(
            (None, "cls.seq_relationship"),
            {"layers": 1, "activation_function": None, "use_pooler": True, "dropout_prob": 0.0},
            head_type="classification",
        ),
    },
    "roberta": _ROBERTA,
    "xlm-roberta": _ROBERTA,
    "electra": {
        "ForSequenceClassification": _two_linears("classifier.dense", "classifier.out_proj", "gelu"),
        "ForMultipleChoice": _electra_multiple_choice,
        "ForTokenClassification": _one_linear("classifier"),
        "ForQuestionAnswering": _one_linear("qa_outputs", dropout_prob=0.0),
        "ForMaskedLM": _ELECTRA_LM,
        "ForCausalLM": _ELECTRA_LM,
    },
    "distilbert": {
        "ForSequenceClassification": _two_linears(
            "pre_classifier", "classifier", "relu", dropout_prob=FromConfig("seq_classif_dropout")
        ),
        "ForMultipleChoice": _two_linears(
            "pre_classifier", "classifier", "relu", dropout_prob=FromConfig("seq_classif_dropout")
        ),
        "ForTokenClassification": _one_linear("classifier", dropout_prob=FromConfig("dropout")),
        "ForQuestionAnswering": _one_linear("qa_outputs", dropout_prob=FromConfig("qa_dropout")),
        "ForMaskedLM": _lm("vocab_transform", "vocab_layer_norm", "vocab_projector", FromConfig("activation")),
    },
    "gpt2": {
        **_DECODER,
        "ForTokenClassification": _one_linear("classifier", dropout_prob=_TOKEN_DROPOUT),
    },
    "llama": _DECODER,
    "mistral": _DECODER,
    "qwen2": _DECODER,
    # encoder-decoders: lm_head on the decoder output (T5's scaling and tie follow the config, see Seq2SeqLMHead;
    # BART's final_logits_bias buffer, zeros in released checkpoints, is left out as AdapterHub does)
    **{t: {"ForConditionalGeneration": StaticHead(("lm_head",))} for t in ("t5", "mt5", "bart", "mbart", "plbart")},
}
for _model_type, _rows in _ROWS.items():
    for _kind, _entry in _rows.items():
        register_static_head(_model_type, _kind, _entry)
