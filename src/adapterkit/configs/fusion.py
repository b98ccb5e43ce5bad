"""AdapterFusion configs (Pfeiffer et al., 2021): `AdapterFusionConfig` and the ``static``/``dynamic`` presets.

Keys and defaults are AdapterHub's (reference inventory, section 3), so saved
``adapter_fusion_config.json`` files and config hashes match across both libraries.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .base import AdapterConfig, check_type, read_config_file

_FLAGS = (
    "key",
    "query",
    "value",
    "query_before_ln",
    "regularization",
    "residual_before",
    "temperature",
    "value_before_softmax",
    "value_initialized",
)


@dataclass(eq=False)
class AdapterFusionConfig(AdapterConfig):
    """How an AdapterFusion layer attends over the outputs of the fused adapters.

    Every key must be given (use `StaticAdapterFusionConfig`, `DynamicAdapterFusionConfig` or
    `AdapterFusionConfig.load` for defaults).

    Args:
        key: a ``Linear(h, h)`` on the adapter outputs (the keys).
        query: a ``Linear(h, h)`` on the query (the sub-block's hidden state).
        value: a ``Linear(h, h, bias=False)`` on the values.
        query_before_ln: take the query before the pretrained residual add and layer norm.
        regularization: add ``0.01 * ||I - W_value||^2`` to the training loss (`AdapterTrainer`).
        residual_before: add the residual to the adapter outputs before attention (keys and values),
            instead of to the attention output.
        temperature: softmax temperature that starts at 50 and falls by 0.05 per training forward to 1.
        value_before_softmax: apply ``value`` to the adapter outputs (True) or to the attended output.
        value_initialized: initialise ``value`` to the identity (off-diagonal entries 1e-6).
        dropout_prob: dropout on the attention scores; None uses the model's attention dropout.

    Raises:
        ValueError: for a flag that is not a bool or a dropout outside [0, 1), naming key and value.
    """

    key: bool
    query: bool
    value: bool
    query_before_ln: bool
    regularization: bool
    residual_before: bool
    temperature: bool
    value_before_softmax: bool
    value_initialized: bool
    dropout_prob: float | None

    def validate(self) -> None:
        """Check every key: the flags are bools, ``dropout_prob`` is None or a number in [0, 1)."""
        for key in _FLAGS:
            check_type(self, key, (bool,), "True or False")
        p = self.dropout_prob
        if p is not None and (isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p < 1.0):
            raise ValueError(
                f"{type(self).__name__}.dropout_prob={p!r} is not allowed; expected None or a number in [0, 1)"
            )

    @classmethod
    def from_dict(cls, config: Mapping[str, Any] | AdapterConfig) -> AdapterFusionConfig:  # type: ignore[override]
        """Build a fusion config from a dict holding every key; unknown keys become extra attributes.

        Raises:
            ValueError: if a key is missing (naming the missing keys) or a value is invalid.
        """
        if isinstance(config, AdapterFusionConfig):
            return config
        if isinstance(config, AdapterConfig):
            raise ValueError(f"{type(config).__name__} is an adapter config, not an AdapterFusion config")
        fields = [f.name for f in dataclasses.fields(cls)]
        missing = [k for k in fields if k not in config and _has_no_default(cls, k)]
        if missing:
            raise ValueError(
                f"AdapterFusion config {dict(config)!r} lacks key(s) {missing}; give all of {fields} "
                f"or start from an alias in {sorted(ADAPTERFUSION_CONFIG_MAP)}"
            )
        known = {k: v for k, v in config.items() if k in fields}
        obj = cls(**known)
        for key, value in config.items():
            if key not in fields:
                setattr(obj, key, value)
        return obj

    @classmethod
    def load(  # type: ignore[override]
        cls, config: AdapterFusionConfig | Mapping[str, Any] | str | os.PathLike | None, **overrides: Any
    ) -> AdapterFusionConfig:
        """Resolve any fusion config specifier to a config.

        Args:
            config: a fusion config, a dict with every key, an alias from `ADAPTERFUSION_CONFIG_MAP`
                (``"static"``, ``"dynamic"``), the path of a JSON file (the nested ``"config"`` of an
                ``adapter_fusion_config.json`` is used when present), or None for ``"dynamic"``.
            overrides: key/value changes applied on top; ``None`` values are ignored.

        Raises:
            ValueError: for an unknown alias, an unreadable file, a missing key or an invalid value.
            TypeError: for an override key the config does not have, or an unsupported specifier type.
        """
        if config is None:
            config = DEFAULT_ADAPTERFUSION_CONFIG
        if isinstance(config, AdapterFusionConfig):
            resolved = config
        elif isinstance(config, Mapping):
            resolved = AdapterFusionConfig.from_dict(config)
        elif isinstance(config, (str, os.PathLike)) and os.path.isfile(config):
            data = read_config_file(config, "AdapterFusion config")
            resolved = AdapterFusionConfig.from_dict(data)
        elif isinstance(config, str):
            factory = ADAPTERFUSION_CONFIG_MAP.get(config)
            if factory is None:
                raise ValueError(
                    f"unknown AdapterFusion config {config!r}; known aliases: {sorted(ADAPTERFUSION_CONFIG_MAP)} "
                    "(or pass a dict, a config object or a JSON file path)"
                )
            resolved = factory()
        else:
            raise TypeError(
                f"cannot load an AdapterFusion config from {type(config).__name__}; pass an AdapterFusionConfig, "
                "a dict, an alias or a JSON file path"
            )
        changes = {k: v for k, v in overrides.items() if v is not None}
        return resolved.replace(**changes) if changes else resolved


def _has_no_default(cls: type, name: str) -> bool:
    field = next(f for f in dataclasses.fields(cls) if f.name == name)
    return field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING


@dataclass(eq=False)
class StaticAdapterFusionConfig(AdapterFusionConfig):
    """AdapterFusion without a value matrix (alias ``"static"``)."""

    key: bool = True
    query: bool = True
    value: bool = False
    query_before_ln: bool = False
    regularization: bool = False
    residual_before: bool = False
    temperature: bool = False
    value_before_softmax: bool = True
    value_initialized: bool = False
    dropout_prob: float | None = None


@dataclass(eq=False)
class DynamicAdapterFusionConfig(AdapterFusionConfig):
    """AdapterFusion with an identity-initialised value matrix and its regularization (alias ``"dynamic"``,
    the default)."""

    key: bool = True
    query: bool = True
    value: bool = True
    query_before_ln: bool = False
    regularization: bool = True
    residual_before: bool = False
    temperature: bool = False
    value_before_softmax: bool = True
    value_initialized: bool = True
    dropout_prob: float | None = None


ADAPTERFUSION_CONFIG_MAP: dict[str, Callable[[], AdapterFusionConfig]] = {
    "static": StaticAdapterFusionConfig,
    "dynamic": DynamicAdapterFusionConfig,
}
"""Alias -> factory of the fusion config it names (AdapterHub's names)."""

DEFAULT_ADAPTERFUSION_CONFIG = "dynamic"


def fusion_alias_of(config: AdapterFusionConfig) -> str | None:
    """The alias whose config equals ``config`` (``"static"``/``"dynamic"``), or None."""
    for alias, factory in ADAPTERFUSION_CONFIG_MAP.items():
        if factory() == config:
            return alias
    return None
