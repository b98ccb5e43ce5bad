"""QuestionAnsweringHead: start/end logits and the span loss."""

import pytest
import torch
from transformers.modeling_outputs import QuestionAnsweringModelOutput

from adapterkit.heads import QuestionAnsweringHead


@pytest.mark.parametrize("kind", ["bert", "gpt2"])
def test_start_end_logits_and_loss_backpropagates(make_model, ids, kind):
    model = make_model(kind)
    model.add_qa_head("squad")
    out = model(ids, start_positions=torch.tensor([1, 2]), end_positions=torch.tensor([3, 4]))
    assert isinstance(out, QuestionAnsweringModelOutput)
    assert out.start_logits.shape == out.end_logits.shape == (2, 7)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    assert model.heads["squad"][1].weight.grad.abs().sum() > 0


def test_label_names_are_span_positions(bert):
    assert QuestionAnsweringHead(bert, "qa").get_label_names() == ["start_positions", "end_positions"]


def test_loss_is_mean_of_ces_and_ignores_positions_past_the_sequence():
    start, end = torch.randn(2, 5), torch.randn(2, 5)
    start_pos, end_pos = torch.tensor([1, 4]), torch.tensor([2, 9])  # 9 is outside: clamped to 5, ignored
    expected = (
        torch.nn.functional.cross_entropy(start, start_pos)
        + torch.nn.functional.cross_entropy(end[:1], end_pos[:1])
    ) / 2
    torch.testing.assert_close(QuestionAnsweringHead.loss(start, end, start_pos, end_pos), expected)
    assert end_pos.tolist() == [2, 9]  # the caller's tensor is not clamped in place


def test_head_argument_selects_qa_head(bert, ids):
    bert.add_qa_head("squad")
    bert.add_classification_head("cls")
    out = bert(ids, head="squad")
    assert out.start_logits.shape == (2, 7)


def test_id2label_is_stored(bert):
    bert.add_qa_head("squad", id2label={0: "start", 1: "end"})
    assert bert.get_labels("squad") == ["start", "end"]


def test_rejects_other_than_two_outputs(bert):
    with pytest.raises(ValueError, match="num_labels=2"):
        bert.add_qa_head("squad", num_labels=3)
