"""AdapterHub's on-disk file names, and safe, atomic reading and writing of JSON and weights."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "pytorch_adapter.bin"
SAFE_WEIGHTS_NAME = "adapter.safetensors"
HEAD_CONFIG_NAME = "head_config.json"
HEAD_WEIGHTS_NAME = "pytorch_model_head.bin"
HEAD_SAFE_WEIGHTS_NAME = "model_head.safetensors"
FUSION_CONFIG_NAME = "adapter_fusion_config.json"
FUSION_WEIGHTS_NAME = "pytorch_model_adapter_fusion.bin"
FUSION_SAFE_WEIGHTS_NAME = "model_adapter_fusion.safetensors"


def _atomic_write(path: Path, write: Callable[[str], None]) -> None:
    """Write through a temporary file in the same folder, then rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` as sorted, indented JSON (AdapterHub's layout), atomically."""

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2, sort_keys=True)

    _atomic_write(path, write)


def read_json(path: Path) -> dict[str, Any]:
    """Read a JSON object.

    Raises:
        FileNotFoundError: if the file is missing.
        ValueError: if it is not valid JSON or not an object.
    """
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a JSON object, found {type(data).__name__}")
    return data


def write_weights(
    directory: Path, tensors: dict[str, torch.Tensor], safe_name: str, bin_name: str, use_safetensors: bool
) -> Path:
    """Write ``tensors`` as safetensors (default) or a torch ``.bin``, atomically. Returns the path."""
    tensors = {k: v.detach().contiguous().clone() for k, v in tensors.items()}
    if use_safetensors:
        path = directory / safe_name
        _atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}))
    else:
        path = directory / bin_name
        _atomic_write(path, lambda tmp: torch.save(tensors, tmp))
    return path


def read_weights(directory: Path, safe_name: str, bin_name: str) -> dict[str, torch.Tensor]:
    """Read weights, preferring safetensors; a ``.bin`` is read with ``torch.load(weights_only=True)``.

    Raises:
        FileNotFoundError: if neither file exists.
        ValueError: if the file is corrupt or holds something other than tensors.
    """
    safe, legacy = directory / safe_name, directory / bin_name
    if safe.is_file():
        try:
            return load_file(str(safe))
        except (SafetensorError, OSError, ValueError) as e:
            raise ValueError(f"cannot read {safe}: {e}") from None
    if legacy.is_file():
        try:
            data = torch.load(legacy, map_location="cpu", weights_only=True)
        except Exception as e:  # torch raises several types for corrupt or unsafe pickles
            raise ValueError(f"cannot read {legacy} (only plain tensor files are accepted): {e}") from None
        if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
            raise ValueError(f"{legacy} does not hold a dict of tensors")
        return data
    raise FileNotFoundError(f"no weights in {directory}: expected {safe_name} or {bin_name}")
