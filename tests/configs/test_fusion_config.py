"""AdapterFusion configs: presets, loading from every form, validation, AdapterHub's keys and hashes."""

from __future__ import annotations

import dataclasses
import json

import pytest

import adapterkit
from adapterkit.configs import (
    ADAPTERFUSION_CONFIG_MAP,
    DEFAULT_ADAPTERFUSION_CONFIG,
    AdapterFusionConfig,
    DynamicAdapterFusionConfig,
    StaticAdapterFusionConfig,
    config_hash,
)

# AdapterHub adapters==1.3.0: ADAPTERFUSION_CONFIG_MAP[alias].to_dict() and get_adapter_config_hash(...)
ADAPTERHUB = {
    "static": (
        {"key": True, "query": True, "value": False, "query_before_ln": False, "regularization": False,
         "residual_before": False, "temperature": False, "value_before_softmax": True, "value_initialized": False,
         "dropout_prob": None},
        "368b8b00d16e5e95",
    ),
    "dynamic": (
        {"key": True, "query": True, "value": True, "query_before_ln": False, "regularization": True,
         "residual_before": False, "temperature": False, "value_before_softmax": True, "value_initialized": True,
         "dropout_prob": None},
        "39f0b9fc022449eb",
    ),
}


@pytest.mark.parametrize("alias", sorted(ADAPTERHUB))
def test_presets_match_adapterhub(alias):
    config = AdapterFusionConfig.load(alias)
    assert config.to_dict() == ADAPTERHUB[alias][0]
    assert config_hash(config) == ADAPTERHUB[alias][1]


def test_aliases_classes_and_default():
    assert set(ADAPTERFUSION_CONFIG_MAP) == {"static", "dynamic"}
    assert DEFAULT_ADAPTERFUSION_CONFIG == "dynamic"
    assert isinstance(AdapterFusionConfig.load("static"), StaticAdapterFusionConfig)
    assert isinstance(AdapterFusionConfig.load(None), DynamicAdapterFusionConfig)
    assert adapterkit.AdapterFusionConfig is AdapterFusionConfig
    assert adapterkit.ADAPTERFUSION_CONFIG_MAP is ADAPTERFUSION_CONFIG_MAP


def test_load_from_dict_object_and_overrides():
    full = ADAPTERHUB["static"][0]
    from_dict = AdapterFusionConfig.load(full)
    assert type(from_dict) is AdapterFusionConfig and from_dict == StaticAdapterFusionConfig()
    obj = DynamicAdapterFusionConfig(temperature=True)
    assert AdapterFusionConfig.load(obj) is obj
    assert AdapterFusionConfig.load("dynamic", temperature=True, dropout_prob=None) == obj
    assert AdapterFusionConfig.load("static", dropout_prob=0.2).dropout_prob == 0.2


def test_load_from_json_paths(tmp_path):
    plain = tmp_path / "fusion.json"
    plain.write_text(json.dumps(ADAPTERHUB["dynamic"][0]))
    assert AdapterFusionConfig.load(plain) == DynamicAdapterFusionConfig()
    saved = tmp_path / "adapter_fusion_config.json"  # AdapterHub's saved file: the config is nested
    saved.write_text(json.dumps({"config": ADAPTERHUB["static"][0], "name": "a,b", "adapter_names": ["a", "b"]}))
    assert AdapterFusionConfig.load(str(saved)) == StaticAdapterFusionConfig()
    bad = tmp_path / "bad.json"
    bad.write_text("{nope")
    with pytest.raises(ValueError, match="not valid JSON"):
        AdapterFusionConfig.load(bad)


def test_errors_name_key_value_and_allowed():
    with pytest.raises(ValueError, match=r"unknown AdapterFusion config 'dynamik'.*'dynamic', 'static'"):
        AdapterFusionConfig.load("dynamik")
    partial = dict(ADAPTERHUB["dynamic"][0])
    del partial["temperature"]
    with pytest.raises(ValueError, match=r"lacks key\(s\) \['temperature'\]"):
        AdapterFusionConfig.load(partial)
    with pytest.raises(ValueError, match=r"value='yes' is not allowed; expected True or False"):
        DynamicAdapterFusionConfig(value="yes")
    with pytest.raises(ValueError, match=r"dropout_prob=1.5 is not allowed; expected None or a number in \[0, 1\)"):
        StaticAdapterFusionConfig(dropout_prob=1.5)
    with pytest.raises(TypeError, match="has no key"):
        AdapterFusionConfig.load("static", heads=4)
    with pytest.raises(TypeError, match="cannot load an AdapterFusion config from int"):
        AdapterFusionConfig.load(3)


def test_immutable_and_extra_keys_kept():
    config = DynamicAdapterFusionConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.value = False
    loaded = AdapterFusionConfig.load({**ADAPTERHUB["dynamic"][0], "note": "x"})
    assert loaded.note == "x" and loaded == {**ADAPTERHUB["dynamic"][0]}
