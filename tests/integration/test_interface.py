"""Custom models through `ModelInterface` (AdapterHub's plugin interface): conversion to the architecture table,
every method, prefix tuning and Parallel (which AdapterHub's plugin path cannot do), adapter_interface.json and
load_model, several layer stacks, and golden parity with AdapterHub 1.3.0's plugin (make_golden_interface.py).

The model is `custom_transformer.CustomModel`: a transformer no table knows, with an attention that routes through
transformers' AttentionInterface (or, with ``route_attention=False``, does not)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModel, BertModel

import adapterkit
from adapterkit import ModelInterface, Parallel, PromptTuningConfig, load_model, read_interface
from adapterkit.integration.interface import ADAPTERHUB_FIELDS
from custom_transformer import (
    CustomConfig,
    CustomForSequenceClassification,
    CustomModel,
    CustomPreTrainedModel,
    CustomSeq2SeqModel,
)
from tiny import tiny_config, tiny_inputs

GOLDEN = Path(__file__).parent.parent / "fixtures" / "golden" / "interface"
ADAPTER_ATTRIBUTES = ("adapters", "loras", "prefix_tunings", "prompt_tunings", "refts", "invertible_adapters",
                      "shared_parameters")
ALL_METHODS = ["bottleneck", "lora", "prefix_tuning", "prompt_tuning", "reft", "invertible"]


def interface(style: str = "pre", **fields) -> ModelInterface:
    """The interface of `CustomModel` with ``norm_style`` ``style``."""
    pre = style == "pre"
    base = dict(
        adapter_methods=ALL_METHODS,
        model_embeddings="embeddings",
        model_layers="layers",
        layer_self_attn="attn",
        layer_cross_attn=None,
        attn_o_proj="o_proj",
        layer_intermediate_proj="mlp.fc1",
        layer_output_proj="mlp.fc2",
        attn_k_proj="k_proj",
        attn_q_proj="q_proj",
        attn_v_proj="v_proj",
        layer_pre_self_attn="ln_1" if pre else "attn",
        layer_pre_ffn="ln_2" if pre else "mlp",
        layer_ln_1=None if pre else "ln_1",
        layer_ln_2=None if pre else "ln_2",
        attention_interface=True,
    )
    return ModelInterface(**{**base, **fields})


def custom(style: str = "pre", cls=CustomModel, attn: str = "eager", **config):
    torch.manual_seed(0)
    return cls(CustomConfig(norm_style=style, attn_implementation=attn, **config)).eval()


def inputs(batch: int = 3) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(42)
    mask = torch.ones(batch, 9, dtype=torch.long)
    mask[1:, -2:] = 0
    return {"input_ids": torch.randint(3, 99, (batch, 9), generator=g) * mask, "attention_mask": mask}


def randomize(model, name: str, seed: int = 1) -> None:
    """Add ``0.1 * randn`` to adapter ``name``'s parameters, except torch parametrizations' ``original`` tensors
    (noise there collapses LoReFT's rank-1 orthogonal projection to zero)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for per_layer in model.get_adapter(name).values():
            for module in per_layer.values():
                for param_name, p in module.named_parameters():
                    if "parametrizations." not in param_name:
                        p.add_(torch.randn(p.shape, generator=g) * 0.1)


def hidden(model, **kwargs) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs(), **kwargs).last_hidden_state


# ---- the interface itself -------------------------------------------------------------------------
def test_to_dict_has_adapterhubs_fields_and_round_trips():
    plain = interface(attention_interface=False, adapter_methods=["bottleneck", "lora"])
    assert set(plain.to_dict()) == set(ADAPTERHUB_FIELDS), "only AdapterHub's fields: AdapterHub reads the file"
    extended = interface(hidden_size_attr="d_model", name="text")
    assert set(extended.to_dict()) - set(ADAPTERHUB_FIELDS) == {"attention_interface", "hidden_size_attr", "name"}
    for item in (plain, extended):
        assert ModelInterface.from_dict(json.loads(json.dumps(item.to_dict()))) == item
    with pytest.raises(ValueError, match=r"unknown ModelInterface fields \['layer_ln_3'\]"):
        ModelInterface.from_dict({**plain.to_dict(), "layer_ln_3": "x"})


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"attn_k_proj": None}, r"\['attn_q_proj', 'attn_v_proj'\] given without \['attn_k_proj'\]"),
        ({"attn_qkv_proj": "qkv"}, "not both"),
        ({"attn_q_proj": None, "attn_k_proj": None, "attn_v_proj": None}, "give attn_q_proj, attn_k_proj and"),
        ({"adapter_methods": ["bottleneck", "adapters"]}, r"unknown methods \['adapters'\]"),
        ({"attention_interface": False}, "lists 'prefix_tuning'.*attention_interface=True"),
        ({"layer_pre_ffn": None, "layer_ln_2": "ln_2"}, "layer_ln_2='ln_2' .* needs layer_pre_ffn"),
        ({"layer_self_attn": None}, "needs the self-attention"),
    ],
)
def test_interface_refuses_inconsistent_fields(fields, message):
    with pytest.raises(ValueError, match=message):
        interface(**fields)


def test_init_names_every_missing_path_and_leaves_the_model_unchanged():
    model = custom()
    cls = type(model)
    bad = interface(model_embeddings="embed", attn_o_proj="out_proj", layer_ln_2="norm2", layer_pre_ffn="ln_2")
    with pytest.raises(ValueError) as error:
        adapterkit.init(model, interface=bad)
    message = str(error.value)
    for part in ("model_embeddings='embed'", "attn_o_proj='out_proj' (in the self-attention module) of layers [0, 1]",
                 "layer_ln_2='norm2' (in the layer) of layers [0, 1]"):
        assert part in message
    assert type(model) is cls and not hasattr(model, "adapter_interface")


# ---- methods through the interface ---------------------------------------------------------------
METHOD_CONFIGS = {
    "seq_bn": "seq_bn",
    "double_seq_bn": "double_seq_bn",
    "par_bn": "par_bn",
    "adapterplus": adapterkit.AdapterPlusConfig(reduction_factor=4),
    "compacter": adapterkit.CompacterConfig(reduction_factor=4),
    "lora": "lora",
    "ia3": "ia3",
    "prefix_tuning": adapterkit.PrefixTuningConfig(prefix_length=4, bottleneck_size=16),
    "prompt_tuning": PromptTuningConfig(prompt_length=3),
    "loreft": "loreft",
    "seq_bn_inv": "seq_bn_inv",
}


@pytest.mark.parametrize("style", ["pre", "post"])
@pytest.mark.parametrize("method", list(METHOD_CONFIGS))
def test_every_method_adds_runs_trains_and_deletes(style, method):
    model = adapterkit.init(custom(style), interface=interface(style))
    base = hidden(model)
    model.add_adapter("a", METHOD_CONFIGS[method])
    randomize(model, "a")
    model.train_adapter("a")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    out = model(**inputs()).last_hidden_state
    # a fixed random direction: the squared output of a final LayerNorm barely depends on its input
    (out * torch.randn(out.shape[-1], generator=torch.Generator().manual_seed(0))).sum().backward()
    torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1).step()
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    adapter_keys = {k for k in before if any(f"{attr}.a." in k for attr in ADAPTER_ATTRIBUTES)}
    assert changed and changed <= adapter_keys, sorted(changed - adapter_keys)[:3]
    model.eval()
    assert not torch.allclose(hidden(model)[:, -9:], base, atol=1e-4)
    model.delete_adapter("a")
    torch.testing.assert_close(hidden(model), base, atol=0, rtol=0)


def test_bottleneck_and_invertible_keys_are_adapterhubs_plugin_names():
    model = adapterkit.init(custom(), interface=interface())
    model.add_adapter("a", "double_seq_bn_inv")
    keys = {k.split(".a.")[0] for k in model.state_dict() if ".a." in k}
    assert keys == {"layers.0.attention_adapters.adapters", "layers.1.attention_adapters.adapters",
                    "layers.0.output_adapters.adapters", "layers.1.output_adapters.adapters", "invertible_adapters"}


def test_adapter_methods_restrict_what_may_be_added():
    model = adapterkit.init(custom(), interface=interface(adapter_methods=["bottleneck"], attention_interface=False))
    model.add_adapter("ok", "seq_bn")
    with pytest.raises(ValueError, match=r"'l' \(LoRAConfig\) needs the method\(s\) \['lora'\].*\['bottleneck'\]"):
        model.add_adapter("l", "lora")
    with pytest.raises(ValueError, match=r"needs the method\(s\) \['invertible'\]"):
        model.add_adapter("inv", "seq_bn_inv")
    with pytest.raises(ValueError, match=r"needs the method\(s\) \['prefix_tuning'\]"):
        model.add_adapter("mam", "mam")  # a union: every part counts
    assert list(model.adapters_config) == ["ok"]


def test_prefix_tuning_goes_through_the_attention_interface():
    outs = {}
    for attn in ("eager", "sdpa"):
        model = adapterkit.init(custom(attn=attn), interface=interface())
        base = hidden(model)
        model.add_adapter("p", METHOD_CONFIGS["prefix_tuning"], set_active=True)
        randomize(model, "p")
        outs[attn] = hidden(model)
        assert not torch.allclose(outs[attn], base, atol=1e-3)
    torch.testing.assert_close(outs["eager"], outs["sdpa"], atol=1e-5, rtol=0)


def test_prefix_tuning_is_refused_where_attention_is_computed_inline():
    model = custom(route_attention=False)
    no_prefix = [m for m in ALL_METHODS if m != "prefix_tuning"]
    adapterkit.init(model, interface=interface(adapter_methods=no_prefix, attention_interface=False))
    with pytest.raises(ValueError, match=r"needs the method\(s\) \['prefix_tuning'\]"):
        model.add_adapter("p", "prefix_tuning")
    model.add_adapter("l", "lora", set_active=True)  # the rest works


@pytest.mark.parametrize("configs", [("seq_bn", "seq_bn"), ("lora", "prefix_tuning"), ("prefix_tuning", "par_bn")])
def test_parallel_equals_each_adapter_alone(configs):
    model = adapterkit.init(custom("post"), interface=interface("post"))
    for i, (name, config) in enumerate(zip("ab", configs, strict=True)):
        model.add_adapter(name, METHOD_CONFIGS[config])
        randomize(model, name, seed=i + 1)
    alone = []
    for name in "ab":
        model.set_active_adapters(name)
        alone.append(hidden(model))
    model.set_active_adapters(Parallel("a", "b"))
    both = hidden(model)
    torch.testing.assert_close(both, torch.cat(alone), atol=1e-5, rtol=0)


# ---- persistence ---------------------------------------------------------------------------------
def test_save_adapter_writes_the_interface_and_a_fresh_model_loads_it(tmp_path):
    model = adapterkit.init(custom("post"), interface=interface("post"))
    model.add_adapter("a", "double_seq_bn", set_active=True)
    randomize(model, "a")
    expected = hidden(model)
    model.save_adapter(tmp_path, "a")
    saved = json.loads((tmp_path / "adapter_interface.json").read_text())
    assert set(saved) == {"model_type", "interface", "version"}
    assert saved["model_type"] == "custom_transformer" and saved["interface"] == interface("post").to_dict()

    fresh = adapterkit.init(custom("post"), interface=read_interface(tmp_path))
    fresh.load_adapter(tmp_path, set_active=True)
    torch.testing.assert_close(hidden(fresh), expected, atol=0, rtol=0)


def test_load_adapter_refuses_an_interface_that_places_adapters_elsewhere(tmp_path):
    model = adapterkit.init(custom(), interface=interface())
    model.add_adapter("a", "seq_bn")
    model.save_adapter(tmp_path, "a")
    other = adapterkit.init(custom(), interface=interface(layer_pre_ffn="mlp"))
    with pytest.raises(ValueError, match="layer_pre_ffn: saved 'ln_2', this model 'mlp'"):
        other.load_adapter(tmp_path)
    assert "a" not in other.adapters_config
    # adapter_methods decide what may be added, not where: a narrower list still loads the bottleneck
    narrower = adapterkit.init(custom(), interface=interface(adapter_methods=["bottleneck"], attention_interface=False))
    narrower.load_adapter(tmp_path)


def test_save_pretrained_and_load_model_restore_model_interface_and_adapters(tmp_path):
    model = adapterkit.init(custom(cls=CustomForSequenceClassification), interface=interface())
    model.add_adapter("a", "seq_bn")
    model.add_adapter("l", "lora")
    for i, name in enumerate(("a", "l")):
        randomize(model, name, seed=i)
    model.set_active_adapters(adapterkit.Stack("a", "l"))
    with torch.no_grad():
        expected = model(**inputs()).logits
    model.save_pretrained(tmp_path)
    assert (tmp_path / "adapter_interface.json").is_file()

    loaded = load_model(tmp_path, CustomForSequenceClassification, attn_implementation="eager")
    assert loaded.adapter_interface == interface()
    assert type(loaded).__name__ == "CustomForSequenceClassification"
    loaded.eval().set_active_adapters(adapterkit.Stack("a", "l"))
    with torch.no_grad():
        torch.testing.assert_close(loaded(**inputs()).logits, expected, atol=0, rtol=0)


def test_table_models_ignore_a_saved_interface(tmp_path):
    """AdapterHub writes adapter_interface.json for its built-in interfaces too (Qwen2, ...): where the table has
    an entry, load_model and load_adapter use the table."""
    torch.manual_seed(0)
    model = adapterkit.init(BertModel(tiny_config("bert")).eval())
    model.add_adapter("a", "seq_bn", set_active=True)
    randomize(model, "a")
    expected = model(**tiny_inputs()).last_hidden_state
    model.save_pretrained(tmp_path / "model")
    model.save_adapter(tmp_path / "adapter", "a")
    for folder in ("model", "adapter"):
        (tmp_path / folder / "adapter_interface.json").write_text(
            json.dumps({"model_type": "bert", "interface": interface().to_dict(), "version": "adapters.1.3.0"})
        )
    loaded = load_model(tmp_path / "model", AutoModel, attn_implementation="eager").eval()  # an Auto class too
    assert type(loaded).__name__ == "BertModel" and not hasattr(loaded, "adapter_interface")
    loaded.set_active_adapters("a")
    torch.testing.assert_close(loaded(**tiny_inputs()).last_hidden_state, expected, atol=0, rtol=0)
    loaded.load_adapter(tmp_path / "adapter", load_as="b", set_active=True)
    torch.testing.assert_close(loaded(**tiny_inputs()).last_hidden_state, expected, atol=0, rtol=0)


class CustomWrapped(CustomPreTrainedModel):
    """A `CustomModel` under ``encoder`` while the class's ``base_model_prefix`` says ``transformer``."""

    def __init__(self, config):
        super().__init__(config)
        self.encoder = CustomModel(config)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, **kwargs):
        return self.encoder(input_ids, attention_mask=attention_mask)


def test_base_model_field_points_the_model_at_its_base_model(tmp_path):
    model = adapterkit.init(custom(cls=CustomWrapped), interface=interface(base_model="encoder"))
    assert model.base_model is model.encoder
    model.add_adapter("a", "seq_bn", set_active=True)
    assert "encoder.layers.0.output_adapters.adapters.a.adapter_up.weight" in model.state_dict()
    model.save_pretrained(tmp_path)
    loaded = load_model(tmp_path, CustomWrapped, attn_implementation="eager").eval()
    loaded.set_active_adapters("a")
    torch.testing.assert_close(hidden(loaded), hidden(model), atol=0, rtol=0)
    with pytest.raises(ValueError, match="base_model='decoder' must name a module attribute"):
        adapterkit.init(custom(cls=CustomWrapped), interface=interface(base_model="decoder"))


# ---- several layer stacks (AdapterHub issue #801) ----------------------------------------------------
def seq2seq_interfaces() -> list[ModelInterface]:
    shared = dict(model_embeddings="encoder.embeddings", layer_pre_self_attn="ln_1", layer_pre_ffn="ln_2")
    encoder = interface(model_layers="encoder.layers", name="encoder", **shared)
    decoder = interface(
        model_layers="decoder.layers", layer_cross_attn="cross_attn", layer_pre_cross_attn="ln_cross",
        hidden_size_attr="decoder_hidden_size", name="decoder", **shared,
    )
    return [encoder, decoder]


def seq2seq_hidden(model) -> torch.Tensor:
    x = inputs()
    with torch.no_grad():
        return model(**x, decoder_input_ids=x["input_ids"][:, :5]).last_hidden_state


def test_several_layer_stacks_number_layers_across_stacks_and_save(tmp_path):
    model = adapterkit.init(custom(cls=CustomSeq2SeqModel), interface=seq2seq_interfaces())
    base = seq2seq_hidden(model)
    model.add_adapter("a", adapterkit.SeqBnConfig(mh_adapter=True, cross_adapter=True, leave_out=[0]))
    located = {
        (i, loc): m.adapter_up.out_features for i, per in model.get_adapter("a").items() for loc, m in per.items()
    }
    assert located == {
        (1, "mh_adapter"): 32, (1, "output_adapter"): 32,  # encoder layer 1
        (2, "mh_adapter"): 24, (2, "cross_adapter"): 24, (2, "output_adapter"): 24,  # decoder layers: width 24
        (3, "mh_adapter"): 24, (3, "cross_adapter"): 24, (3, "output_adapter"): 24,
    }
    assert "decoder.layers.0.cross_attention_adapters.adapters.a.adapter_up.weight" in model.state_dict()
    model.add_adapter("p", adapterkit.PrefixTuningConfig(prefix_length=3, bottleneck_size=8, cross_prefix=True))
    model.add_adapter("l", "lora")
    for i, name in enumerate("apl"):
        randomize(model, name, seed=i)
    alone = {}
    for name in "apl":
        model.set_active_adapters(name)
        alone[name] = seq2seq_hidden(model)
        assert not torch.allclose(alone[name], base, atol=1e-4), name
    model.set_active_adapters(Parallel("a", "p", "l"))
    torch.testing.assert_close(seq2seq_hidden(model), torch.cat(list(alone.values())), atol=1e-5, rtol=0)

    model.save_adapter(tmp_path / "p", "p")
    saved = read_interface(tmp_path / "p")
    assert saved == tuple(seq2seq_interfaces())
    fresh = adapterkit.init(custom(cls=CustomSeq2SeqModel), interface=saved)
    fresh.load_adapter(tmp_path / "p", set_active=True)
    torch.testing.assert_close(seq2seq_hidden(fresh), alone["p"], atol=0, rtol=0)


def test_interfaces_of_one_model_must_agree_on_model_fields():
    encoder, decoder = seq2seq_interfaces()
    decoder = ModelInterface.from_dict({**decoder.to_dict(), "adapter_methods": ["lora"]})
    with pytest.raises(ValueError, match="must agree on adapter_methods"):
        adapterkit.init(custom(cls=CustomSeq2SeqModel), interface=[encoder, decoder])


# ---- AdapterHub parity -----------------------------------------------------------------------------
GOLDEN_CASES = [
    (variant, case.name)
    for variant in ("pre_ln", "post_ln", "no_residual")
    for case in sorted((GOLDEN / variant).iterdir())
    if case.name != "base"
]


@pytest.mark.parametrize(("variant", "case"), GOLDEN_CASES)
def test_adapterhub_plugin_adapters_load_unchanged_and_match(variant, case):
    base_dir, case_dir = GOLDEN / variant / "base", GOLDEN / variant / case
    model = CustomModel(CustomConfig(**json.loads((base_dir / "config.json").read_text()))).eval()
    model.load_state_dict(load_file(base_dir / "model.safetensors"))
    expected = load_file(case_dir / "expected.safetensors")
    adapterkit.init(model, interface=read_interface(case_dir))  # AdapterHub's adapter_interface.json
    info: dict = {}
    model.load_adapter(case_dir, set_active=True, loading_info=info)
    assert info["unexpected_keys"] == []
    with torch.no_grad():
        out = model(input_ids=expected["input_ids"], attention_mask=expected["attention_mask"]).last_hidden_state
    torch.testing.assert_close(out, expected["last_hidden_state"], atol=1e-5, rtol=0)


def test_adapterhub_plugin_no_residual_adapters_refuse_what_needs_the_residual():
    model = adapterkit.init(custom(), interface=interface(layer_pre_self_attn=None, layer_pre_ffn=None))
    with pytest.raises(ValueError, match=r"ParBnConfig at output_adapter needs the sub-block's residual stream"):
        model.add_adapter("p", "par_bn")
