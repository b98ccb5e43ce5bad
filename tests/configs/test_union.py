"""ConfigUnion, MAMConfig, UniPELTConfig: AdapterHub's validation rules, access, serialisation, hashes."""

from __future__ import annotations

import json

import pytest

from adapterkit.configs import (
    ADAPTER_CONFIG_MAP,
    AdapterConfig,
    ConfigUnion,
    DoubleSeqBnConfig,
    IA3Config,
    LoRAConfig,
    LoReftConfig,
    MAMConfig,
    ParBnConfig,
    PrefixTuningConfig,
    PromptTuningConfig,
    SeqBnConfig,
    UniPELTConfig,
    config_hash,
)

# Hashes computed by AdapterHub adapters==1.3.0 (utils.get_adapter_config_hash of the config object)
ADAPTERHUB_HASHES = [
    (MAMConfig(), "97453c0dbc2dbc97"),
    (UniPELTConfig(), "67ac4937c601ad56"),
    (ConfigUnion(LoRAConfig(), SeqBnConfig()), "dc3d54556ed39dd0"),
    (
        ConfigUnion(
            PrefixTuningConfig(),
            ParBnConfig(reduction_factor=4),
            LoRAConfig(leave_out=[1]),
            LoRAConfig(leave_out=[0], r=4),
        ),
        "d339c669a43f4227",
    ),
    (ConfigUnion(LoReftConfig(), IA3Config()), "b9443808be920f98"),
    (ConfigUnion(PromptTuningConfig(), IA3Config()), "a28f20712b795f29"),
]


@pytest.mark.parametrize(("config", "expected"), ADAPTERHUB_HASHES)
def test_hash_equals_adapterhubs(config, expected):
    assert config_hash(config) == expected


def test_hash_of_saved_dict_equals_adapterhubs():
    assert config_hash(MAMConfig().to_dict()) == "3a07cc7e2d6b7cbd"


@pytest.mark.parametrize(
    "configs",
    [
        (PrefixTuningConfig(), LoRAConfig()),
        (SeqBnConfig(mh_adapter=True, output_adapter=False), SeqBnConfig(mh_adapter=False, output_adapter=True)),
        (LoRAConfig(), LoRAConfig(leave_out=[0])),  # a leave_out defers the decision
        (PrefixTuningConfig(), ParBnConfig(), LoRAConfig(), LoReftConfig()),
    ],
)
def test_valid_unions(configs):
    union = ConfigUnion(*configs)
    assert union.configs == configs
    assert union[0] is configs[0]


@pytest.mark.parametrize(
    ("configs", "error", "match"),
    [
        ((LoRAConfig(), "lora"), TypeError, "not an AdapterConfig"),
        ((LoRAConfig(), MAMConfig()), TypeError, "cannot be part of a config union"),
        ((LoRAConfig(), IA3Config()), ValueError, "same adapter architecture 'lora'"),
        ((PrefixTuningConfig(), PrefixTuningConfig(flat=True)), ValueError, "same adapter architecture"),
        ((SeqBnConfig(), DoubleSeqBnConfig()), ValueError, "differ in both mh_adapter and output_adapter"),
        (  # mh_adapter differs, output_adapter does not
            (SeqBnConfig(mh_adapter=True), SeqBnConfig(mh_adapter=False)),
            ValueError,
            "cannot be combined",
        ),
    ],
)
def test_invalid_unions(configs, error, match):
    with pytest.raises(error, match=match):
        ConfigUnion(*configs)


def test_access_iteration_and_len():
    union = ConfigUnion(PrefixTuningConfig(prefix_length=7), LoRAConfig(r=4))
    assert union["0.prefix_length"] == 7
    assert union["1.r"] == 4
    assert union[1].r == 4
    assert "1.alpha" in list(union)
    assert len(union) == len(union[0]) + len(union[1])
    with pytest.raises(KeyError):
        union["2.r"]


def test_to_dict_load_round_trip_and_json(tmp_path):
    union = UniPELTConfig()
    data = union.to_dict()
    assert data["architecture"] == "union"
    assert [c.get("architecture") for c in data["configs"]] == ["prefix_tuning", None, "lora"]
    assert all(c["use_gating"] for c in data["configs"])
    loaded = AdapterConfig.load(json.loads(json.dumps(data)))
    assert isinstance(loaded, ConfigUnion) and loaded == union
    assert [type(c) for c in loaded.configs] == [PrefixTuningConfig, type(loaded[1]), LoRAConfig]
    path = tmp_path / "adapter_config.json"
    path.write_text(json.dumps({"config": data}))
    assert AdapterConfig.load(str(path)) == union


def test_replace_applies_to_every_part():
    union = MAMConfig().replace(leave_out=[1])
    assert isinstance(union, ConfigUnion)
    assert union[0].leave_out == [1] and union[1].leave_out == [1]
    with pytest.raises(TypeError):
        MAMConfig().replace(r=4)  # PrefixTuningConfig has no r
    union = ConfigUnion(LoRAConfig(leave_out=[0]), SeqBnConfig()).with_leave_out([1])
    assert union[0].leave_out == [0, 1] and union[1].leave_out == [1]


def test_presets_and_aliases():
    mam = MAMConfig()
    assert mam.prefix_tuning == PrefixTuningConfig(bottleneck_size=800) and mam.adapter == ParBnConfig()
    assert ADAPTER_CONFIG_MAP["mam"]() == mam
    uni = ADAPTER_CONFIG_MAP["unipelt"]()
    assert uni == UniPELTConfig()
    assert uni[0].prefix_length == 10 and uni[1].reduction_factor == 16 and (uni[2].r, uni[2].alpha) == (8, 2)
    assert AdapterConfig.load("mam") == mam
    with pytest.raises(TypeError):
        MAMConfig(prefix_tuning=LoRAConfig())


def test_config_strings_with_pipe():
    union = AdapterConfig.load("lora[r=4]|prefix_tuning[prefix_length=10]")
    assert isinstance(union, ConfigUnion)
    assert union[0] == LoRAConfig(r=4) and union[1] == PrefixTuningConfig(prefix_length=10)
    assert AdapterConfig.load(" seq_bn | lora ") == ConfigUnion(SeqBnConfig(), LoRAConfig())
    with pytest.raises(ValueError, match="same adapter architecture"):
        AdapterConfig.load("lora|ia3")
    with pytest.raises(ValueError, match="empty part"):
        AdapterConfig.load("lora|")
    with pytest.raises(ValueError, match="unknown adapter config"):
        AdapterConfig.load("lora|nope")
    with pytest.raises(TypeError):
        AdapterConfig.load("lora|mam")  # a union cannot be part of a union
