"""Seq2SeqLMHead and generate() on the encoder-decoders: AdapterHub's head config, the tie and T5's output scale,
the loss with decoder inputs shifted from the labels, and generation (greedy and beam, with adapters, Parallel,
per-row routing and prefix tuning) against a full forward per step."""

from __future__ import annotations

import pytest
import torch
import transformers
from transformers.modeling_outputs import Seq2SeqLMOutput

from adapterkit import AutoAdapterModel, Parallel
from adapterkit.heads.seq2seq_lm import decoder_input_ids_from_labels
from tiny import randomize, tiny_config, tiny_inputs, tiny_model

SEQ2SEQ = ["t5", "mt5", "bart", "mbart", "plbart"]
STEPS = 4


def _lm_model(arch: str, config: str | None = "seq_bn[cross_adapter=True]"):
    model = tiny_model(arch)
    model.generation_config.eos_token_id = None  # random models emit eos early; generate a fixed length
    model.add_seq2seq_lm_head("lm")
    if config is not None:
        model.add_adapter("a", config=config)
        randomize(model, "a")
        model.set_active_adapters("a")
    return model


def _greedy_by_forward(model, inputs, steps: int = STEPS, **forward_kwargs) -> torch.Tensor:
    """Greedy decoding with a full forward (encoder and decoder, no cache) per step."""
    decoded = torch.full((inputs["input_ids"].shape[0], 1), model.config.decoder_start_token_id)
    with torch.no_grad():
        for _ in range(steps):
            logits = model(
                input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], decoder_input_ids=decoded,
                use_cache=False, **forward_kwargs,
            ).logits
            decoded = torch.cat([decoded, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return decoded


def _encoder_inputs(arch: str) -> dict[str, torch.Tensor]:
    inputs = tiny_inputs(arch=arch)
    return {"input_ids": inputs["input_ids"], "attention_mask": inputs["attention_mask"]}


@pytest.mark.parametrize("arch", SEQ2SEQ)
def test_head_config_layout_and_tie(arch):
    model = tiny_model(arch)
    model.add_seq2seq_lm_head("lm")
    head = model.heads["lm"]
    assert head.config == {
        "head_type": "seq2seq_lm", "vocab_size": 99, "layers": 1, "activation_function": None,
        "layer_norm": False, "bias": False, "shift_labels": False,
    }
    assert len(head) == 1 and head[0].bias is None
    tied = arch != "mt5"  # mT5 (and T5 v1.1) have their own output embedding
    assert (head[0].weight is model.get_input_embeddings().weight) is tied
    assert (head.output_scale is not None) is (arch == "t5")


@pytest.mark.parametrize("arch", SEQ2SEQ)
def test_logits_read_the_decoder_output(arch):
    model = _lm_model(arch, config=None)
    inputs = tiny_inputs(arch=arch)
    with torch.no_grad():
        out = model(**inputs)
        hidden = model.base_model(**inputs).last_hidden_state
    assert isinstance(out, Seq2SeqLMOutput) and out.encoder_last_hidden_state is not None
    scale = 32**-0.5 if arch == "t5" else 1.0  # T5ForConditionalGeneration's rule for tied embeddings
    torch.testing.assert_close(out.logits, (hidden * scale) @ model.heads["lm"][0].weight.T)


@pytest.mark.parametrize("arch", SEQ2SEQ)
def test_loss_uses_decoder_inputs_shifted_from_the_labels(arch):
    model = _lm_model(arch)
    inputs = _encoder_inputs(arch)
    labels = tiny_inputs(arch=arch)["decoder_input_ids"]
    labels[1, -2:] = -100
    out = model(**inputs, labels=labels)
    shifted = decoder_input_ids_from_labels(model, labels)
    assert shifted[0, 0] == (labels[0, -1] if arch in ("mbart", "plbart") else model.config.decoder_start_token_id)
    assert torch.equal(shifted[:, 1:], labels[:, :-1].masked_fill(labels[:, :-1] == -100, 0))
    explicit = model(**inputs, decoder_input_ids=shifted).logits
    torch.testing.assert_close(out.logits, explicit)
    expected = torch.nn.functional.cross_entropy(explicit.reshape(-1, 99), labels.reshape(-1), ignore_index=-100)
    torch.testing.assert_close(out.loss, expected)
    out.loss.backward()
    assert model.base_model.decoder.layers[0].output_adapters.adapters["a"].adapter_up.weight.grad is not None if (
        arch not in ("t5", "mt5")
    ) else model.base_model.decoder.block[0].layer[2].adapters["a"].adapter_up.weight.grad is not None


GENERATE_CONFIGS = [
    "seq_bn[cross_adapter=True]",
    "prefix_tuning[prefix_length=3, bottleneck_size=8]",
    "lora",
    "seq_bn_inv",
    "prompt_tuning[prompt_length=2]",
    "noreft[prefix_positions=2]",  # suffix positions move with each new token, so a cache cannot reproduce them
]


@pytest.mark.parametrize(
    ("arch", "config"),
    [(arch, config) for arch in ("t5", "bart") for config in GENERATE_CONFIGS]
    + [(arch, config) for arch in ("mt5", "mbart", "plbart") for config in GENERATE_CONFIGS[:2]],
)
def test_greedy_generate_equals_a_full_forward_per_step(arch, config):
    model = _lm_model(arch, config)
    inputs = _encoder_inputs(arch)
    generated = model.generate(**inputs, max_new_tokens=STEPS, do_sample=False)
    assert torch.equal(generated, _greedy_by_forward(model, inputs))


@pytest.mark.parametrize("arch", ["t5", "bart", "mbart"])
def test_beam_search_with_cache_equals_without_and_scores_the_sequence(arch):
    model = _lm_model(arch, "prefix_tuning[prefix_length=3, bottleneck_size=8]")
    inputs = _encoder_inputs(arch)
    beam = dict(max_new_tokens=STEPS, num_beams=3, do_sample=False, length_penalty=0.0, early_stopping=True,
                return_dict_in_generate=True, output_scores=True)
    cached = model.generate(**inputs, **beam)
    uncached = model.generate(**inputs, use_cache=False, **beam)
    assert torch.equal(cached.sequences, uncached.sequences)
    torch.testing.assert_close(cached.sequences_scores, uncached.sequences_scores)
    with torch.no_grad():  # length_penalty 0: a beam's score is its summed token log-probabilities
        logits = model(**inputs, decoder_input_ids=cached.sequences[:, :-1], use_cache=False).logits
    logprobs = logits.log_softmax(-1).gather(-1, cached.sequences[:, 1:, None]).squeeze(-1).sum(-1)
    torch.testing.assert_close(cached.sequences_scores, logprobs, atol=1e-4, rtol=0)


@pytest.mark.parametrize("config", ["seq_bn[cross_adapter=True]", "prefix_tuning[prefix_length=3, bottleneck_size=8]"])
@pytest.mark.parametrize("arch", ["t5", "bart"])
def test_generate_with_parallel_and_per_row_routing_equals_each_adapter_alone(arch, config):
    model = tiny_model(arch)
    model.generation_config.eos_token_id = None
    inputs = _encoder_inputs(arch)
    for name in ("a", "b"):
        model.add_adapter(name, config=config)
        randomize(model, name, seed=ord(name))
        model.add_seq2seq_lm_head(name)
    greedy = dict(max_new_tokens=STEPS, do_sample=False, return_dict_in_generate=True, output_scores=True)
    alone = {}
    for name in ("a", "b"):
        model.set_active_adapters(name)
        model.active_head = name
        alone[name] = model.generate(**inputs, **greedy)
    assert not torch.allclose(alone["a"].scores[0], alone["b"].scores[0])
    model.set_active_adapters(Parallel("a", "b"))
    parallel = model.generate(**inputs, **greedy)
    assert torch.equal(parallel.sequences, torch.cat([alone["a"].sequences, alone["b"].sequences]))
    for step, scores in enumerate(parallel.scores):
        expected = torch.cat([alone["a"].scores[step], alone["b"].scores[step]])
        torch.testing.assert_close(scores, expected, atol=1e-5, rtol=0)
    model.set_active_adapters(None)
    routed = model.generate(**inputs, adapter_names=["b", "a", "b"], **greedy)
    rows = [alone[n].sequences[i] for i, n in enumerate(["b", "a", "b"])]
    assert torch.equal(routed.sequences, torch.stack(rows))


def test_save_and_load_head_keeps_the_tie_and_an_untied_weight(tmp_path):
    for arch in ("bart", "mt5"):
        model = _lm_model(arch, config=None)
        with torch.no_grad():
            model.heads["lm"][0].weight.add_(0.5)
        model.save_head(tmp_path / arch, "lm")
        fresh = tiny_model(arch)
        fresh.load_head(tmp_path / arch)
        assert torch.equal(fresh.heads["lm"][0].weight, model.heads["lm"][0].weight)
        assert (fresh.heads["lm"][0].weight is fresh.get_input_embeddings().weight) is (arch == "bart")


@pytest.mark.parametrize(("arch", "tie"), [(arch, True) for arch in SEQ2SEQ] + [("t5", False), ("bart", False)])
def test_for_conditional_generation_checkpoint_becomes_the_default_head(arch, tie, tmp_path):
    """`AutoAdapterModel.from_pretrained` of an ``XxxForConditionalGeneration`` checkpoint: its ``lm_head`` becomes
    the ``seq2seq_lm`` head ``default`` with the same logits (T5 with and without tied, scaled output)."""
    config = tiny_config(arch)
    config.tie_word_embeddings = tie
    config = type(config).from_dict(config.to_dict())  # as loaded from a saved config.json (T5 keeps the saved tie)
    torch.manual_seed(0)
    static = getattr(transformers, type(config).__name__.replace("Config", "ForConditionalGeneration"))(config).eval()
    with torch.no_grad():
        for param in static.parameters():
            param.add_(torch.randn_like(param) * 0.05)
    static.save_pretrained(tmp_path)
    model = AutoAdapterModel.from_pretrained(tmp_path).eval()
    assert model.active_head == "default" and model.heads["default"].config["head_type"] == "seq2seq_lm"
    inputs = tiny_inputs(arch=arch)
    with torch.no_grad():
        expected = static(**inputs).logits
        actual = model(**inputs).logits
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=0)
