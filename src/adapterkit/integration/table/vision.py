"""Table entries of vision and multimodal models."""

from __future__ import annotations

from ..spec import ArchitectureSpec

ENTRIES: list[ArchitectureSpec] = []
