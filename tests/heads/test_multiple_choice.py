"""MultipleChoiceHead: (batch, choices, seq) inputs, (batch, choices) logits."""

import torch
from transformers.modeling_outputs import MultipleChoiceModelOutput

from adapterkit.heads import MultipleChoiceHead


def test_prepare_inputs_flattens_choice_tensors_and_remembers_count(bert):
    head = MultipleChoiceHead(bert, "mc", num_choices=2)
    ids = torch.zeros(2, 4, 5, dtype=torch.long)
    prepared = head.prepare_inputs(
        {
            "input_ids": ids,
            "attention_mask": torch.ones(2, 4, 5),
            "inputs_embeds": None,
            "output_attentions": True,
        }
    )
    assert prepared["input_ids"].shape == prepared["attention_mask"].shape == (8, 5)
    assert prepared["inputs_embeds"] is None and prepared["output_attentions"] is True
    assert head._input_choices == 4


def test_logits_per_choice_and_loss_backpropagates(bert):
    bert.add_multiple_choice_head("swag", num_choices=3)
    ids = torch.randint(1, 99, (2, 3, 6))
    out = bert(
        ids,
        attention_mask=torch.ones_like(ids),
        token_type_ids=torch.zeros_like(ids),
        labels=torch.tensor([0, 2]),
    )
    assert isinstance(out, MultipleChoiceModelOutput)
    assert out.logits.shape == (2, 3)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    assert bert.heads["swag"][4].weight.grad.abs().sum() > 0


def test_already_flat_inputs_use_configured_choice_count(bert):
    bert.add_multiple_choice_head("swag", num_choices=3, use_pooler=True)
    assert bert(torch.randint(1, 99, (6, 5))).logits.shape == (2, 3)


def test_head_argument_selects_multiple_choice_head(bert):
    bert.add_multiple_choice_head("swag", num_choices=4)
    bert.add_classification_head("cls")
    assert bert(torch.randint(1, 99, (1, 4, 5)), head="swag").logits.shape == (1, 4)


def test_labels_default_to_one_per_choice_or_follow_id2label(bert):
    bert.add_multiple_choice_head("default", num_choices=3)
    assert bert.get_labels("default") == ["LABEL_0", "LABEL_1", "LABEL_2"]
    bert.add_multiple_choice_head("named", id2label={0: "A", 1: "B"})
    assert bert.config.id2label == {0: "A", 1: "B"}
