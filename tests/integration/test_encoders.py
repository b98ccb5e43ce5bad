"""Encoder-family behaviour beyond the method matrix (tests/integration/test_models.py): ALBERT's shared layers,
DeBERTa's fused q/k/v layout and relative-position projections, X-MOD's language adapters, and prompts that
leave padded rows independent."""

from __future__ import annotations

import pytest
import torch
from transformers import XmodConfig, XmodModel

from adapterkit import AutoAdapterModel, SeqBnConfig
from adapterkit.composition import BatchSplit
from tiny import randomize, tiny_config, tiny_inputs, tiny_model

# ---- ALBERT ------------------------------------------------------------------------------------------------


def test_albert_numbers_its_physical_layers():
    model = tiny_model("albert")  # one group of two layers, run num_hidden_layers=2 times
    model.add_adapter("a", config=SeqBnConfig(leave_out=[0]))
    keys = [k for k in model.state_dict() if ".adapters.a." in k]
    layer_1 = "albert.encoder.albert_layer_groups.0.albert_layers.1.output_adapters."
    assert keys and all(k.startswith(layer_1) for k in keys)


def test_albert_shared_layer_runs_its_adapter_at_every_use():
    model = tiny_model("albert")
    model.add_adapter("a", set_active=True)
    calls: list[int] = []
    for idx, layer in enumerate(model._adapter_target.layers):
        adapter = layer.output_adapters.adapters["a"]
        adapter.adapter_down.register_forward_hook(lambda *_, idx=idx: calls.append(idx))
    with torch.no_grad():
        model(**tiny_inputs())
    uses = model.config.num_hidden_layers // model.config.num_hidden_groups  # runs of the one group
    assert calls == [0, 1] * uses


# ---- DeBERTa -------------------------------------------------------------------------------------------------


def test_deberta_fused_lora_updates_the_real_query_rows():
    """DeBERTa's in_proj outputs [q_h | k_h | v_h] per head; a q-only LoRA must change exactly the q rows."""
    model = tiny_model("deberta")
    model.add_adapter("a", config="lora[attn_matrices=['q'], r=2]")
    randomize(model, "a")
    proj = model.base_model.encoder.layer[0].attention.self.in_proj
    before = proj.weight.detach().clone()
    model.merge_adapter("a")
    changed = (proj.weight != before).any(dim=1)
    heads, head_dim = model.config.num_attention_heads, model.config.hidden_size // model.config.num_attention_heads
    q_rows = torch.zeros(heads, 3, head_dim, dtype=torch.bool)
    q_rows[:, 0] = True
    assert torch.equal(changed, q_rows.flatten())


def test_deberta_v2_shared_position_projection_refuses_per_row_lora():
    """With share_att_key, query_proj/key_proj also project the relative-position embeddings (one row for the
    whole batch): per-row setups cannot adapt them, and say so; value-only LoRA composes as usual."""
    inputs = tiny_inputs()
    for matrices, works in ((["q", "v"], False), (["v"], True)):
        model = tiny_model("deberta-v2")
        for name, seed in (("a", 1), ("b", 2)):
            model.add_adapter(name, config=f"lora[attn_matrices={matrices}]")
            randomize(model, name, seed)
        model.set_active_adapters(BatchSplit("a", "b", batch_sizes=[1, 2]))
        if not works:
            with pytest.raises(ValueError, match="one-row input that serves the whole batch"):
                model(**inputs)
            continue
        with torch.no_grad():
            split = model(**inputs).last_hidden_state
            model.set_active_adapters("b")
            assert torch.allclose(split[1:], model(**inputs).last_hidden_state[1:], atol=1e-6)


# ---- prompts and padding -----------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["deberta", "deberta-v2", "modernbert", "albert"])
def test_prompt_tuning_keeps_rows_independent_of_padding(arch):
    """A padded row's outputs equal that row run alone without padding (DeBERTa takes the mask inside its
    embeddings; ModernBERT's rotary positions follow the prompted length)."""
    model = tiny_model(arch)
    model.add_adapter("a", config="prompt_tuning[prompt_length=2]", set_active=True)
    randomize(model, "a")
    inputs = tiny_inputs()
    row, length = 2, int(inputs["attention_mask"][2].sum())
    alone = {k: v[row : row + 1, :length] for k, v in inputs.items()}
    with torch.no_grad():
        batched = model(**inputs).last_hidden_state[row, : 2 + length]
        single = model(**alone).last_hidden_state[0]
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=0)


# ---- X-MOD ---------------------------------------------------------------------------------------------------


def test_xmod_language_adapters_give_way_and_lang_ids_are_refused():
    model = tiny_model("xmod")
    assert all(len(layer.output.adapter_modules) == 0 for layer in model.base_model.encoder.layer)
    with pytest.raises(ValueError, match="takes no lang_ids"):
        model(**tiny_inputs(), lang_ids=torch.zeros(3, dtype=torch.long))


def test_xmod_converted_language_adapter_equals_the_native_one():
    """X-MOD's own language adapter, copied into a bottleneck adapter with AdapterHub's conversion config
    (docs/models_encoders.md), gives the native model's outputs."""
    config = tiny_config("xmod")
    torch.manual_seed(0)
    native = XmodModel(config).eval()
    for parameter in native.parameters():  # non-trivial adapters and norms
        torch.nn.init.normal_(parameter, std=0.2)
    model = AutoAdapterModel.from_config(config).eval()
    model.base_model.load_state_dict(native.state_dict(), strict=False)
    language = SeqBnConfig(
        reduction_factor=config.adapter_reduction_factor,
        original_ln_before=True,
        original_ln_after=False,
        residual_before_ln=False,
        non_linearity=config.hidden_act,
    )
    inputs = tiny_inputs()
    for lang_id, lang in enumerate(config.languages):
        model.add_adapter(lang, config=language)
        for i, layer in enumerate(native.encoder.layer):
            ours = model.base_model.encoder.layer[i].output.adapters[lang]
            theirs = layer.output.adapter_modules[lang]
            ours.adapter_down[0].load_state_dict(theirs.dense1.state_dict())
            ours.adapter_up.load_state_dict(theirs.dense2.state_dict())
        model.set_active_adapters(lang)
        with torch.no_grad():
            expected = native(**inputs, lang_ids=torch.full((3,), lang_id)).last_hidden_state
            torch.testing.assert_close(model(**inputs).last_hidden_state, expected, atol=1e-5, rtol=0)


def test_xmod_other_language_adapter_layouts_are_refused():
    config = XmodConfig(**{**tiny_config("xmod").to_dict(), "adapter_layer_norm": True})
    with pytest.raises(ValueError, match="adapter_layer_norm"):
        AutoAdapterModel.from_config(config)
