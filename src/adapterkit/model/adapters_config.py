"""`ModelAdaptersConfig`: the per-model registry of adapters, their configs and the active setup."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from ..composition import AdapterCompositionBlock
from ..configs import ADAPTER_CONFIG_MAP, AdapterConfig, config_hash
from ..configs.registry import DEPRECATED_ALIASES


class ModelAdaptersConfig:
    """Which adapters a model has, with what config, and which are active.

    Serialises to AdapterHub's ``config.json["adapters"]`` schema: adapter name -> config alias (when
    the config equals an alias's) or 16-hex config hash, plus ``config_map`` from hash to config dict.
    """

    def __init__(self) -> None:
        self.adapters: dict[str, AdapterConfig] = {}
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
        """Forget ``name``; it also leaves the active setup."""
        self.adapters.pop(name, None)
        if self.active_setup is not None and name in self.active_setup.flatten():
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
        return {
            "adapters": refs,
            "config_map": config_map,
            "fusions": {},
            "fusion_config_map": {},
            "fusion_name_map": {},
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


def _alias_of(config: AdapterConfig) -> str | None:
    """The current (non-deprecated) alias whose config equals ``config``, if any."""
    for alias, factory in ADAPTER_CONFIG_MAP.items():
        if alias in DEPRECATED_ALIASES:
            continue
        candidate = factory()
        if type(candidate) is type(config) and candidate == config:
            return alias
    return None
