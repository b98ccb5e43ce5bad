"""`ModelAdaptersConfig`: the per-model registry of adapters, their configs and the active setup."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from ..composition import AdapterCompositionBlock, Fuse
from ..configs import ADAPTER_CONFIG_MAP, ADAPTERFUSION_CONFIG_MAP, AdapterConfig, AdapterFusionConfig, config_hash
from ..configs.fusion import fusion_alias_of
from ..configs.registry import DEPRECATED_ALIASES

logger = logging.getLogger(__name__)


class ModelAdaptersConfig:
    """Which adapters and AdapterFusions a model has, with what config, and which are active.

    Serialises to AdapterHub's ``config.json["adapters"]`` schema: adapter name -> config alias (when
    the config equals an alias's) or 16-hex config hash, plus ``config_map`` from hash to config dict;
    the same for fusions (``fusions``, ``fusion_config_map``), plus ``fusion_name_map`` from a custom
    fusion name to its adapters.
    """

    def __init__(self) -> None:
        self.adapters: dict[str, AdapterConfig] = {}
        self.fusions: dict[str, AdapterFusionConfig] = {}
        self.fusion_adapters: dict[str, tuple[str, ...]] = {}
        self.active_setup: AdapterCompositionBlock | None = None
        self.skip_layers: frozenset[int] = frozenset()

    def __contains__(self, name: object) -> bool:
        return name in self.adapters

    def __iter__(self) -> Iterator[str]:
        return iter(self.adapters)

    def __len__(self) -> int:
        return len(self.adapters)

    def get(self, name: str) -> AdapterConfig | None:
        """The config of adapter ``name``, or None."""
        return self.adapters.get(name)

    def add(self, name: str, config: AdapterConfig) -> None:
        """Register ``name`` with ``config`` (replacing an existing entry)."""
        self.adapters[name] = config

    def remove(self, name: str) -> None:
        """Forget ``name`` and the fusions that fuse it; it also leaves the active setup."""
        self.adapters.pop(name, None)
        for fusion in [f for f, names in self.fusion_adapters.items() if name in names]:
            logger.info("deleting AdapterFusion %r with adapter %r, which it fuses", fusion, name)
            self.remove_fusion(fusion)
        if self.active_setup is not None and name in self.active_setup.flatten():
            self.active_setup = None

    # ---- fusions -------------------------------------------------------------------------------
    def add_fusion(self, name: str, adapter_names: list[str] | tuple[str, ...], config: AdapterFusionConfig) -> None:
        """Register fusion ``name`` of ``adapter_names`` with ``config`` (replacing an existing entry)."""
        self.fusions[name] = config
        self.fusion_adapters[name] = tuple(adapter_names)

    def get_fusion(self, name: str) -> tuple[AdapterFusionConfig | None, list[str] | None]:
        """(config, fused adapter names) of fusion ``name``, or (None, None) (AdapterHub's ``get_fusion``)."""
        if name not in self.fusions:
            return None, None
        return self.fusions[name], list(self.fusion_adapters[name])

    def remove_fusion(self, name: str) -> None:
        """Forget fusion ``name``; a setup using it is deactivated."""
        self.fusions.pop(name, None)
        self.fusion_adapters.pop(name, None)
        if self.active_setup is not None and name in _fusion_names(self.active_setup):
            self.active_setup = None

    def to_dict(self) -> dict[str, Any]:
        """AdapterHub's ``config.json["adapters"]`` form."""
        refs: dict[str, str] = {}
        config_map: dict[str, dict[str, Any]] = {}
        for name, config in self.adapters.items():
            alias = _alias_of(config)
            if alias is not None:
                refs[name] = alias
            else:
                key = config_hash(config)
                refs[name] = key
                config_map[key] = config.to_dict()
        fusion_refs: dict[str, str] = {}
        fusion_config_map: dict[str, dict[str, Any]] = {}
        fusion_name_map: dict[str, list[str]] = {}
        for name, config in self.fusions.items():
            alias = fusion_alias_of(config)
            if alias is not None:
                fusion_refs[name] = alias
            else:
                key = config_hash(config)
                fusion_refs[name] = key
                fusion_config_map[key] = config.to_dict()
            adapters = list(self.fusion_adapters[name])
            if name != ",".join(adapters):
                fusion_name_map[name] = adapters
        return {
            "adapters": refs,
            "config_map": config_map,
            "fusions": fusion_refs,
            "fusion_config_map": fusion_config_map,
            "fusion_name_map": fusion_name_map,
        }

    @staticmethod
    def configs_from_dict(data: dict[str, Any]) -> dict[str, AdapterConfig]:
        """Adapter name -> config from a ``config.json["adapters"]`` dict (v1 tuple values accepted).

        Raises:
            ValueError: if an adapter refers to a config that is neither an alias nor in ``config_map``.
        """
        config_map = data.get("config_map", {})
        result: dict[str, AdapterConfig] = {}
        for name, ref in data.get("adapters", {}).items():
            if isinstance(ref, (list, tuple)):  # v1: (adapter type, config ref)
                ref = ref[1]
            if isinstance(ref, dict):
                result[name] = AdapterConfig.load(ref)
            elif ref in config_map:
                result[name] = AdapterConfig.load(config_map[ref])
            elif ref in ADAPTER_CONFIG_MAP:
                result[name] = AdapterConfig.load(ref)
            else:
                raise ValueError(
                    f"adapter {name!r} refers to config {ref!r}, which is neither an alias nor in config_map"
                )
        return result


    @staticmethod
    def fusions_from_dict(data: dict[str, Any]) -> dict[str, tuple[AdapterFusionConfig, list[str]]]:
        """Fusion name -> (config, fused adapter names) from a ``config.json["adapters"]`` dict.

        Raises:
            ValueError: if a fusion refers to a config that is neither an alias nor in ``fusion_config_map``.
        """
        config_map = data.get("fusion_config_map", {}) or {}
        name_map = data.get("fusion_name_map", {}) or {}
        result: dict[str, tuple[AdapterFusionConfig, list[str]]] = {}
        for name, ref in (data.get("fusions", {}) or {}).items():
            if isinstance(ref, dict):
                config = AdapterFusionConfig.load(ref)
            elif ref in config_map:
                config = AdapterFusionConfig.load(config_map[ref])
            elif ref in ADAPTERFUSION_CONFIG_MAP:
                config = AdapterFusionConfig.load(ref)
            else:
                raise ValueError(
                    f"AdapterFusion {name!r} refers to config {ref!r}, which is neither an alias "
                    f"({sorted(ADAPTERFUSION_CONFIG_MAP)}) nor in fusion_config_map"
                )
            result[name] = (config, list(name_map.get(name) or name.split(",")))
        return result


def _fusion_names(block: AdapterCompositionBlock) -> set[str]:
    """Names of the Fuse blocks in ``block`` and below."""
    names = {block.name} if isinstance(block, Fuse) else set()
    for child in block:
        if isinstance(child, AdapterCompositionBlock):
            names |= _fusion_names(child)
    return names


def _alias_of(config: AdapterConfig) -> str | None:
    """The current (non-deprecated) alias whose config equals ``config``, if any."""
    for alias, factory in ADAPTER_CONFIG_MAP.items():
        if alias in DEPRECATED_ALIASES:
            continue
        candidate = factory()
        if type(candidate) is type(config) and candidate == config:
            return alias
    return None
