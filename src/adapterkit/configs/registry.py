"""Config aliases, the dict-to-class rule, config strings, and the AdapterHub config hash."""

from __future__ import annotations

import ast
import hashlib
import json
import re
from collections.abc import Callable, Mapping
from typing import Any

from .base import AdapterConfig
from .bottleneck import (
    BnConfig,
    CompacterConfig,
    CompacterPlusPlusConfig,
    DoubleSeqBnConfig,
    ParBnConfig,
    SeqBnConfig,
)
from .invertible import DoubleSeqBnInvConfig, SeqBnInvConfig
from .lora import DoRAConfig, DvoRAConfig, IA3Config, LoRAConfig, MTLLoRAConfig, VeraConfig
from .prefix_tuning import PrefixTuningConfig
from .prompt_tuning import PromptTuningConfig
from .reft import DiReftConfig, LoReftConfig, NoReftConfig, ReftConfig
from .union import ConfigUnion, MAMConfig, UniPELTConfig

ADAPTER_CONFIG_MAP: dict[str, Callable[[], AdapterConfig]] = {
    "seq_bn": SeqBnConfig,
    "pfeiffer": SeqBnConfig,
    "double_seq_bn": DoubleSeqBnConfig,
    "houlsby": DoubleSeqBnConfig,
    "par_bn": ParBnConfig,
    "parallel": ParBnConfig,
    "scaled_par_bn": lambda: ParBnConfig(scaling="learned"),
    "scaled_parallel": lambda: ParBnConfig(scaling="learned"),
    "compacter": CompacterConfig,
    "compacter++": CompacterPlusPlusConfig,
    "lora": LoRAConfig,
    "ia3": IA3Config,
    "vera": VeraConfig,
    "dora": DoRAConfig,
    "dvora": DvoRAConfig,
    "mtl_lora": MTLLoRAConfig,
    "prefix_tuning": PrefixTuningConfig,
    "prefix_tuning_flat": lambda: PrefixTuningConfig(flat=True),
    "seq_bn_inv": SeqBnInvConfig,
    "pfeiffer+inv": SeqBnInvConfig,
    "double_seq_bn_inv": DoubleSeqBnInvConfig,
    "houlsby+inv": DoubleSeqBnInvConfig,
    "prompt_tuning": PromptTuningConfig,
    "loreft": LoReftConfig,
    "noreft": NoReftConfig,
    "direft": DiReftConfig,
    "mam": MAMConfig,
    "unipelt": UniPELTConfig,
}
"""Alias -> factory of the config it names (AdapterHub's names; deprecated ones kept for loading)."""

DEFAULT_ADAPTER_CONFIG = "seq_bn"

DEPRECATED_ALIASES = frozenset({"pfeiffer", "houlsby", "parallel", "scaled_parallel", "pfeiffer+inv", "houlsby+inv"})
"""Old names still accepted when loading; never written."""

# "architecture" value in a saved dict -> config class
_ARCHITECTURE_CLASSES: dict[str | None, type[AdapterConfig]] = {
    None: BnConfig,
    "lora": LoRAConfig,
    "mtl_lora": MTLLoRAConfig,
    "prefix_tuning": PrefixTuningConfig,
    "prompt_tuning": PromptTuningConfig,
    "reft": ReftConfig,
    "union": ConfigUnion,
}

_CONFIG_STRING = re.compile(r"^(?P<name>[^\[\]|\n]+)(?:\[(?P<kvs>.*)\])?$")

# Keys dropped from the hash when they hold these values, so hashes match AdapterHub's (and its v2 era).
_HASH_IGNORE_DEFAULTS: dict[str, Any] = {
    "phm_layer": True,
    "phm_dim": 4,
    "factorized_phm_W": True,
    "shared_W_phm": False,
    "shared_phm_rule": True,
    "factorized_phm_rule": False,
    "phm_c_init": "normal",
    "phm_init_range": 0.0001,
    "learn_phm": True,
    "hypercomplex_nonlinearity": "glorot-uniform",
    "phm_rank": 1,
    "phm_bias": True,
    "init_weights": "bert",
    "scaling": 1.0,
    # saved by adapterkit, a class attribute in AdapterHub: equal hashes for equal prompt configs
    "random_uniform_scale": 0.5,
}


_MISSING = object()
# keys adapterkit saves that AdapterHub has as class attributes (not in its union's "i.key" view), with its values
_UNION_PART_UNSAVED_BY_ADAPTERHUB: dict[str, Any] = {"random_uniform_scale": 0.5, "subtract_projection": True}


def register_config_architecture(architecture: str, config_cls: type[AdapterConfig]) -> None:
    """Map the ``"architecture"`` value of saved dicts to ``config_cls`` (used by new methods)."""
    _ARCHITECTURE_CLASSES[architecture] = config_cls


def config_class_for(config: Mapping[str, Any]) -> type[AdapterConfig]:
    """The config class a saved dict belongs to, chosen by its ``"architecture"`` key.

    Raises:
        ValueError: if the architecture is not known to this version.
    """
    architecture = config.get("architecture")
    try:
        return _ARCHITECTURE_CLASSES[architecture]
    except KeyError:
        known = sorted(str(a) for a in _ARCHITECTURE_CLASSES)
        raise ValueError(
            f"adapter config architecture {architecture!r} is not supported by this version; known: {known}"
        ) from None


def parse_config_string(spec: str) -> AdapterConfig:
    """Parse ``"name"`` or ``"name[key=value, ...]"`` into a config; ``"a|b[...]"`` gives a `ConfigUnion`.

    Values are Python literals (``"lora[r=16, attn_matrices=['q','k','v']]"``).

    Raises:
        ValueError: for an unknown alias, unbalanced brackets, a value that is not a literal, or parts that
            cannot form a union.
        TypeError: for a key the config does not have, or a union alias (``mam``) inside a ``|`` string.
    """
    spec = spec.strip()
    if "|" in spec and spec.count("[") == spec.count("]"):
        chunks = _split_union(spec)
        if len(chunks) > 1:
            return ConfigUnion(*(parse_config_string(chunk) for chunk in chunks))
    match = _CONFIG_STRING.match(spec)
    if not match or spec.count("[") != spec.count("]"):
        raise ValueError(f"config string {spec!r} is malformed; expected 'name' or 'name[key=value, ...]'")
    name = match.group("name").strip()
    if name not in ADAPTER_CONFIG_MAP:
        raise ValueError(f"unknown adapter config {name!r}; known aliases: {sorted(ADAPTER_CONFIG_MAP)}")
    config = ADAPTER_CONFIG_MAP[name]()
    kvs = match.group("kvs")
    if kvs and kvs.strip():
        try:
            call = ast.parse(f"f({kvs})", mode="eval").body
            assert isinstance(call, ast.Call) and not call.args
            changes = {kw.arg: ast.literal_eval(kw.value) for kw in call.keywords}
        except (SyntaxError, ValueError, AssertionError):
            raise ValueError(
                f"config string {spec!r}: the part in brackets must be key=value pairs with literal values"
            ) from None
        config = config.replace(**changes)
    return config


def _split_union(spec: str) -> list[str]:
    """Split a config string at the ``|`` outside brackets (a literal value may contain ``|``)."""
    chunks, depth, start = [], 0, 0
    for i, char in enumerate(spec):
        depth += (char == "[") - (char == "]")
        if char == "|" and depth == 0:
            chunks.append(spec[start:i])
            start = i + 1
    chunks.append(spec[start:])
    for chunk in chunks:
        if not chunk.strip():
            raise ValueError(f"config string {spec!r} has an empty part between '|'")
    return chunks


def _minimize(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _minimize(v) for k, v in value.items() if v}
    return value


def config_hash(
    config: AdapterConfig | Mapping[str, Any], length: int = 16, ignore_params: tuple[str, ...] = ()
) -> str:
    """AdapterHub's config hash: sha1 of the sorted JSON of the non-empty, non-default keys.

    Args:
        config: a config or its dict.
        length: number of hex characters kept.
        ignore_params: keys left out of the hash.
    """
    data = config.to_dict() if isinstance(config, AdapterConfig) else dict(config)
    if isinstance(config, ConfigUnion):  # AdapterHub hashes a union object through its "i.key" mapping view
        data = {
            f"{i}.{key}": value
            for i, part in enumerate(config.configs)
            for key, value in {"architecture": part.architecture, **part.to_dict()}.items()
            if _UNION_PART_UNSAVED_BY_ADAPTERHUB.get(key, _MISSING) != value
        }
    minimized = _minimize({k: v for k, v in data.items() if k not in ignore_params})
    for key, default in _HASH_IGNORE_DEFAULTS.items():
        if key in minimized and minimized[key] == default:
            del minimized[key]
    digest = hashlib.sha1(json.dumps(minimized, sort_keys=True).encode("utf-8")).hexdigest()
    return digest[:length]
