"""`integration.saved_names`: adapter files name AdapterHub's (transformers 4) module paths, the model its own."""

from __future__ import annotations

import torch

from adapterkit.integration.architectures import get_architecture
from adapterkit.integration.saved_names import rename_key
from tiny import randomize, tiny_inputs, tiny_model

VIT = get_architecture("vit").saved_names


def test_module_path_renamed_both_ways():
    ours = "vit.layers.1.attention.q_proj.loras.a.lora_A"
    theirs = "vit.encoder.layer.1.attention.attention.query.loras.a.lora_A"
    assert rename_key(ours, VIT, "a", ("loras",), to_saved=True) == theirs
    assert rename_key(theirs, VIT, "a", ("loras",), to_saved=False) == ours
    # the longest fragment wins: output.dense is the FFN projection, output.output_adapters the bottleneck host
    assert (
        rename_key("vit.layers.0.output_adapters.adapters.a.adapter_up.weight", VIT, "a", ("adapters",), True)
        == "vit.encoder.layer.0.output.output_adapters.adapters.a.adapter_up.weight"
    )
    assert rename_key("vit.encoder.layer.0.output.dense.loras.a.lora_B", VIT, "a", ("loras",), False) == (
        "vit.layers.0.mlp.fc2.loras.a.lora_B"
    )


def test_adapter_name_and_parameter_names_never_renamed():
    key = "vit.layers.0.mlp.fc1.loras.layers.lora_A"  # an adapter called "layers"
    saved = "vit.encoder.layer.0.intermediate.dense.loras.layers.lora_A"
    assert rename_key(key, VIT, "layers", ("loras",), True) == saved
    # without <attribute>.<adapter name> the key is left alone
    assert rename_key("vit.layers.0.mlp.fc1.weight", VIT, "a", ("loras",), True) == "vit.layers.0.mlp.fc1.weight"


def test_vit_adapter_named_like_a_module_round_trips(tmp_path):
    model = tiny_model("vit")
    model.add_adapter("layers", config="lora[intermediate_lora=True, output_lora=True]")
    randomize(model, "layers")
    model.set_active_adapters("layers")
    model.save_adapter(tmp_path, "layers")
    fresh = tiny_model("vit")
    fresh.load_adapter(tmp_path, set_active=True)
    inputs = tiny_inputs(arch="vit")
    with torch.no_grad():
        torch.testing.assert_close(fresh(**inputs).last_hidden_state, model(**inputs).last_hidden_state)
