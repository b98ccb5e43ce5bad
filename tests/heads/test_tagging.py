"""TaggingHead: per-token logits, loss over attended tokens only."""

import pytest
import torch
from transformers.modeling_outputs import TokenClassifierOutput

from adapterkit.heads import TaggingHead


@pytest.mark.parametrize("kind", ["bert", "gpt2"])
def test_logits_per_token_and_loss_backpropagates(make_model, ids, kind):
    model = make_model(kind)
    model.add_tagging_head("pos", num_labels=5)
    out = model(ids, attention_mask=torch.ones_like(ids), labels=torch.randint(0, 5, ids.shape))
    assert isinstance(out, TokenClassifierOutput)
    assert out.logits.shape == (2, 7, 5)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    assert model.heads["pos"][1].weight.grad.abs().sum() > 0


def test_loss_skips_padding_and_ignore_index(bert):
    head = TaggingHead(bert, "pos", num_labels=3)
    logits = torch.randn(2, 4, 3)
    labels = torch.tensor([[0, 1, 2, -100], [2, 2, 0, 1]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    active = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]]).bool()  # mask==1 and label != -100
    expected = torch.nn.functional.cross_entropy(logits[active], labels[active])
    torch.testing.assert_close(head.loss(logits, labels, mask), expected)


def test_head_argument_selects_tagging_head(bert, ids):
    bert.add_tagging_head("pos", num_labels=4)
    bert.add_classification_head("cls")  # now the active head
    assert bert(ids, head="pos").logits.shape == (2, 7, 4)


def test_id2label_sets_labels_and_size(bert):
    bert.add_tagging_head("ner", id2label={0: "O", 1: "B-PER", 2: "I-PER"}, num_labels=3)
    assert bert.heads["ner"].config["label2id"] == {"O": 0, "B-PER": 1, "I-PER": 2}
    assert bert.get_labels("ner") == ["O", "B-PER", "I-PER"]
    assert bert.config.id2label == {0: "O", 1: "B-PER", 2: "I-PER"}
