"""The encoder-decoder table entries (T5, mT5, BART, mBART, PLBart): layer numbering across the two stacks,
AdapterHub's weight names, the cross-attention sites (bottleneck cross_adapter, LoRA, prefix tuning), the
decoder's own padding mask for ReFT, composition across the stacks, and the sequence-level heads."""

from __future__ import annotations

import pytest
import torch

from adapterkit import AdapterSetup, BatchSplit, Parallel
from adapterkit.heads.seq2seq_lm import decoder_input_ids_from_labels
from adapterkit.integration import attention
from adapterkit.methods.prefix_tuning import PrefixTuningMethod
from tiny import randomize, tiny_inputs, tiny_model

SEQ2SEQ = ["t5", "mt5", "bart", "mbart", "plbart"]


def _decoder_output(model, inputs, **kwargs) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs, **kwargs).last_hidden_state


def _keys(model, name: str = "a") -> list[str]:
    return sorted(k for k in model.state_dict() if f".{name}." in k)


# ---- table ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", SEQ2SEQ)
def test_layers_are_numbered_encoder_first(arch):
    model = tiny_model(arch)
    target = model._adapter_target
    assert [target.stack(i).name for i in range(4)] == ["encoder", "encoder", "decoder", "decoder"]
    model.add_adapter("a", config="seq_bn[leave_out=[0, 1]]")
    assert sorted(model.get_adapter("a")) == [2, 3]
    assert all(".decoder." in k for k in _keys(model))


# AdapterHub's names (its mixin_t5.py / mixin_bart.py): decoder layer 0, bottleneck at the cross-attention, LoRA
# on the cross-attention's query, and the three prefix locations
NAMES = {
    "t5": ("decoder.block.0.layer.1.adapters.a.", "decoder.block.0.layer.1.EncDecAttention.q.loras.a."),
    "bart": ("decoder.layers.0.cross_attention_adapters.adapters.a.", "decoder.layers.0.encoder_attn.q_proj.loras.a."),
}


@pytest.mark.parametrize("arch", ["t5", "bart"])
def test_weight_names_are_adapterhubs(arch):
    model = tiny_model(arch)
    prefix = model.base_model_prefix
    cross, lora = NAMES[arch]
    model.add_adapter("a", config="seq_bn[cross_adapter=True, mh_adapter=False, output_adapter=False]")
    assert _keys(model) and all(k.startswith(f"{prefix}.decoder.") for k in _keys(model))
    assert any(k.startswith(f"{prefix}.{cross}") for k in _keys(model))
    model.delete_adapter("a")
    model.add_adapter("a", config="lora")
    assert any(k.startswith(f"{prefix}.{lora}") for k in _keys(model))
    model.delete_adapter("a")
    model.add_adapter("a", config="prefix_tuning[prefix_length=2, bottleneck_size=8]")
    locations = {k.split(".prefix_tunings.a.")[1].split(".")[0] for k in _keys(model) if ".prefix_tunings." in k}
    assert locations == {"encoder_prefix", "self_prefix", "cross_prefix"}


def test_gated_t5_feed_forward_adapts_wi_1():
    model = tiny_model("mt5")
    model.add_adapter("a", config="lora[selfattn_lora=False, intermediate_lora=True]")
    assert all(".DenseReluDense.wi_1.loras.a." in k for k in _keys(model))


# ---- cross-attention sites --------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", SEQ2SEQ)
def test_cross_adapter_alone_changes_only_the_decoder(arch):
    model = tiny_model(arch)
    inputs = tiny_inputs(arch=arch)
    with torch.no_grad():
        base = model(**inputs)
    model.add_adapter("a", config="seq_bn[cross_adapter=True, mh_adapter=False, output_adapter=False]")
    randomize(model, "a")
    model.set_active_adapters("a")
    with torch.no_grad():
        out = model(**inputs)
    assert torch.equal(out.encoder_last_hidden_state, base.encoder_last_hidden_state)
    assert not torch.allclose(out.last_hidden_state, base.last_hidden_state, atol=1e-3)


@pytest.mark.parametrize("encoder_prefix", [True, False])
@pytest.mark.parametrize("cross_prefix", [True, False])
def test_prefix_locations_follow_the_config(encoder_prefix, cross_prefix):
    model = tiny_model("bart")
    config = (
        f"prefix_tuning[prefix_length=2, bottleneck_size=8, encoder_prefix={encoder_prefix}, "
        f"cross_prefix={cross_prefix}]"
    )
    model.add_adapter("a", config=config)
    sites = {(idx, site.location) for idx, _, site in PrefixTuningMethod()._sites(model._adapter_target)}
    expected = {(i, "encoder_prefix") for i in (0, 1) if encoder_prefix} | {(i, "self_prefix") for i in (2, 3)}
    expected |= {(i, "cross_prefix") for i in (2, 3) if cross_prefix}
    assert sites == expected


@pytest.mark.parametrize("arch", ["t5", "bart", "mbart"])
def test_cross_attention_prefix_respects_the_encoder_padding(arch):
    """The cross-attention's prefix slots are prepended to the encoder's keys with the encoder padding mask extended:
    a padded row gives the decoder output of the same row run alone without padding."""
    model = tiny_model(arch)
    model.add_adapter("a", config="prefix_tuning[prefix_length=3, bottleneck_size=8]")
    randomize(model, "a")
    model.set_active_adapters("a")
    inputs = tiny_inputs(arch=arch)
    out = _decoder_output(model, inputs)
    real = int(inputs["attention_mask"][2].sum())
    alone = {"input_ids": inputs["input_ids"][2:, :real], "attention_mask": inputs["attention_mask"][2:, :real],
             "decoder_input_ids": inputs["decoder_input_ids"][2:]}
    torch.testing.assert_close(out[2:], _decoder_output(model, alone), atol=1e-5, rtol=0)


def test_t5_prefix_slots_get_no_position_bias(monkeypatch):
    """T5 adds its relative position bias inside attention: the prefix slots get 0 there, the real keys keep theirs."""
    from transformers.models.t5.modeling_t5 import T5Attention, eager_attention_forward

    seen = []

    def spy(module, query, key, value, attention_mask, position_bias=None, **kwargs):
        seen.append((key.shape[-2], position_bias))
        return eager_attention_forward(module, query, key, value, attention_mask, position_bias=position_bias, **kwargs)

    monkeypatch.setitem(attention._EAGER_BY_TYPE, T5Attention, spy)
    model = tiny_model("t5")
    inputs = tiny_inputs(arch="t5")
    model.add_adapter("a", config="prefix_tuning[prefix_length=3, bottleneck_size=8]")
    _decoder_output(model, inputs)  # inactive: the model's own keys and bias
    plain = list(seen)
    seen.clear()
    model.set_active_adapters("a")
    _decoder_output(model, inputs)
    assert len(seen) == len(plain) == 6  # encoder self x2, decoder self x2, cross x2
    for (length, bias), (plain_length, plain_bias) in zip(seen, plain, strict=True):
        assert length == plain_length + 3
        assert torch.equal(bias[..., :3], torch.zeros_like(bias[..., :3]))
        torch.testing.assert_close(bias[..., 3:], plain_bias.expand_as(bias[..., 3:]))


def test_reft_places_decoder_positions_by_the_decoder_mask():
    """ReFT in decoder layers reads decoder_attention_mask (not the encoder's mask): with one suffix position, a row
    whose decoder input is right-padded is changed from its last real token on, not before."""
    model = tiny_model("bart")
    inputs = tiny_inputs(arch="bart")
    decoder_mask = torch.ones_like(inputs["decoder_input_ids"])
    decoder_mask[1, -3:] = 0
    inputs["decoder_attention_mask"] = decoder_mask
    base = _decoder_output(model, inputs)
    model.add_adapter("a", config="noreft[suffix_positions=1, prefix_positions=0, layers=[2, 3]]")
    randomize(model, "a")
    model.set_active_adapters("a")
    out = _decoder_output(model, inputs)
    last = int(decoder_mask[1].sum()) - 1
    assert torch.equal(out[1, :last], base[1, :last])
    assert not torch.allclose(out[1, last], base[1, last], atol=1e-4)


# ---- composition across the two stacks --------------------------------------------------------------------
@pytest.mark.parametrize("leave_out", [[], [0, 1]], ids=["replicated-in-encoder", "replicated-in-decoder"])
@pytest.mark.parametrize("arch", ["t5", "bart", "mbart"])
def test_parallel_equals_each_adapter_alone(arch, leave_out):
    model = tiny_model(arch)
    inputs = tiny_inputs(arch=arch)
    for name in ("a", "b"):
        model.add_adapter(name, config=f"seq_bn[cross_adapter=True, leave_out={leave_out}]")
        randomize(model, name, seed=ord(name))
    alone = []
    for name in ("a", "b"):
        with AdapterSetup(name):
            alone.append(_decoder_output(model, inputs))
    with AdapterSetup(Parallel("a", "b")):
        parallel = _decoder_output(model, inputs)
    torch.testing.assert_close(parallel, torch.cat(alone), atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "config", ["seq_bn[cross_adapter=True]", "lora", "prefix_tuning[prefix_length=2, bottleneck_size=8]"]
)
def test_batch_split_and_per_row_routing_equal_each_adapter_alone(config):
    model = tiny_model("t5")
    inputs = tiny_inputs(arch="t5")
    for name in ("a", "b"):
        model.add_adapter(name, config=config)
        randomize(model, name, seed=ord(name))
    alone = {}
    for name in ("a", "b"):
        with AdapterSetup(name):
            alone[name] = _decoder_output(model, inputs)
    with AdapterSetup(BatchSplit("a", "b", batch_sizes=[1, 2])):
        split = _decoder_output(model, inputs)
    torch.testing.assert_close(split, torch.cat([alone["a"][:1], alone["b"][1:]]), atol=1e-5, rtol=0)
    routed = _decoder_output(model, inputs, adapter_names=["b", "a", "b"])
    torch.testing.assert_close(routed, torch.stack([alone["b"][0], alone["a"][1], alone["b"][2]]), atol=1e-5, rtol=0)


# ---- sequence-level heads ---------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", SEQ2SEQ)
def test_classification_reads_the_decoder_output_at_the_last_eos(arch):
    model = tiny_model(arch)
    model.add_classification_head("cls", num_labels=3)
    inputs = tiny_inputs(arch=arch)
    inputs.pop("decoder_input_ids")  # the decoder runs on input_ids shifted right
    with torch.no_grad():
        logits = model(**inputs).logits
        shifted = decoder_input_ids_from_labels(model, inputs["input_ids"])
        decoder = model.base_model(**inputs, decoder_input_ids=shifted)
    last_eos = inputs["attention_mask"].sum(-1) - 1  # tiny inputs end each row with eos
    expected = model.heads["cls"].mlp(decoder.last_hidden_state[torch.arange(3), last_eos])
    torch.testing.assert_close(logits, expected)
    inputs["input_ids"][1, last_eos[1]] = 5
    with pytest.raises(ValueError, match=r"rows \[1\] of input_ids have no eos token"):
        model(**inputs)


def test_question_answering_reads_the_decoder_output():
    model = tiny_model("bart")
    model.add_qa_head("qa")
    inputs = tiny_inputs(arch="bart")
    with torch.no_grad():
        out = model(**inputs)
        hidden = model.base_model(**inputs).last_hidden_state
    logits = model.heads["qa"].mlp(hidden)
    torch.testing.assert_close(out.start_logits, logits[..., 0])
    assert out.start_logits.shape == inputs["decoder_input_ids"].shape
