"""Table entries of encoder-decoder models."""

from __future__ import annotations

from ..spec import ArchitectureSpec

ENTRIES: list[ArchitectureSpec] = []
