"""Saving and loading single adapters (and their heads) in AdapterHub's folder format.

A folder holds ``adapter_config.json`` plus ``adapter.safetensors`` (or AdapterHub's default
``pytorch_adapter.bin``), and optionally ``head_config.json`` plus the head weights. Weight keys
are the saving model's own state-dict names; on load, the base-model prefix (``bert.``) is added
or dropped as needed, so adapters move between ``BertModel``, ``BertForX`` and ``BertAdapterModel``.
A failed load leaves the model exactly as it was.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from packaging.version import InvalidVersion, Version
from torch import nn

from ..configs import AdapterConfig
from ..heads.conversion import base_prefix_of, convert_static_head, static_head_conversion
from ..integration.saved_names import from_saved_names, to_saved_names
from ..methods import method_for
from .files import (
    CONFIG_NAME,
    HEAD_CONFIG_NAME,
    HEAD_SAFE_WEIGHTS_NAME,
    HEAD_WEIGHTS_NAME,
    SAFE_WEIGHTS_NAME,
    WEIGHTS_NAME,
    read_json,
    read_weights,
    write_json,
    write_weights,
)

logger = logging.getLogger(__name__)

VERSION = "adapterkit.0.1.0"
# adapter-transformers (pre-"adapters") names of the bottleneck module dicts
_LEGACY_SEGMENTS = {
    "attention_text_task_adapters": "adapters",
    "attention_text_lang_adapters": "adapters",
    "layer_text_task_adapters": "adapters",
    "layer_text_lang_adapters": "adapters",
    "invertible_lang_adapters": "invertible_adapters",
}
# adapter-transformers wrote the old activation names before "version" existed
_LEGACY_ACTIVATIONS = {"gelu": "gelu_new", "gelu_orig": "gelu"}


def _metadata(model: nn.Module, name: str | None) -> dict[str, Any]:
    config = model.config
    return {
        "hidden_size": getattr(config, "hidden_size", None),
        "model_class": type(model).__name__,
        "model_name": getattr(config, "name_or_path", "") or "",
        "model_type": config.model_type,
        "name": name,
        "version": VERSION,
    }


def _keys_with(state: Iterable[str], attribute: str | tuple[str, ...], name: str) -> list[str]:
    """State-dict keys that belong to ``<attribute>.<name>`` (e.g. ``loras.sst-2``), for one attribute or several."""
    attributes = (attribute,) if isinstance(attribute, str) else attribute
    return [k for k in state if any(_segment_index(k.split("."), a, name) is not None for a in attributes)]


def _segment_index(parts: list[str], attribute: str, name: str) -> int | None:
    for i in range(len(parts) - 1):
        if parts[i] == attribute and parts[i + 1] == name:
            return i + 1
    return None


def save_adapter(
    model: nn.Module,
    save_directory: str | os.PathLike,
    adapter_name: str,
    meta_dict: dict | None = None,
    use_safetensors: bool = True,
    with_head: bool = True,
) -> None:
    """Write adapter ``adapter_name`` (and its head, if the model has one of that name) to a folder.

    Raises:
        ValueError: if the model has no such adapter.
    """
    config = model.adapters_config.get(adapter_name)
    if config is None:
        raise ValueError(f"no adapter named {adapter_name!r}; this model has {sorted(model.adapters_config)}")
    directory = Path(save_directory)
    state = model.state_dict()
    attributes = method_for(config).module_attributes
    keys = _keys_with(state, attributes, adapter_name)
    weights = to_saved_names(model._adapter_target.spec, {k: state[k] for k in keys}, adapter_name, attributes)
    write_weights(directory, weights, SAFE_WEIGHTS_NAME, WEIGHTS_NAME, use_safetensors)
    meta = {**_metadata(model, adapter_name), "config": config.to_dict()}
    meta.update({k: v for k, v in (meta_dict or {}).items() if k not in meta})
    write_json(directory / CONFIG_NAME, meta)
    heads = getattr(model, "heads", None)
    if with_head and heads is not None and adapter_name in heads:
        save_head(model, directory, adapter_name, use_safetensors=use_safetensors)
    elif with_head and heads is None and _static_head_keys(model):
        _save_static_head(model, directory, use_safetensors)


def _static_head_keys(model: nn.Module) -> list[str]:
    """State-dict keys outside the base model: the head of a transformers ``XxxForY`` model."""
    if model.base_model is model:
        return []
    prefix = model.base_model_prefix + "."
    return [k for k in model.state_dict() if not k.startswith(prefix)]


def _save_static_head(model: nn.Module, directory: Path, use_safetensors: bool) -> None:
    """Save the model's own head (e.g. ``classifier.*``), as AdapterHub does for such models."""
    state = model.state_dict()
    write_weights(
        directory,
        {k: state[k] for k in _static_head_keys(model)},
        HEAD_SAFE_WEIGHTS_NAME,
        HEAD_WEIGHTS_NAME,
        use_safetensors,
    )
    label2id = dict(getattr(model.config, "label2id", None) or {})
    meta = {**_metadata(model, None), "config": None, "label2id": label2id, "num_labels": len(label2id)}
    write_json(directory / HEAD_CONFIG_NAME, meta)


def _load_static_head(model: nn.Module, head: tuple[dict[str, Any], dict[str, torch.Tensor]], path: Path) -> None:
    """Load a head saved by `_save_static_head` into a model of the same class (else skip it)."""
    meta, weights = head
    if meta.get("model_class") != type(model).__name__:
        logger.warning("not loading the %s head in %s into a %s", meta.get("model_class"), path, type(model).__name__)
        return
    targets = set(_static_head_keys(model))
    missing, unexpected = sorted(targets - weights.keys()), sorted(weights.keys() - targets)
    if missing or unexpected:
        raise ValueError(f"head weights in {path} do not fit: missing {missing[:5]}, unexpected {unexpected[:5]}")
    _check_shapes(model.state_dict(), weights, path)
    _copy_into(model, weights)
    if meta.get("label2id"):
        model.config.label2id = dict(meta["label2id"])
        model.config.id2label = {int(i): label for label, i in meta["label2id"].items()}


def save_head(
    model: nn.Module, save_directory: str | os.PathLike, head_name: str, use_safetensors: bool = True
) -> None:
    """Write head ``head_name`` (``head_config.json`` + weights keyed ``heads.<name>.*``)."""
    directory = Path(save_directory)
    head = model.heads[head_name]
    prefix = f"heads.{head_name}."
    state = {k: v for k, v in model.state_dict().items() if k.startswith(prefix)}
    write_weights(directory, state, HEAD_SAFE_WEIGHTS_NAME, HEAD_WEIGHTS_NAME, use_safetensors)
    write_json(directory / HEAD_CONFIG_NAME, {**_metadata(model, head_name), "config": dict(head.config)})


def read_adapter_config(directory: Path) -> dict[str, Any]:
    """Read ``adapter_config.json`` and apply AdapterHub's backward-compatibility fixes.

    - no ``"version"`` (adapter-transformers): old activation names are renamed;
    - ``adapters.`` versions before 1.1.0 with LoRA ``r != alpha``: ``alpha := r`` (their scaling fix).
    """
    data = read_json(directory / CONFIG_NAME)
    if not isinstance(data.get("config"), dict):
        raise ValueError(f"{directory / CONFIG_NAME} has no 'config' object")
    config = data["config"]
    version = data.get("version")
    if version is None and config.get("non_linearity") in _LEGACY_ACTIVATIONS:
        config["non_linearity"] = _LEGACY_ACTIVATIONS[config["non_linearity"]]
    if isinstance(version, str) and version.startswith("adapters."):
        try:
            old = Version(version.removeprefix("adapters.")) < Version("1.1.0")
        except InvalidVersion:
            old = False
        if old and config.get("architecture") == "lora" and config.get("r") != config.get("alpha"):
            logger.warning("adapter saved by adapters %s with faulty LoRA scaling: setting alpha = r", version)
            config["alpha"] = config["r"]
    return data


def _check_compatible(model: nn.Module, meta: dict[str, Any], path: Path) -> None:
    saved_type = meta.get("model_type")
    if saved_type and saved_type != model.config.model_type:
        raise ValueError(
            f"adapter in {path} was saved for model type {saved_type!r}, this model is {model.config.model_type!r}"
        )
    hidden = meta.get("hidden_size")
    ours = getattr(model.config, "hidden_size", None)
    if hidden is not None and ours is not None and hidden != ours:
        raise ValueError(f"adapter in {path} was saved for hidden size {hidden}, this model has {ours}")


def _match_keys(
    weights: dict[str, torch.Tensor],
    targets: set[str],
    prefix: str,
    rename: tuple[str | tuple[str, ...], str, str] | None,
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Map saved keys to this model's keys. Returns (matched weights by our key, unexpected saved keys).

    Args:
        rename: (attribute or attributes, saved name, new name) for ``load_as``.
    """
    matched: dict[str, torch.Tensor] = {}
    unexpected: list[str] = []
    for key, tensor in weights.items():
        parts = [_LEGACY_SEGMENTS.get(p, p) for p in key.split(".")]
        if rename is not None:
            for attribute in (rename[0],) if isinstance(rename[0], str) else rename[0]:
                idx = _segment_index(parts, attribute, rename[1])
                if idx is not None:
                    parts[idx] = rename[2]
        ours = ".".join(parts)
        candidates = [ours, f"{prefix}.{ours}" if prefix else ours]
        if prefix and ours.startswith(prefix + "."):
            candidates.append(ours[len(prefix) + 1 :])
        hit = next((c for c in candidates if c in targets), None)
        if hit is None:
            unexpected.append(key)
        else:
            matched[hit] = tensor
    return matched, unexpected


def _swap_prefix(key: str, saved: str, ours: str) -> str:
    """``key`` with the saving model's base-model prefix replaced by ours (``transformer.x`` -> ``model.x``)."""
    return f"{ours}.{key[len(saved) + 1:]}" if key.startswith(f"{saved}.") else key


def _copy_into(model: nn.Module, matched: dict[str, torch.Tensor]) -> None:
    # every name of a shared tensor: a causal-LM head's weight is tied to the input embeddings
    params = dict(model.named_parameters(remove_duplicate=False))
    buffers = dict(model.named_buffers(remove_duplicate=False))
    with torch.no_grad():
        for key, tensor in matched.items():
            target = params.get(key, buffers.get(key))
            target.copy_(tensor.to(target.dtype))


def _check_shapes(state: dict[str, torch.Tensor], matched: dict[str, torch.Tensor], path: Path) -> None:
    for key, tensor in matched.items():
        if state[key].shape != tensor.shape:
            raise ValueError(
                f"{path}: weight {key} has shape {tuple(tensor.shape)}, the model expects {tuple(state[key].shape)}"
            )


def load_adapter(
    model: nn.Module,
    adapter_name_or_path: str | os.PathLike,
    load_as: str | None = None,
    set_active: bool = False,
    leave_out: list[int] | None = None,
    loading_info: dict | None = None,
    with_head: bool = True,
    id2label: dict[int, str] | None = None,
    **kwargs: Any,
) -> str:
    """Load an adapter folder into ``model`` (see `ModelAdaptersMixin.load_adapter`). Returns its name.

    Raises:
        FileNotFoundError: if the folder or its files are missing.
        ValueError: for an unreadable file, an incompatible model, or weights that do not fit.
    """
    if kwargs:
        raise TypeError(f"load_adapter() got unexpected arguments {sorted(kwargs)}")
    path = Path(adapter_name_or_path)
    if not (path / CONFIG_NAME).is_file():
        raise FileNotFoundError(
            f"no adapter at {path}: expected a folder with {CONFIG_NAME} and {SAFE_WEIGHTS_NAME} or {WEIGHTS_NAME}"
        )
    meta = read_adapter_config(path)
    _check_compatible(model, meta, path)
    config = AdapterConfig.load(meta["config"])
    if leave_out:
        config = config.with_leave_out(leave_out)
    saved_name = meta.get("name") or path.name
    name = load_as or saved_name
    weights = read_weights(path, SAFE_WEIGHTS_NAME, WEIGHTS_NAME)
    method = method_for(config)
    weights = {k: v for k, v in weights.items() if not method.is_redundant_saved_key(k)}
    weights = from_saved_names(model._adapter_target.spec, weights, saved_name, method.module_attributes)
    saved_prefix = base_prefix_of(meta.get("model_class"))
    if saved_prefix and saved_prefix != model.base_model_prefix:  # e.g. LlamaForQuestionAnswering's "transformer"
        weights = {_swap_prefix(k, saved_prefix, model.base_model_prefix): v for k, v in weights.items()}
    head_data = _read_head(path) if with_head else None
    flexible = getattr(model, "heads", None) is not None

    from .fusion_io import restore_fusions, snapshot_fusions_using  # here: fusion_io imports this module

    previous = _snapshot_adapter(model, name)
    fusions = snapshot_fusions_using(model, name)  # reloading an adapter keeps the fusions that fuse it
    try:
        if name in model.adapters_config:
            logger.warning("overwriting existing adapter %r", name)
            model.delete_adapter(name)
        model.add_adapter(name, config)
        attribute = method_for(config).module_attributes
        state = model.state_dict()
        targets = set(_keys_with(state, attribute, name))
        matched, unexpected = _match_keys(weights, targets, model.base_model_prefix, (attribute, saved_name, name))
        if method.fit_loaded_weights(model, matched):
            state = model.state_dict()
        missing = sorted(targets - matched.keys())
        if missing or (unexpected and not leave_out):
            raise ValueError(
                f"adapter weights in {path} do not fit this model: missing keys {missing[:5]}"
                f"{'...' if len(missing) > 5 else ''}, unexpected keys {unexpected[:5]}"
                f"{'...' if len(unexpected) > 5 else ''}"
            )
        _check_shapes(state, matched, path)
        _copy_into(model, matched)
        if head_data is not None and head_data[0].get("config") is not None and flexible:
            _load_head(model, head_data, path, saved_name, name, id2label)
        elif head_data is not None and head_data[0].get("config") is None and not flexible:
            _load_static_head(model, head_data, path)
        elif head_data is not None and flexible:
            _convert_static_head(model, head_data, path, name, id2label)
        elif head_data is not None:
            logger.warning(
                "not loading the flexible head in %s into a %s: flexible heads do not convert to static heads",
                path,
                type(model).__name__,
            )
    except Exception:
        if name in model.adapters_config:
            model.delete_adapter(name)
        _restore_adapter(model, previous)
        restore_fusions(model, fusions)
        raise
    restore_fusions(model, fusions)
    if loading_info is not None:
        loading_info["missing_keys"] = []
        loading_info["unexpected_keys"] = unexpected
    if set_active:
        model.set_active_adapters(name)
    return name


def load_head(
    model: nn.Module,
    save_directory: str | os.PathLike,
    load_as: str | None = None,
    id2label: dict[int, str] | None = None,
) -> str:
    """Load a head folder (``head_config.json`` + weights) into a flexible-head model. Returns its name.

    A head saved from a transformers head class (``config`` null) is converted to a flexible head named
    ``load_as`` (see `heads.conversion`).

    Raises:
        FileNotFoundError: if the folder has no head files.
        ValueError: for weights that do not fit, or a static head without ``load_as`` or without a
            conversion; the model keeps its heads.
    """
    path = Path(save_directory)
    if not (path / HEAD_CONFIG_NAME).is_file():
        raise FileNotFoundError(f"no head at {path}: expected {HEAD_CONFIG_NAME}")
    head_data = read_json(path / HEAD_CONFIG_NAME), read_weights(path, HEAD_SAFE_WEIGHTS_NAME, HEAD_WEIGHTS_NAME)
    if head_data[0].get("config") is None:
        static_class = head_data[0].get("model_class")
        if load_as is None:
            raise ValueError(f"{path} holds the head of a {static_class}; pass load_as=<head name>")
        if not _convert_static_head(model, head_data, path, load_as, id2label):
            raise ValueError(f"{path} holds the head of a {static_class}, which has no flexible head conversion")
        return load_as
    saved_name = head_data[0].get("name") or path.name
    name = load_as or saved_name
    _load_head(model, head_data, path, saved_name, name, id2label)
    return name


def _read_head(path: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]] | None:
    if not (path / HEAD_CONFIG_NAME).is_file():
        return None
    meta = read_json(path / HEAD_CONFIG_NAME)
    return meta, read_weights(path, HEAD_SAFE_WEIGHTS_NAME, HEAD_WEIGHTS_NAME)


def _convert_static_head(
    model: nn.Module,
    head_data: tuple[dict[str, Any], dict[str, torch.Tensor]],
    path: Path,
    name: str,
    id2label: dict[int, str] | None,
) -> bool:
    """Load a head saved from a static-head model (``config`` null) as flexible head ``name``.

    Returns False (with a warning) when its model class has no conversion (see `heads.conversion`).
    """
    meta, weights = head_data
    model_class = meta.get("model_class") or ""
    saved_type = meta.get("model_type")
    if saved_type and saved_type != model.config.model_type:
        raise ValueError(
            f"the {model_class} head in {path} is for model type {saved_type!r}, this model is "
            f"{model.config.model_type!r}"
        )
    conversion = static_head_conversion(model_class, model.config)
    if conversion is None:
        logger.warning("not loading the %s head in %s: it has no flexible head conversion", model_class, path)
        return False
    label2id = meta.get("label2id") or None
    num_labels = meta.get("num_labels")
    if id2label is not None:
        label2id = {label: int(i) for i, label in id2label.items()}
        num_labels = len(label2id)
    convert_static_head(model, conversion, weights, name, label2id=label2id, num_labels=num_labels)
    return True


def _load_head(
    model: nn.Module,
    head_data: tuple[dict[str, Any], dict[str, torch.Tensor]],
    path: Path,
    saved_name: str,
    name: str,
    id2label: dict[int, str] | None,
) -> None:
    meta, weights = head_data
    saved_head = meta.get("name") or saved_name
    config = dict(meta["config"])
    if id2label is not None:
        config["label2id"] = {label: int(i) for i, label in id2label.items()}
        config["num_labels"] = len(id2label)
    previous = model.heads[name] if name in model.heads else None
    model.add_prediction_head_from_config(name, config, overwrite_ok=True, set_active=False)
    try:
        state = model.state_dict()
        targets = {k for k in state if k.startswith(f"heads.{name}.")}
        matched, unexpected = _match_keys(weights, targets, "", ("heads", saved_head, name))
        missing = sorted(targets - matched.keys())
        if missing or unexpected:
            raise ValueError(f"head weights in {path} do not fit: missing {missing[:5]}, unexpected {unexpected[:5]}")
        _check_shapes(state, matched, path)
        _copy_into(model, matched)
    except Exception:
        model.delete_head(name)
        if previous is not None:
            model.add_prediction_head(previous, set_active=False)
        raise


def _snapshot_adapter(model: nn.Module, name: str) -> tuple[str, AdapterConfig, dict[str, torch.Tensor]] | None:
    """(name, config, weights) of an existing adapter, to restore it if a load fails."""
    config = model.adapters_config.get(name)
    if config is None:
        return None
    state = model.state_dict()
    keys = _keys_with(state, method_for(config).module_attributes, name)
    return name, config, {k: state[k].detach().clone() for k in keys}


def _restore_adapter(model: nn.Module, snapshot: tuple[str, AdapterConfig, dict[str, torch.Tensor]] | None) -> None:
    if snapshot is None:
        return
    name, config, tensors = snapshot
    model.add_adapter(name, config)
    method_for(config).fit_loaded_weights(model, tensors)
    _copy_into(model, tensors)
