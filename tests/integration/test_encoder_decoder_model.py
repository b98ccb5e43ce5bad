"""transformers' ``EncoderDecoderModel`` through ``adapterkit.init``: its entry derived from the two halves (decoder
layers numbered after the encoder's, the BERT decoder's cross-attention), one prefix pool per half, and
``generate()``. Every method's add/forward/train/save/load is covered by tests/integration/test_models.py; parity
with AdapterHub by tests/io/test_golden_speech.py."""

from __future__ import annotations

import pytest
import torch
from transformers import BertConfig, BertLMHeadModel, BertModel, ConvBertConfig, ConvBertModel, EncoderDecoderModel

import adapterkit
from adapterkit import AutoAdapterModel, Parallel, SeqBnConfig
from adapterkit.integration.architectures import ARCHITECTURES, get_architecture
from tiny import randomize, tiny_config, tiny_inputs, tiny_model
from tiny_models.encoders import ENCODER
from tiny_models.speech_and_composite import greedy_decode

DECODER = dict(ENCODER, is_decoder=True, add_cross_attention=True)


def _encoder_inputs(batch: int = 3) -> dict[str, torch.Tensor]:
    inputs = tiny_inputs(batch=batch, arch="encoder-decoder")
    return {"input_ids": inputs["input_ids"], "attention_mask": inputs["attention_mask"]}


def test_entry_stacks_the_halves_encoder_first():
    model = tiny_model("encoder-decoder")
    spec = model._adapter_target.spec
    assert [(s.name, s.layers, s.config_attr) for s in spec.stacks] == [
        ("encoder", "encoder.encoder.layer", "encoder"),
        ("decoder", "decoder.bert.encoder.layer", "decoder"),
    ]
    assert spec.embeddings == "encoder.embeddings" and spec.is_encoder_decoder
    # layer 1: the encoder's second layer; layer 2: the decoder's first. double_seq_bn's mh_adapter also puts an
    # adapter in the decoder's cross-attention (AdapterHub's BertSelfOutput there is an mh_adapter location)
    model.add_adapter("a", "double_seq_bn[leave_out=[1, 2]]")
    hosts = {k.split(".adapters.a.")[0] for k in model.state_dict() if ".adapters.a." in k}
    assert hosts == {
        "encoder.encoder.layer.0.attention.output",
        "encoder.encoder.layer.0.output",
        "decoder.bert.encoder.layer.1.attention.output",
        "decoder.bert.encoder.layer.1.crossattention.output",
        "decoder.bert.encoder.layer.1.output",
    }


def test_prefix_tuning_keeps_one_pool_per_half_and_deletes_both():
    model = tiny_model("encoder-decoder")
    model.add_adapter("p", "prefix_tuning[prefix_length=3, bottleneck_size=8]")
    assert set(model.encoder.prefix_tuning.prefix_tunings["p"]) == {"self_prefix"}
    assert set(model.decoder.bert.prefix_tuning.prefix_tunings["p"]) == {"self_prefix", "cross_prefix"}
    assert model.config.encoder._attn_implementation == "adapterkit_eager"
    model.delete_adapter("p")
    assert not hasattr(model.encoder, "prefix_tuning") and not hasattr(model.decoder.bert, "prefix_tuning")
    assert model.config.encoder._attn_implementation == model.config.decoder._attn_implementation == "eager"


def test_a_bert_decoder_on_its_own_gets_its_cross_attention():
    decoder = adapterkit.init(BertLMHeadModel(BertConfig(**DECODER)))
    stack = decoder._adapter_target.spec.stack
    assert stack.cross_attention.adapter_host == "crossattention.output"
    assert stack.cross_attn_projections["q"] == "crossattention.self.query"
    encoder = adapterkit.init(BertModel(BertConfig(**ENCODER)))
    assert encoder._adapter_target.spec is ARCHITECTURES["bert"]


def test_composite_entries_need_the_model_and_supported_halves():
    with pytest.raises(ValueError, match="adapterkit.init"):
        get_architecture("encoder-decoder")
    with pytest.raises(ValueError, match="adapterkit.init"):
        AutoAdapterModel.from_config(tiny_config("encoder-decoder"))
    encoder = ConvBertModel(ConvBertConfig(**ENCODER, embedding_size=32))
    model = EncoderDecoderModel(encoder=encoder, decoder=BertLMHeadModel(BertConfig(**DECODER)))
    with pytest.raises(ValueError, match="the encoder of EncoderDecoderModel is not supported"):
        adapterkit.init(model)


@pytest.fixture
def bert2bert():
    """The tiny BERT-to-BERT model with adapters ``seq_bn``, ``lora``, ``prefix`` and ``prompt``; its decoder
    position embeddings are spread out so greedy decoding does not repeat one token."""
    model = tiny_model("encoder-decoder")
    with torch.no_grad():
        weight = model.decoder.bert.embeddings.position_embeddings.weight
        weight.normal_(0.0, 1.0, generator=torch.Generator().manual_seed(0))
    configs = {
        "seq_bn": "seq_bn",
        "lora": "lora",
        "prefix": "prefix_tuning[prefix_length=3, bottleneck_size=8]",
        "prompt": "prompt_tuning[prompt_length=2]",
    }
    for i, (name, config) in enumerate(configs.items()):
        model.add_adapter(name, config)
        randomize(model, name, seed=i)
    return model


@pytest.mark.parametrize("setup", ["seq_bn", "lora", "prefix", "prompt", None])
def test_generate_equals_greedy_decoding(bert2bert, setup):
    model, inputs = bert2bert, _encoder_inputs()
    _, base_logits = greedy_decode(model, inputs, 5)
    model.set_active_adapters(setup)
    out = model.generate(**inputs, max_new_tokens=5, do_sample=False, output_logits=True, return_dict_in_generate=True)
    sequences, logits = greedy_decode(model, inputs, 5)
    assert torch.equal(out.sequences, sequences)
    torch.testing.assert_close(torch.stack(out.logits, dim=1), logits, rtol=0, atol=1e-5)
    if setup is not None:
        assert (logits - base_logits).abs().max() > 1e-3


def test_generate_with_parallel_gives_each_channel_its_greedy_decoding(bert2bert):
    model, inputs = bert2bert, _encoder_inputs()
    expected = []
    for name in ("lora", "prefix"):
        model.set_active_adapters(name)
        expected.append(greedy_decode(model, inputs, 5)[0])
    model.set_active_adapters(Parallel("lora", "prefix"))
    assert torch.equal(model.generate(**inputs, max_new_tokens=5, do_sample=False), torch.cat(expected))


def test_parallel_forward_replicates_the_encoder_output_for_decoder_only_adapters():
    model = tiny_model("encoder-decoder")
    for i, name in enumerate(("a", "b")):
        model.add_adapter(name, SeqBnConfig(mh_adapter=True, leave_out=[0, 1]))
        randomize(model, name, seed=i)
    inputs = tiny_inputs(arch="encoder-decoder")
    alone = []
    with torch.no_grad():
        for name in ("a", "b"):
            model.set_active_adapters(name)
            alone.append(model(**inputs).logits)
        model.set_active_adapters(Parallel("a", "b"))
        out = model(**inputs)
    torch.testing.assert_close(out.logits, torch.cat(alone), rtol=0, atol=1e-5)
    assert out.encoder_last_hidden_state.shape[0] == 3, "the encoder has no adapter: it runs once"
