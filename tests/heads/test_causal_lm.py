"""CausalLMHead: tied output layer, shifted loss, and the tie's life cycle."""

import torch
from transformers.modeling_outputs import CausalLMOutput, CausalLMOutputWithPast

from adapterkit import AutoAdapterModel


def test_layout_and_output_weight_is_input_embedding(gpt2):
    gpt2.add_causal_lm_head("lm")
    head = gpt2.heads["lm"]
    assert isinstance(head[2], torch.nn.LayerNorm) and head[3].bias is not None
    assert head[3].weight is gpt2.get_input_embeddings().weight


def test_loss_predicts_the_next_token(gpt2, ids):
    gpt2.add_causal_lm_head("lm")
    out = gpt2(ids, labels=ids, use_cache=False)
    assert isinstance(out, CausalLMOutput)
    assert out.logits.shape == (2, 7, 99)
    expected = torch.nn.functional.cross_entropy(out.logits[:, :-1].reshape(-1, 99), ids[:, 1:].reshape(-1))
    torch.testing.assert_close(out.loss, expected)
    out.loss.backward()
    assert gpt2.heads["lm"][0].weight.grad.abs().sum() > 0


def test_head_argument_selects_causal_lm_head_and_cache_is_passed_on(gpt2, ids):
    gpt2.add_causal_lm_head("lm")
    gpt2.add_classification_head("cls")
    out = gpt2(ids, head="lm", use_cache=True)
    assert isinstance(out, CausalLMOutputWithPast) and out.past_key_values is not None
    assert out.logits.shape == (2, 7, 99)


def test_tie_survives_to_and_state_dict_keeps_the_head_key(gpt2):
    gpt2.add_causal_lm_head("lm")
    gpt2.to(torch.float64)
    embedding = gpt2.get_input_embeddings().weight
    assert gpt2.heads["lm"][3].weight is embedding and embedding.dtype == torch.float64
    assert gpt2.state_dict()["heads.lm.3.weight"].data_ptr() == embedding.data_ptr()


def test_deleting_the_head_keeps_the_embeddings(gpt2):
    embedding = gpt2.get_input_embeddings().weight
    before = embedding.detach().clone()
    gpt2.add_causal_lm_head("lm")
    gpt2.delete_head("lm")
    assert gpt2.get_input_embeddings().weight is embedding
    assert torch.equal(embedding, before)


def test_not_tied_when_config_unties_embeddings(make_model):
    model = make_model("gpt2", tie_word_embeddings=False)
    model.add_causal_lm_head("lm")
    assert model.heads["lm"][3].weight is not model.get_input_embeddings().weight


def test_save_pretrained_round_trip_restores_the_tie(gpt2, tmp_path):
    gpt2.add_causal_lm_head("lm")
    gpt2.save_pretrained(tmp_path)
    loaded = AutoAdapterModel.from_pretrained(tmp_path)
    assert loaded.heads["lm"][3].weight is loaded.get_input_embeddings().weight
    torch.testing.assert_close(loaded.heads["lm"].state_dict(), gpt2.heads["lm"].state_dict())
