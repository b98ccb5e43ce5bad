"""Saving and loading AdapterFusions in AdapterHub's folder format.

A folder holds ``adapter_fusion_config.json`` (the fusion config, ``adapter_names``, ``name`` and the
model metadata) plus ``model_adapter_fusion.safetensors`` (or AdapterHub's default
``pytorch_model_adapter_fusion.bin``), and optionally a head (``head_config.json`` + weights). Weight
keys are the saving model's state-dict names (``...output.adapter_fusion_layer.<name>.query.weight``);
the base-model prefix is added or dropped on load as for adapters. Loading a fusion does not load the
adapters it fuses (as in AdapterHub): they must be in the model already. A failed load leaves the
model as it was.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..composition import Fuse
from ..configs import AdapterFusionConfig
from ..integration.saved_names import from_saved_names, to_saved_names
from ..methods.fusion import FUSION_ATTRIBUTE
from .adapter_io import (
    _check_compatible,
    _check_shapes,
    _copy_into,
    _keys_with,
    _match_keys,
    _metadata,
    _segment_index,
    load_head,
    save_head,
)
from .files import (
    FUSION_CONFIG_NAME,
    FUSION_SAFE_WEIGHTS_NAME,
    FUSION_WEIGHTS_NAME,
    HEAD_CONFIG_NAME,
    read_json,
    read_weights,
    write_json,
    write_weights,
)

logger = logging.getLogger(__name__)


def save_adapter_fusion(
    model: nn.Module,
    save_directory: str | os.PathLike,
    fusion_name: str,
    meta_dict: dict | None = None,
    with_head: bool | str = False,
    use_safetensors: bool = True,
) -> None:
    """Write fusion ``fusion_name`` (and optionally a head) to a folder (see `FusionMixin.save_adapter_fusion`).

    Raises:
        ValueError: if the model has no such fusion, or no head of the requested name.
    """
    config, adapter_names = model.adapters_config.get_fusion(fusion_name)
    if config is None:
        raise ValueError(
            f"no AdapterFusion named {fusion_name!r}; this model has {sorted(model.adapters_config.fusions)}"
        )
    head_name = None
    if with_head:
        head_name = with_head if isinstance(with_head, str) else fusion_name
        heads = getattr(model, "heads", None)
        if heads is None or head_name not in heads:
            raise ValueError(
                f"no head named {head_name!r} to save with AdapterFusion {fusion_name!r}; heads: "
                f"{sorted(heads) if heads is not None else 'none (this model has no flexible heads)'}"
            )
    directory = Path(save_directory)
    state = model.state_dict()
    keys = _keys_with(state, FUSION_ATTRIBUTE, fusion_name)
    weights = to_saved_names(model._adapter_target.spec, {k: state[k] for k in keys}, fusion_name, (FUSION_ATTRIBUTE,))
    write_weights(directory, weights, FUSION_SAFE_WEIGHTS_NAME, FUSION_WEIGHTS_NAME, use_safetensors)
    meta = {**_metadata(model, fusion_name), "config": config.to_dict(), "adapter_names": list(adapter_names)}
    meta.update({k: v for k, v in (meta_dict or {}).items() if k not in meta})
    write_json(directory / FUSION_CONFIG_NAME, meta)
    if head_name is not None:
        save_head(model, directory, head_name, use_safetensors=use_safetensors)


def load_adapter_fusion(
    model: nn.Module,
    path: str | os.PathLike,
    load_as: str | None = None,
    set_active: bool = False,
    with_head: bool = True,
    loading_info: dict | None = None,
) -> str:
    """Load a fusion folder into ``model`` (see `FusionMixin.load_adapter_fusion`). Returns the fusion's name.

    Raises:
        FileNotFoundError: if the folder or its files are missing.
        ValueError: for an unreadable file, an incompatible model, fused adapters the model lacks, or
            weights that do not fit; the model is left as it was.
    """
    directory = Path(path)
    if not (directory / FUSION_CONFIG_NAME).is_file():
        raise FileNotFoundError(
            f"no AdapterFusion at {directory}: expected a folder with {FUSION_CONFIG_NAME} and "
            f"{FUSION_SAFE_WEIGHTS_NAME} or {FUSION_WEIGHTS_NAME}"
        )
    meta = read_json(directory / FUSION_CONFIG_NAME)
    if not isinstance(meta.get("config"), dict):
        raise ValueError(f"{directory / FUSION_CONFIG_NAME} has no 'config' object")
    _check_compatible(model, meta, directory)
    config = AdapterFusionConfig.load(meta["config"])
    saved_name = meta.get("name") or directory.name
    name = load_as or saved_name
    adapter_names = meta.get("adapter_names") or saved_name.split(",")
    if isinstance(adapter_names, str):
        adapter_names = adapter_names.split(",")
    if not isinstance(adapter_names, list) or not all(isinstance(a, str) and a for a in adapter_names):
        raise ValueError(f"{directory / FUSION_CONFIG_NAME}: 'adapter_names' must be a list of adapter names")
    lacking = [a for a in adapter_names if a not in model.adapters_config]
    if lacking:
        raise ValueError(
            f"the AdapterFusion in {directory} fuses {adapter_names}, but this model lacks {lacking}: load those "
            f"adapters first (load_adapter); loading a fusion does not load its adapters"
        )
    weights = read_weights(directory, FUSION_SAFE_WEIGHTS_NAME, FUSION_WEIGHTS_NAME)
    weights = from_saved_names(model._adapter_target.spec, weights, saved_name, (FUSION_ATTRIBUTE,))
    load_heads = with_head and (directory / HEAD_CONFIG_NAME).is_file()
    if load_heads and getattr(model, "heads", None) is None:
        logger.warning("not loading the head in %s: this model has no flexible heads", directory)
        load_heads = False

    setup, skip_layers = model.adapters_config.active_setup, model.adapters_config.skip_layers
    previous = snapshot_fusion(model, name)
    in_place = previous is not None and previous.config == config and list(previous.adapter_names) == adapter_names
    try:
        if not in_place:
            if previous is not None:
                logger.warning("overwriting existing AdapterFusion %r", name)
                model.delete_adapter_fusion(name)
            model.add_adapter_fusion(adapter_names, config, name=name)
        state = model.state_dict()
        targets = set(_keys_with(state, FUSION_ATTRIBUTE, name))
        matched, unexpected = _match_keys(
            weights, targets, model.base_model_prefix, (FUSION_ATTRIBUTE, saved_name, name)
        )
        missing = sorted(targets - matched.keys())
        if missing or (unexpected and not _left_out_sites(model, adapter_names, unexpected, saved_name)):
            raise ValueError(
                f"AdapterFusion weights in {directory} do not fit this model: missing keys {missing[:5]}"
                f"{'...' if len(missing) > 5 else ''}, unexpected keys {unexpected[:5]}"
                f"{'...' if len(unexpected) > 5 else ''}"
            )
        _check_shapes(state, matched, directory)
        _copy_into(model, matched)
        if load_heads:
            load_head(model, directory, load_as=load_as)
    except Exception:
        if in_place:
            _copy_into(model, previous.tensors)  # type: ignore[union-attr]
        else:
            if name in model.adapters_config.fusions:
                model.delete_adapter_fusion(name)
            restore_fusions(model, [previous] if previous is not None else [])
        model.adapters_config.active_setup, model.adapters_config.skip_layers = setup, skip_layers
        raise
    if unexpected:
        logger.info("ignored %d AdapterFusion weights in %s for sites without all fused adapters", len(unexpected),
                    directory)
    if loading_info is not None:
        loading_info["missing_keys"] = []
        loading_info["unexpected_keys"] = unexpected
    if set_active:
        model.set_active_adapters(Fuse(*adapter_names, name=None if name == ",".join(adapter_names) else name))
    return name


def _left_out_sites(model: nn.Module, adapter_names: list[str], unexpected: list[str], saved_name: str) -> bool:
    """Whether the unexpected keys are all weights of this fusion at sites the fused adapters leave out.

    AdapterHub adds fusion layers at every layer of a location, also where a fused adapter is left
    out (``leave_out``); adapterkit adds them only where all fused adapters exist.
    """
    if not any(getattr(model.adapters_config.get(a), "leave_out", None) for a in adapter_names):
        return False
    return all(_segment_index(k.split("."), FUSION_ATTRIBUTE, saved_name) is not None for k in unexpected)


@dataclass
class FusionSnapshot:
    """A fusion's registration and weights, to re-create it after its layers were removed."""

    name: str
    config: AdapterFusionConfig
    adapter_names: tuple[str, ...]
    tensors: dict[str, torch.Tensor]


def snapshot_fusion(model: nn.Module, name: str) -> FusionSnapshot | None:
    """A copy of fusion ``name`` (config, fused adapters, weights), or None if the model has none."""
    config, adapter_names = model.adapters_config.get_fusion(name)
    if config is None:
        return None
    state = model.state_dict()
    keys = _keys_with(state, FUSION_ATTRIBUTE, name)
    return FusionSnapshot(name, config, tuple(adapter_names), {k: state[k].detach().clone() for k in keys})


def snapshot_fusions_using(model: nn.Module, adapter_name: str) -> list[FusionSnapshot]:
    """Snapshots of every fusion that fuses ``adapter_name`` (which deleting the adapter removes)."""
    names = [n for n, adapters in model.adapters_config.fusion_adapters.items() if adapter_name in adapters]
    return [s for s in (snapshot_fusion(model, n) for n in names) if s is not None]


def restore_fusions(model: nn.Module, snapshots: list[FusionSnapshot]) -> None:
    """Re-create the fusions of ``snapshots`` that the model lost, with their weights.

    Weights are copied where the re-created fusion has the same sites; a fusion whose adapters are
    gone or share no site any more is not re-created (logged).
    """
    for snap in snapshots:
        if snap.name in model.adapters_config.fusions:
            continue
        if any(a not in model.adapters_config for a in snap.adapter_names):
            logger.warning("not restoring AdapterFusion %r: its adapters %s are not all present", snap.name,
                           list(snap.adapter_names))
            continue
        try:
            model.add_adapter_fusion(list(snap.adapter_names), snap.config, name=snap.name)
        except ValueError as e:
            logger.warning("not restoring AdapterFusion %r: %s", snap.name, e)
            continue
        state = model.state_dict()
        _copy_into(model, {k: v for k, v in snap.tensors.items() if k in state and state[k].shape == v.shape})
