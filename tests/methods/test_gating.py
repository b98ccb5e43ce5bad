"""Gating scores: ``output_adapter_gating_scores=True`` returns ``adapter_gating_scores = {adapter: {layer:
{location: np.ndarray}}}`` as AdapterHub does (values against AdapterHub: tests/io/test_golden_methods.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from adapterkit import Parallel
from tiny import ARCHS, DECODERS, randomize, tiny_inputs, tiny_model


def _gated(arch: str):
    model = tiny_model(arch)
    model.add_adapter("bn", config="double_seq_bn[use_gating=True]")
    model.add_adapter("lora", config="lora[use_gating=True]")
    model.add_adapter("plain", config="seq_bn")
    for name in ("bn", "lora", "plain"):
        randomize(model, name)
    return model


@pytest.mark.parametrize("arch", ARCHS)
def test_scores_per_adapter_layer_and_location(arch):
    model = _gated(arch)
    model.set_active_adapters(["bn", "lora", "plain"])
    with torch.no_grad():
        plain = model(**tiny_inputs())
        out = model(**tiny_inputs(), output_adapter_gating_scores=True)
    assert torch.equal(out.last_hidden_state, plain.last_hidden_state)
    assert "adapter_gating_scores" not in plain
    scores = out.adapter_gating_scores
    assert set(scores) == {"bn", "lora"} and set(scores["bn"]) == set(scores["lora"]) == {0, 1}
    for layer in (0, 1):
        assert set(scores["bn"][layer]) == {"mh_adapter", "output_adapter"}
        assert set(scores["lora"][layer]) == {"selfattn_lora"}
        for location, shape in (("mh_adapter", (3,)), ("output_adapter", (3,))):
            assert isinstance(scores["bn"][layer][location], np.ndarray)
            assert scores["bn"][layer][location].shape == shape
        q_and_v = scores["lora"][layer]["selfattn_lora"]  # two projections (gpt2: one fused gate, 2 outputs)
        assert q_and_v.shape == (3, 2) and ((q_and_v > 0) & (q_and_v < 1)).all()


def test_values_are_the_mean_sigmoid_gate_of_the_input():
    model = _gated("bert")
    model.set_active_adapters("lora")
    seen = {}
    for proj in ("query", "value"):
        module = getattr(model.bert.encoder.layer[1].attention.self, proj)
        module.register_forward_pre_hook(lambda m, a, proj=proj: seen.__setitem__(proj, a[0]))
    with torch.no_grad():
        score = model(**tiny_inputs(), output_adapter_gating_scores=True).adapter_gating_scores["lora"][1]
        expected = [
            torch.sigmoid(getattr(model.bert.encoder.layer[1].attention.self, p).loras["lora"].gate(seen[p])).mean(1)
            for p in ("query", "value")
        ]
    np.testing.assert_allclose(score["selfattn_lora"], torch.cat(expected, dim=1).numpy(), rtol=1e-6)


def test_batch_of_one_and_empty_and_head_models():
    model = _gated("llama")
    model.set_active_adapters(["bn", "lora"])
    one = {k: v[:1] for k, v in tiny_inputs().items()}
    with torch.no_grad():
        scores = model(**one, output_adapter_gating_scores=True).adapter_gating_scores
    assert scores["bn"][0]["output_adapter"].shape == (1,)  # AdapterHub: squeeze, then at least 1-d
    assert scores["lora"][0]["selfattn_lora"].shape == (1, 2)
    model.set_active_adapters("plain")
    with torch.no_grad():
        assert model(**tiny_inputs(), output_adapter_gating_scores=True).adapter_gating_scores == {}
    model.add_causal_lm_head("bn")
    model.set_active_adapters("bn")
    with torch.no_grad():
        out = model(**tiny_inputs(), output_adapter_gating_scores=True)
    assert out.logits.shape[-1] == 99 and set(out.adapter_gating_scores) == {"bn"}


def test_parallel_channels_and_half_precision():
    model = _gated(DECODERS[0]).to(torch.bfloat16)
    model.add_adapter("bn2", config="seq_bn[use_gating=True]")
    model.set_active_adapters(Parallel("bn", "bn2"))
    with torch.no_grad():
        scores = model(**tiny_inputs(), output_adapter_gating_scores=True).adapter_gating_scores
    assert scores["bn"][1]["output_adapter"].shape == (3,) and scores["bn2"][1]["output_adapter"].shape == (3,)
    assert scores["bn"][1]["output_adapter"].dtype == np.float32
