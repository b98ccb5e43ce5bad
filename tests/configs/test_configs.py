"""AdapterConfig family: loading from every form, immutability, validation, hashing."""

from __future__ import annotations

import dataclasses
import json

import pytest

from adapterkit.configs import (
    ADAPTER_CONFIG_MAP,
    AdapterConfig,
    BnConfig,
    DoubleSeqBnConfig,
    IA3Config,
    LoRAConfig,
    ParBnConfig,
    SeqBnConfig,
    config_hash,
)

# Hashes computed by AdapterHub adapters==1.3.0 (utils.get_adapter_config_hash) for every alias of its
# ADAPTER_CONFIG_MAP, except the ReFT presets: AdapterHub never saves `subtract_projection`, so its NoReFT
# and DiReFT hash alike; here it is a saved field and the hashes differ (distinct config.json entries).
ADAPTERHUB_HASHES = {
    "pfeiffer": "9076f36a74755ac4",
    "houlsby": "b1017368d7a97b11",
    "parallel": "211b85d66ae909db",
    "scaled_parallel": "4197b24ec21c92f8",
    "pfeiffer+inv": "9ed5b5a29de19b71",
    "houlsby+inv": "bcdbfdc759d7abf1",
    "seq_bn": "9076f36a74755ac4",
    "double_seq_bn": "b1017368d7a97b11",
    "par_bn": "211b85d66ae909db",
    "scaled_par_bn": "4197b24ec21c92f8",
    "seq_bn_inv": "9ed5b5a29de19b71",
    "double_seq_bn_inv": "bcdbfdc759d7abf1",
    "compacter++": "cfa13994accfb5f4",
    "compacter": "934efc0c1022a56f",
    "prefix_tuning": "648bf22f5afeaaa6",
    "prefix_tuning_flat": "d61d9a6e9c3974ea",
    "prompt_tuning": "8e35d5049bb12364",
    "mtl_lora": "b37172df6259ff89",
    "lora": "625403edad0bf919",
    "ia3": "1ebb5af107e576c0",
    "vera": "2be4e8738bf1b672",
    "dora": "045575c920686296",
    "dvora": "54bac59257d09af0",
    "mam": "97453c0dbc2dbc97",
    "unipelt": "67ac4937c601ad56",
}


@pytest.mark.parametrize("alias", sorted(ADAPTERHUB_HASHES))
def test_hash_matches_adapterhub(alias):
    assert config_hash(AdapterConfig.load(alias)) == ADAPTERHUB_HASHES[alias]


@pytest.mark.parametrize(
    "alias, cls",
    [
        ("seq_bn", SeqBnConfig),
        ("pfeiffer", SeqBnConfig),
        ("double_seq_bn", DoubleSeqBnConfig),
        ("houlsby", DoubleSeqBnConfig),
        ("par_bn", ParBnConfig),
        ("lora", LoRAConfig),
        ("ia3", IA3Config),
    ],
)
def test_alias_resolves_to_class(alias, cls):
    assert type(AdapterConfig.load(alias)) is cls


def test_scaled_par_bn_is_learned_scaling():
    assert AdapterConfig.load("scaled_par_bn").scaling == "learned"


def test_load_from_dict_object_and_json_file(tmp_path):
    config = LoRAConfig(r=4, alpha=16)
    assert AdapterConfig.load(config) is config
    assert AdapterConfig.load(config.to_dict()) == config
    path = tmp_path / "adapter_config.json"
    path.write_text(json.dumps({"config": config.to_dict(), "name": "x"}))
    assert AdapterConfig.load(str(path)) == config


def test_dict_without_architecture_is_bottleneck():
    loaded = AdapterConfig.load(SeqBnConfig(reduction_factor=8).to_dict())
    assert isinstance(loaded, BnConfig) and loaded.reduction_factor == 8


def test_config_string_with_values():
    config = AdapterConfig.load("lora[r=16, alpha=32, attn_matrices=['q','k','v']]")
    assert (config.r, config.alpha, config.attn_matrices) == (16, 32, ["q", "k", "v"])


@pytest.mark.parametrize(
    "spec, error",
    [
        ("nope", ValueError),
        ("seq_bn[reduction_factor=8", ValueError),
        ("seq_bn[bogus=1]", TypeError),
        ("seq_bn[reduction_factor=x]", ValueError),
    ],
)
def test_bad_config_strings(spec, error):
    with pytest.raises(error):
        AdapterConfig.load(spec)


def test_overrides_ignore_none():
    assert AdapterConfig.load("seq_bn", reduction_factor=4, non_linearity=None).reduction_factor == 4


def test_immutable_but_allows_new_attributes():
    config = SeqBnConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.reduction_factor = 2
    with pytest.raises(dataclasses.FrozenInstanceError):
        del config.reduction_factor
    config.custom = 1
    assert config.custom == 1


def test_replace_and_unknown_key():
    assert SeqBnConfig().replace(reduction_factor=2).reduction_factor == 2
    with pytest.raises(TypeError, match="bogus"):
        SeqBnConfig().replace(bogus=1)


def test_base_class_is_abstract():
    with pytest.raises(TypeError):
        AdapterConfig()


def test_to_dict_layout_matches_adapterhub():
    assert "architecture" not in SeqBnConfig().to_dict()
    assert list(LoRAConfig().to_dict())[0] == "architecture"
    assert LoRAConfig().to_dict()["architecture"] == "lora"


@pytest.mark.parametrize(
    "factory, key",
    [
        (lambda: SeqBnConfig(reduction_factor=0), "reduction_factor"),
        (lambda: SeqBnConfig(non_linearity=3), "non_linearity"),
        (lambda: SeqBnConfig(init_weights="xavier"), "init_weights"),
        (lambda: SeqBnConfig(scaling="huge"), "scaling"),
        (lambda: SeqBnConfig(residual_before_ln="yes"), "residual_before_ln"),
        (lambda: LoRAConfig(r=0), "r"),
        (lambda: LoRAConfig(attn_matrices=["q", "o"]), "attn_matrices"),
        (lambda: LoRAConfig(composition_mode="mul"), "composition_mode"),
        (lambda: IA3Config(r=2), "r"),
        (lambda: IA3Config(dropout=0.1), "dropout"),
    ],
)
def test_invalid_values_name_the_key(factory, key):
    with pytest.raises(ValueError, match=key):
        factory()


def test_reduction_factor_mapping():
    config = SeqBnConfig(reduction_factor={"1": 4, "default": 16})
    assert (config.reduction_factor_for(1), config.reduction_factor_for(0)) == (4, 16)
    with pytest.raises(KeyError, match="default"):
        SeqBnConfig(reduction_factor={"1": 4}).reduction_factor_for(0)


def test_every_alias_loads():
    for alias in ADAPTER_CONFIG_MAP:
        assert isinstance(AdapterConfig.load(alias), AdapterConfig)
