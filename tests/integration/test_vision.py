"""Vision and multimodal entries (ViT, BEiT, CLIP): one adapter spanning CLIP's towers (AdapterHub issue #801),
layer numbering across towers, per-tower sizes, refusals for shared parameters of towers of different widths and
for Parallel on towers, Parallel on ViT and BEiT, prefix tuning beside BEiT's relative position bias.

Every method on every one of these architectures (add, forward, train, save/load, merge) is checked by
tests/integration/test_models.py; AdapterHub parity by tests/io/test_golden_vision.py.
"""

from __future__ import annotations

import pytest
import torch

from adapterkit import AutoAdapterModel, BatchSplit, MultiHeadOutput, Parallel
from tiny import randomize, tiny_config, tiny_inputs, tiny_model

TOL = dict(atol=1e-5, rtol=0)


def _clip_outputs(model, inputs):
    with torch.no_grad():
        out = model(**inputs)
    return out.text_model_output.last_hidden_state, out.vision_model_output.last_hidden_state


def test_clip_one_adapter_spans_both_towers_sized_per_tower():
    model = tiny_model("clip")  # text tower 32 wide, vision tower 24
    model.add_adapter("a", config="lora[r=4, attn_matrices=['q', 'v'], intermediate_lora=True]")
    modules = model.get_adapter("a")
    assert sorted(modules) == [0, 1, 2, 3]  # text layers 0-1, then vision layers 2-3
    text, vision = model.clip.text_model.encoder.layers, model.clip.vision_model.encoder.layers
    assert text[0].self_attn.q_proj.loras["a"].lora_A.shape == (4, 32)
    assert vision[1].self_attn.q_proj.loras["a"].lora_A.shape == (4, 24)
    assert vision[1].mlp.fc1.loras["a"].lora_A.shape == (4, 24)

    model.add_adapter("p", config="prefix_tuning[prefix_length=3, bottleneck_size=8]")
    group = model.clip.prefix_tuning.prefix_tunings["p"]
    assert {k: (m.n_layers, m.input_size) for k, m in group.items()} == {
        "clip_text_model_self_prefix": (2, 32),
        "clip_vision_model_self_prefix": (2, 24),
    }


def test_clip_leave_out_counts_text_layers_first():
    model = tiny_model("clip")
    inputs = tiny_inputs(arch="clip")
    base_text, base_vision = _clip_outputs(model, inputs)
    model.add_adapter("a", config="seq_bn[leave_out=[0, 1]]")  # the text tower's layers
    randomize(model, "a")
    model.set_active_adapters("a")
    assert sorted(model.get_adapter("a")) == [2, 3]
    text, vision = _clip_outputs(model, inputs)
    torch.testing.assert_close(text, base_text, atol=0, rtol=0)
    assert not torch.allclose(vision, base_vision, atol=1e-3)


def test_shared_phm_weights_refused_for_towers_of_different_widths():
    model = tiny_model("clip")
    with pytest.raises(ValueError, match=r"shared PHM weights .* sizes \[24, 32\]"):
        model.add_adapter("c", config="compacter++[reduction_factor=4, phm_dim=2]")
    assert "c" not in model.adapters_config
    # one tower alone has one width
    model.add_adapter("c", config="compacter++[reduction_factor=4, phm_dim=2, leave_out=[0, 1]]")
    assert sorted(model.get_adapter("c")) == [2, 3]


def test_parallel_refused_on_clip_towers():
    model = tiny_model("clip")
    model.add_adapter("a", config="seq_bn")
    model.add_adapter("b", config="seq_bn")
    with pytest.raises(ValueError, match="Parallel.* is not available for 'clip': its towers"):
        model.set_active_adapters(Parallel("a", "b"))


@pytest.mark.parametrize("arch", ["vit", "beit"])
def test_parallel_channels_equal_each_adapter_alone_with_its_head(arch):
    model = tiny_model(arch)
    for name in ("a", "b"):
        model.add_adapter(name, config="lora[intermediate_lora=True]")
        randomize(model, name, seed=ord(name))
        model.add_image_classification_head(name, num_labels=3)
    inputs = tiny_inputs(arch=arch)
    labels = torch.tensor([0, 1, 2])
    alone = {}
    for name in ("a", "b"):
        model.set_active_adapters(name)
        with torch.no_grad():
            alone[name] = model(**inputs, labels=labels, head=name)
    model.set_active_adapters(Parallel("a", "b"))
    with torch.no_grad():
        out = model(**inputs, labels=labels)
    assert isinstance(out, MultiHeadOutput) and len(out) == 2
    for i, name in enumerate(("a", "b")):
        torch.testing.assert_close(out[i].logits, alone[name].logits, **TOL)
        torch.testing.assert_close(out[i].loss, alone[name].loss, **TOL)


def test_beit_prefix_tuning_beside_relative_position_bias():
    """BEiT passes its relative position bias to attention as an additive (1, heads, q, kv) mask: the prefix slots
    get no bias (so a zero bias table equals a model without the bias) and the real keys keep theirs."""
    with_bias = tiny_model("beit")
    config = tiny_config("beit")
    config.use_relative_position_bias = False
    without_bias = AutoAdapterModel.from_config(config).eval()
    for model in (with_bias, without_bias):
        model.add_adapter("p", config="prefix_tuning[prefix_length=3, bottleneck_size=8]")
        model.set_active_adapters("p")
    randomize(with_bias, "p")
    tables = [layer.relative_position_bias.relative_position_bias_table for layer in with_bias.beit.layers]
    without_bias.load_state_dict({k: v for k, v in with_bias.state_dict().items() if "relative_position" not in k})
    inputs = tiny_inputs(arch="beit")
    with torch.no_grad():
        for table in tables:
            table.zero_()
        zero_bias, no_bias = with_bias(**inputs).last_hidden_state, without_bias(**inputs).last_hidden_state
        torch.testing.assert_close(zero_bias, no_bias, **TOL)

        for table in tables:  # a real bias changes the output; the prefix still applies
            table.normal_(generator=torch.Generator().manual_seed(3))
        biased = with_bias(**inputs).last_hidden_state
        with_bias.set_active_adapters(None)
        plain = with_bias(**inputs).last_hidden_state
    assert not torch.allclose(biased, zero_bias, atol=1e-3) and not torch.allclose(biased, plain, atol=1e-3)


def test_vit_prompts_per_row_need_one_length():
    """Images carry no token mask to pad shorter prompts with: rows may get their own prompts of one length."""
    model = tiny_model("vit")
    for name, length in (("p", 2), ("q", 2), ("r", 3)):
        model.add_adapter(name, config=f"prompt_tuning[prompt_length={length}]")
        randomize(model, name, seed=ord(name))
    inputs = tiny_inputs(batch=4, arch="vit")
    alone = {}
    for name in ("p", "q"):
        model.set_active_adapters(name)
        with torch.no_grad():
            alone[name] = model(**inputs).last_hidden_state
    model.set_active_adapters(BatchSplit("p", "q", batch_sizes=[1, 3]))
    with torch.no_grad():
        split = model(**inputs).last_hidden_state
    torch.testing.assert_close(split, torch.cat([alone["p"][:1], alone["q"][1:]]), **TOL)
    model.set_active_adapters(BatchSplit("p", "r", batch_sizes=[1, 3]))
    with pytest.raises(ValueError, match=r"prompts of different lengths \[2, 3\]"):
        model(**inputs)
