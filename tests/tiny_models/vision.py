"""Tiny configs of vision and multimodal models."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

CONFIGS: dict[str, Callable[[], Any]] = {}
INPUTS: dict[str, Callable[..., dict[str, Any]]] = {}
