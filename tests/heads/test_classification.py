"""Classification heads, head selection, and custom heads."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers.modeling_outputs import SequenceClassifierOutput

from adapterkit import AdapterSetup, PredictionHead
from tiny import tiny_inputs, tiny_model


def test_classification_loss_and_layout(bert):
    bert.add_classification_head("c", num_labels=3)
    out = bert(**tiny_inputs(), labels=torch.tensor([0, 2, 1]))
    assert out.logits.shape == (3, 3) and out.loss.ndim == 0
    assert [type(m).__name__ for m in bert.heads["c"]] == ["Dropout", "Linear", "Activation", "Dropout", "Linear"]


def test_regression_with_one_label(bert):
    bert.add_classification_head("r", num_labels=1)
    out = bert(**tiny_inputs(), labels=torch.tensor([0.5, 1.0, -1.0]))
    expected = nn.functional.mse_loss(out.logits.squeeze(-1), torch.tensor([0.5, 1.0, -1.0]))
    torch.testing.assert_close(out.loss, expected)


def test_multilabel_uses_bce(bert):
    bert.add_classification_head("m", num_labels=4, multilabel=True)
    labels = torch.tensor([[1, 0, 1, 0], [0, 0, 0, 1], [1, 1, 1, 1]])
    out = bert(**tiny_inputs(), labels=labels)
    torch.testing.assert_close(out.loss, nn.functional.binary_cross_entropy_with_logits(out.logits, labels.float()))


def test_decoder_reads_last_real_token_with_left_or_right_padding():
    model = tiny_model("gpt2")
    model.add_classification_head("c")
    ids = torch.tensor([[5, 6, 7, 0, 0]])
    right = model(input_ids=ids, attention_mask=torch.tensor([[1, 1, 1, 0, 0]])).logits
    single = model(input_ids=ids[:, :3], attention_mask=torch.ones(1, 3, dtype=torch.long)).logits
    torch.testing.assert_close(right, single, atol=1e-5, rtol=1e-5)


def test_head_selection_order(bert):
    bert.add_classification_head("two", num_labels=2)
    bert.add_classification_head("three", num_labels=3)
    assert bert.active_head == "three"
    assert bert(**tiny_inputs(), head="two").logits.shape[-1] == 2
    bert.add_adapter("two")
    with AdapterSetup("two"):
        assert bert(**tiny_inputs()).logits.shape[-1] == 2
    bert.active_head = None
    assert hasattr(bert(**tiny_inputs()), "last_hidden_state")


def test_id2label_switches_with_active_head(bert):
    bert.add_classification_head("a", num_labels=2, id2label={0: "neg", 1: "pos"})
    bert.add_classification_head("b", num_labels=2)
    assert bert.config.id2label == {0: "LABEL_0", 1: "LABEL_1"}
    bert.active_head = "a"
    assert bert.config.id2label == {0: "neg", 1: "pos"} and bert.get_labels() == ["neg", "pos"]


def test_delete_head_and_errors(bert):
    bert.add_classification_head("a")
    with pytest.raises(ValueError, match="exists already"):
        bert.add_classification_head("a")
    bert.delete_head("a")
    assert "a" not in bert.heads and bert.active_head is None and "a" not in bert.config.prediction_heads
    with pytest.raises(ValueError, match="no head named"):
        bert.active_head = "a"
    with pytest.raises(ValueError, match="unknown head type"):
        bert.add_prediction_head_from_config("x", {"head_type": "nope"})


class MeanPoolHead(PredictionHead):
    """A custom head: mean-pooled hidden states through one Linear."""

    head_type = "mean_pool"

    def __init__(self, model, head_name, num_labels=2):
        super().__init__(model, head_name, {"num_labels": num_labels})
        self.build(model, num_labels, layers=1, activation=None)

    def forward(self, outputs, cls_output=None, attention_mask=None, return_dict=True, **kwargs):
        mask = attention_mask.unsqueeze(-1).to(outputs[0].dtype)
        pooled = (outputs[0] * mask).sum(1) / mask.sum(1)
        return SequenceClassifierOutput(logits=self.mlp(pooled))


def test_custom_head_survives_full_model_round_trip(tmp_path):
    from adapterkit import AutoAdapterModel

    model = tiny_model("bert")
    model.register_custom_head("mean_pool", MeanPoolHead)
    model.add_custom_head("mean_pool", "custom", num_labels=5)
    with torch.no_grad():
        expected = model(**tiny_inputs()).logits
    assert expected.shape == (3, 5)
    model.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="mean_pool"):
        AutoAdapterModel.from_pretrained(tmp_path)  # the type must be registered before loading
    from adapterkit.heads import register_head_type

    register_head_type(MeanPoolHead)
    loaded = AutoAdapterModel.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(**tiny_inputs(), head="custom").logits, expected)
