"""Model-level adapter API: add/delete/activate/train/freeze/summary/devices, and full-model round trips."""

from __future__ import annotations

import pytest
import torch
from transformers import BertForSequenceClassification, BertModel

import adapterkit
from adapterkit import AutoAdapterModel, Stack
from tiny import randomize, tiny_inputs, tiny_model


def test_add_duplicate_and_overwrite(bert):
    bert.add_adapter("a")
    with pytest.raises(ValueError, match="exists already"):
        bert.add_adapter("a")
    bert.add_adapter("a", config="lora", overwrite_ok=True)
    assert bert.adapters_config.get("a").method == "lora" and not bert.get_adapter("a")[0].get(
        "output_adapter"
    )


@pytest.mark.parametrize("name", ["", "a.b", "a,b", "a b", "double", "train"])
def test_bad_adapter_names(bert, name):
    with pytest.raises(ValueError, match="adapter name"):
        bert.add_adapter(name)


def test_default_config_is_seq_bn(bert):
    bert.add_adapter("a")
    assert bert.adapters_config.get("a") == adapterkit.SeqBnConfig()


def test_set_active_unknown_name_is_refused_at_setup(bert):
    bert.add_adapter("a")
    with pytest.raises(ValueError, match="'b'"):
        bert.set_active_adapters(Stack("a", "b"))
    assert bert.active_adapters is None


def test_active_adapters_property_and_delete_deactivates(bert):
    bert.add_adapter("a")
    bert.active_adapters = "a"
    assert bert.active_adapters == Stack("a")
    bert.delete_adapter("a")
    assert bert.active_adapters is None and not bert.has_adapters()


def test_skip_layers_run_no_adapter(bert):
    bert.add_adapter("a")
    randomize(bert, "a")
    bert.set_active_adapters("a", skip_layers=[0, 1])
    with torch.no_grad():
        skipped = bert(**tiny_inputs()).last_hidden_state
        bert.set_active_adapters(None)
        base = bert(**tiny_inputs()).last_hidden_state
    assert torch.equal(skipped, base)


def test_train_adapter_freezes_all_but_adapter_and_its_head(bert):
    bert.add_adapter("a")
    bert.add_adapter("b", config="lora")
    bert.add_classification_head("a")
    bert.add_classification_head("other")
    bert.train_adapter("a")
    trainable = {n for n, p in bert.named_parameters() if p.requires_grad}
    assert trainable and all(".adapters.a." in n or n.startswith("heads.a.") for n in trainable)
    assert any(n.startswith("heads.a.") for n in trainable)
    assert (
        bert.training and bert.model_frozen and bert.active_adapters == Stack("a") and bert.active_head == "a"
    )


def test_train_adapter_step_changes_only_adapter_and_head(bert):
    bert.add_adapter("a", config="lora")
    bert.add_classification_head("a")
    bert.train_adapter("a")
    before = {k: v.clone() for k, v in bert.state_dict().items()}
    optimizer = torch.optim.AdamW([p for p in bert.parameters() if p.requires_grad], lr=0.1)
    for _ in range(3):
        loss = bert(**tiny_inputs(), labels=torch.tensor([0, 1, 1])).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    changed = {k for k, v in bert.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and all(".loras.a." in k or k.startswith("heads.a.") for k in changed)
    assert any(".loras.a.lora_B" in k for k in changed)


def test_freeze_model_and_train_embeddings(bert):
    bert.add_adapter("a")
    bert.train_adapter("a", train_embeddings=True)
    assert bert.get_input_embeddings().weight.requires_grad
    bert.freeze_model(False)
    assert all(p.requires_grad for p in bert.base_model.parameters()) and not bert.model_frozen


def test_adapter_summary(bert):
    bert.add_adapter("a")
    bert.add_adapter("l", config="lora")
    bert.set_active_adapters("a")
    rows = bert.adapter_summary(as_dict=True)
    by_name = {r["name"]: r for r in rows}
    a_params = sum(
        p.numel() for m in bert.get_adapter("a").values() for x in m.values() for p in x.parameters()
    )
    assert by_name["a"]["#param"] == a_params and by_name["a"]["active"] and not by_name["l"]["active"]
    assert by_name["l"]["architecture"] == "lora"
    assert by_name["Full model"]["#param"] == sum(p.numel() for p in BertModel(bert.config).parameters())
    assert "Full model" in bert.adapter_summary()


def test_adapter_to_casts_only_that_adapter(bert):
    bert.add_adapter("a")
    bert.adapter_to("a", dtype=torch.float64)
    assert all(
        p.dtype == torch.float64
        for m in bert.get_adapter("a").values()
        for x in m.values()
        for p in x.parameters()
    )
    assert bert.bert.embeddings.word_embeddings.weight.dtype == torch.float32


def test_full_model_round_trip_with_adapters_and_heads(tmp_path):
    model = tiny_model("bert")
    model.add_adapter("a", config="seq_bn[reduction_factor=4]")
    model.add_adapter("l", config="lora")
    model.add_classification_head("a", num_labels=3, id2label={0: "x", 1: "y", 2: "z"})
    randomize(model, "a")
    randomize(model, "l")
    model.set_active_adapters(["a", "l"])
    with torch.no_grad():
        expected = model(**tiny_inputs()).logits
    model.save_pretrained(tmp_path)
    loaded = AutoAdapterModel.from_pretrained(tmp_path).eval()
    assert set(loaded.adapters_config) == {"a", "l"} and loaded.get_labels("a") == ["x", "y", "z"]
    loaded.set_active_adapters(["a", "l"])
    with torch.no_grad():
        torch.testing.assert_close(loaded(**tiny_inputs(), head="a").logits, expected)
    # the saved base weights keep their transformers names: plain transformers loads them
    plain, info = BertModel.from_pretrained(tmp_path, output_loading_info=True)
    assert info["missing_keys"] == set() or not info["missing_keys"]


def test_init_plain_model_and_static_head():
    torch.manual_seed(0)
    config = tiny_model("bert").config
    model = BertForSequenceClassification(config).eval()
    name = type(model).__name__
    adapterkit.init(model)
    assert type(model).__name__ == name and isinstance(model, BertForSequenceClassification)
    assert adapterkit.init(model) is model  # idempotent
    with torch.no_grad():
        base = model(**tiny_inputs()).logits
    model.add_adapter("a", config="lora", set_active=True)
    randomize(model, "a")
    model.train_adapter("a")
    assert (
        model.classifier.weight.requires_grad
        and not model.bert.embeddings.word_embeddings.weight.requires_grad
    )
    model.eval()
    with torch.no_grad():
        assert not torch.allclose(model(**tiny_inputs()).logits, base)


def _tiny_opt():
    from transformers import OPTConfig, OPTModel

    torch.manual_seed(0)
    config = OPTConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, ffn_dim=37, vocab_size=99,
        max_position_embeddings=64, word_embed_proj_dim=32, pad_token_id=0,
    )
    return OPTModel(config).eval()


def test_init_unknown_architecture_is_refused():
    model = _tiny_opt()
    cls = type(model)
    with pytest.raises(ValueError, match="not supported"):
        adapterkit.init(model)
    assert type(model) is cls


def test_init_custom_architecture_entry():
    stack = adapterkit.LayerStack(
        layers="decoder.layers",
        attention=adapterkit.SubBlock(
            output="self_attn",
            residual_input="self_attn_layer_norm",
            layer_norm=None,
            adapter_host="attention_adapters",
        ),
        ffn=adapterkit.SubBlock(
            output="fc2", residual_input="final_layer_norm", layer_norm=None, adapter_host="output_adapters"
        ),
        attn_projections={"q": "self_attn.q_proj", "k": "self_attn.k_proj", "v": "self_attn.v_proj"},
        ffn_intermediate="fc1",
        ffn_output="fc2",
    )
    spec = adapterkit.ArchitectureSpec(
        model_type="opt", stacks=(stack,), embeddings="decoder.embed_tokens", decoder_only=True
    )
    model = _tiny_opt()
    adapterkit.init(model, architecture=spec)
    inputs = tiny_inputs()
    with torch.no_grad():
        base = model(**inputs).last_hidden_state
        model.add_adapter("l", config="lora", set_active=True)
        randomize(model, "l")
        assert not torch.allclose(model(**inputs).last_hidden_state, base)


@pytest.mark.parametrize("arch", ["bert", "llama"])
def test_gradient_checkpointing_gives_same_gradients(arch):
    grads = []
    for checkpointing in (False, True):
        model = tiny_model(arch)
        model.add_adapter("a", config="double_seq_bn")
        model.add_adapter("l", config="lora")
        randomize(model, "a")
        model.train_adapter(["a", "l"])
        if checkpointing:
            model.activation_checkpointing_enable()
        model(**tiny_inputs()).last_hidden_state.pow(2).sum().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad})
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], atol=1e-5, rtol=1e-4)
