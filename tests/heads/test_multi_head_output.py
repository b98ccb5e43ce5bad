"""`MultiHeadOutput`: AdapterHub's container semantics plus what generate/Trainer read from it."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers.modeling_outputs import QuestionAnsweringModelOutput, SequenceClassifierOutput

import adapterkit
from adapterkit.heads import MultiHeadOutput


def _outputs():
    first = SequenceClassifierOutput(loss=torch.tensor(1.0), logits=torch.ones(2, 3))
    second = SequenceClassifierOutput(loss=torch.tensor(2.0), logits=torch.zeros(2, 3))
    return first, second


def test_int_index_len_and_iteration_address_head_outputs():
    first, second = _outputs()
    out = MultiHeadOutput(head_outputs=[first, second], loss=torch.tensor(3.0))
    assert out[0] is first and out[1] is second and out[-1] is second
    assert len(out) == 2 and list(out) == [first, second]
    assert out["loss"] == 3.0 and out.loss == 3.0
    assert list(out.keys()) == ["head_outputs", "loss"]
    out[1] = first
    assert out.head_outputs[1] is first


def test_logits_are_concatenated_along_the_batch():
    first, second = _outputs()
    out = MultiHeadOutput(head_outputs=[first, second])
    assert out.loss is None
    assert torch.equal(out.logits, torch.cat([first.logits, second.logits]))
    assert out.logits is out.logits  # computed once
    out[0] = second
    assert torch.equal(out.logits, torch.zeros(4, 3))  # replacing a head output drops the cached value


def test_logits_raise_when_they_cannot_be_concatenated():
    first, _ = _outputs()
    wide = SequenceClassifierOutput(logits=torch.zeros(2, 5))
    with pytest.raises(ValueError, match=r"shapes \[\(2, 3\), \(2, 5\)\].*out\[i\]\.logits"):
        _ = MultiHeadOutput(head_outputs=[first, wide]).logits
    qa = QuestionAnsweringModelOutput(start_logits=torch.zeros(2, 4), end_logits=torch.zeros(2, 4))
    with pytest.raises(ValueError, match="QuestionAnsweringModelOutput"):
        _ = MultiHeadOutput(head_outputs=[first, qa]).logits


def test_cache_field_is_a_key_generate_finds_and_copies_survive():
    first, second = _outputs()
    cache = object()
    out = MultiHeadOutput(head_outputs=[first, second], past_key_values=cache)
    assert "past_key_values" in out and out["past_key_values"] is cache
    clone = copy.deepcopy(out)
    assert isinstance(clone, MultiHeadOutput) and len(clone) == 2
    assert isinstance(out.to_tuple()[0], list)


def test_exported_at_top_level():
    assert adapterkit.MultiHeadOutput is MultiHeadOutput
