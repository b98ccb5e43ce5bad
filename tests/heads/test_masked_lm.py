"""BertStyleMaskedLMHead: AdapterHub's layer layout, tied output, masked LM loss."""

import torch
from transformers.modeling_outputs import MaskedLMOutput


def test_layout_keys_and_output_weight_is_input_embedding(bert):
    bert.add_masked_lm_head("mlm")
    keys = {k for k in bert.state_dict() if k.startswith("heads.mlm.")}
    assert keys == {f"heads.mlm.{i}.{p}" for i in (0, 2, 3) for p in ("weight", "bias")}
    assert isinstance(bert.heads["mlm"][2], torch.nn.LayerNorm)
    assert bert.heads["mlm"][3].weight is bert.get_input_embeddings().weight


def test_logits_and_loss_ignoring_unmasked_positions(bert, ids):
    bert.add_masked_lm_head("mlm")
    labels = torch.full_like(ids, -100)
    labels[:, 2] = ids[:, 2]
    out = bert(ids, labels=labels)
    assert isinstance(out, MaskedLMOutput)
    assert out.logits.shape == (2, 7, 99)
    expected = torch.nn.functional.cross_entropy(out.logits[:, 2], ids[:, 2])
    torch.testing.assert_close(out.loss, expected)
    out.loss.backward()
    assert bert.heads["mlm"][0].weight.grad.abs().sum() > 0
    assert bert.heads["mlm"][3].bias.grad.abs().sum() > 0


def test_head_argument_selects_masked_lm_head(bert, ids):
    bert.add_masked_lm_head("mlm")
    bert.add_classification_head("cls")
    assert isinstance(bert(ids, head="mlm"), MaskedLMOutput)


def test_train_adapter_keeps_tied_embeddings_frozen_and_delete_cleans_tie_record():
    from tiny import tiny_model

    model = tiny_model("bert")
    model.add_adapter("a")
    model.add_masked_lm_head("a")
    model.train_adapter("a")
    assert not model.get_input_embeddings().weight.requires_grad
    model.delete_head("a")
    assert not any(k.startswith("heads.a.") for k in getattr(model, "all_tied_weights_keys", {}) or {})
