"""Shared fixtures (helpers live in tests/tiny.py, importable as ``tiny``)."""

from __future__ import annotations

import pytest
import torch

from tiny import tiny_model

# tiny models gain nothing from intra-op threads, and on a busy 2-core machine spinning threads make
# every small forward many times slower
torch.set_num_threads(1)


@pytest.fixture
def bert():
    """A tiny random BertAdapterModel."""
    return tiny_model("bert")
