"""Shared fixtures (helpers live in tests/tiny.py, importable as ``tiny``)."""

from __future__ import annotations

import pytest

from tiny import tiny_model


@pytest.fixture
def bert():
    """A tiny random BertAdapterModel."""
    return tiny_model("bert")
