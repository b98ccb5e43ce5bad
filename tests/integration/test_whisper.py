"""Whisper: its table entry (layers numbered encoder first, AdapterHub's module names), prefix tuning on the
decoder's self- and cross-attention, `Parallel` across the encoder/decoder boundary, and ``generate()`` with a
``seq2seq_lm`` head. Every method's add/forward/train/save/load (and the refusal of invertible adapters and prompt
tuning) is covered by tests/integration/test_models.py; parity with AdapterHub by tests/io/test_golden_speech.py."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from adapterkit import AutoAdapterModel, Parallel, PrefixTuningConfig, SeqBnConfig
from tiny import randomize, tiny_inputs, tiny_model
from tiny_models.speech_and_composite import greedy_decode

PREFIX = "prefix_tuning[prefix_length=3, bottleneck_size=8]"


def _features(batch: int = 3) -> dict[str, torch.Tensor]:
    return {"input_features": tiny_inputs(batch=batch, arch="whisper")["input_features"]}


def _outputs(model):
    with torch.no_grad():
        return model(**tiny_inputs(arch="whisper"))


def test_layers_are_numbered_encoder_first_with_adapterhub_module_names():
    model = tiny_model("whisper")
    # layer 1: the encoder's second layer; layer 2: the decoder's first
    model.add_adapter("a", SeqBnConfig(mh_adapter=True, cross_adapter=True, output_adapter=True, leave_out=[1, 2]))
    hosts = {k.split(".adapters.a.")[0] for k in model.state_dict() if ".adapters.a." in k}
    assert hosts == {
        "model.encoder.layers.0.attention_adapters",
        "model.encoder.layers.0.output_adapters",
        "model.decoder.layers.1.attention_adapters",
        "model.decoder.layers.1.cross_attention_adapters",
        "model.decoder.layers.1.output_adapters",
    }


@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
def test_prefix_tuning_reaches_the_decoder_self_and_cross_attention(attn_implementation):
    model = tiny_model("whisper", attn_implementation=attn_implementation)
    base = _outputs(model)
    model.add_adapter("x", PrefixTuningConfig(prefix_length=3, bottleneck_size=8, encoder_prefix=False))
    model.add_adapter(
        "y", PrefixTuningConfig(prefix_length=3, bottleneck_size=8, encoder_prefix=False, cross_prefix=False)
    )
    pool = model.model.prefix_tuning.prefix_tunings
    assert set(pool["x"]) == {"self_prefix", "cross_prefix"} and set(pool["y"]) == {"self_prefix"}
    pool["y"]["self_prefix"].load_state_dict(pool["x"]["self_prefix"].state_dict())
    model.set_active_adapters("x")
    with_cross = _outputs(model)
    model.set_active_adapters("y")
    self_only = _outputs(model)
    for out in (with_cross, self_only):  # no encoder prefix: the encoder is untouched
        torch.testing.assert_close(out.encoder_last_hidden_state, base.encoder_last_hidden_state, rtol=0, atol=0)
    assert (self_only.last_hidden_state - base.last_hidden_state).abs().max() > 1e-3
    assert (with_cross.last_hidden_state - self_only.last_hidden_state).abs().max() > 1e-3


def test_parallel_replicates_the_encoder_output_for_decoder_only_adapters():
    """Adapters only in the decoder: the batch is replicated at its first layer, cross-attention inputs too."""
    model = tiny_model("whisper")
    for i, name in enumerate(("a", "b")):
        model.add_adapter(name, SeqBnConfig(cross_adapter=True, leave_out=[0, 1]))
        randomize(model, name, seed=i)
    alone = []
    for name in ("a", "b"):
        model.set_active_adapters(name)
        alone.append(_outputs(model).last_hidden_state)
    model.set_active_adapters(Parallel("a", "b"))
    out = _outputs(model)
    torch.testing.assert_close(out.last_hidden_state, torch.cat(alone), rtol=0, atol=1e-6)
    assert out.encoder_last_hidden_state.shape[0] == 3, "the encoder has no adapter: it runs once"


@pytest.fixture
def whisper_lm():
    """A tiny Whisper with a seq2seq_lm head ``h`` and adapters ``seq_bn``, ``lora``, ``prefix``; its decoder
    position embeddings are spread out so greedy decoding does not repeat one token."""
    model = tiny_model("whisper")
    with torch.no_grad():
        model.model.decoder.embed_positions.weight.normal_(0.0, 1.0, generator=torch.Generator().manual_seed(0))
    model.add_seq2seq_lm_head("h")
    for i, (name, config) in enumerate((("seq_bn", "seq_bn"), ("lora", "lora"), ("prefix", PREFIX))):
        model.add_adapter(name, config)
        randomize(model, name, seed=i)
    return model


@pytest.mark.parametrize("setup", ["seq_bn", "lora", "prefix", None])
def test_generate_equals_greedy_decoding(whisper_lm, setup):
    model, features = whisper_lm, _features()
    _, base_logits = greedy_decode(model, features, 5)
    model.set_active_adapters(setup)
    out = model.generate(
        **features, max_new_tokens=5, do_sample=False, output_logits=True, return_dict_in_generate=True
    )
    sequences, logits = greedy_decode(model, features, 5)
    assert torch.equal(out.sequences, sequences)
    torch.testing.assert_close(torch.stack(out.logits, dim=1), logits, rtol=0, atol=1e-5)
    if setup is not None:
        assert (logits - base_logits).abs().max() > 1e-3


def test_generate_with_parallel_gives_each_channel_its_greedy_decoding(whisper_lm):
    model, features = whisper_lm, _features()
    expected = []
    for name in ("seq_bn", "prefix"):
        model.set_active_adapters(name)
        expected.append(greedy_decode(model, features, 5)[0])
    model.set_active_adapters(Parallel("seq_bn", "prefix"))
    model.active_head = ["h", "h"]
    out = model.generate(**features, max_new_tokens=5, do_sample=False)
    assert torch.equal(out, torch.cat(expected))


def test_beam_search_routes_rows_to_their_adapters(whisper_lm):
    """Per-row adapters with beams: the decoding steps' batch (rows x beams) is read from the decoder inputs."""
    model, features = whisper_lm, _features()
    routing = ["prefix", None, "seq_bn"]
    out = model.generate(**features, max_new_tokens=4, num_beams=2, adapter_names=routing)
    expected = []
    for row, name in enumerate(routing):
        model.set_active_adapters(name)
        row_features = features["input_features"][row : row + 1]
        expected.append(model.generate(input_features=row_features, max_new_tokens=4, num_beams=2))
    assert torch.equal(out, torch.cat(expected))


def test_labels_give_the_seq2seq_loss_with_shifted_decoder_inputs(whisper_lm):
    model, features = whisper_lm, _features()
    model.set_active_adapters("lora")
    labels = torch.randint(3, 99, (3, 4), generator=torch.Generator().manual_seed(0))
    labels[2, -1] = -100
    out = model(**features, labels=labels)
    decoder_input_ids = torch.cat([torch.ones(3, 1, dtype=torch.long), labels[:, :-1]], dim=1)  # start token 1
    logits = model(**features, decoder_input_ids=decoder_input_ids).logits
    torch.testing.assert_close(out.logits, logits)
    torch.testing.assert_close(out.loss, F.cross_entropy(logits.reshape(-1, 99), labels.reshape(-1)))


def test_save_pretrained_round_trip_keeps_adapters_and_head(whisper_lm, tmp_path):
    model, features = whisper_lm, _features()
    model.set_active_adapters("prefix")
    with torch.no_grad():
        expected = model(**features, decoder_input_ids=torch.ones(3, 2, dtype=torch.long)).logits
    model.save_pretrained(tmp_path)
    loaded = AutoAdapterModel.from_pretrained(tmp_path).eval()
    assert set(loaded.adapters_config) == {"seq_bn", "lora", "prefix"} and set(loaded.heads) == {"h"}
    loaded.set_active_adapters("prefix")
    with torch.no_grad():
        logits = loaded(**features, decoder_input_ids=torch.ones(3, 2, dtype=torch.long), head="h").logits
    torch.testing.assert_close(logits, expected, rtol=0, atol=1e-6)
