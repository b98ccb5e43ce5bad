"""The `AdapterConfig` base class: immutable, dict-like, loadable from many forms."""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import FrozenInstanceError
from typing import Any, ClassVar, TypeVar

C = TypeVar("C", bound="AdapterConfig")


class AdapterConfig(Mapping):
    """Base class of every adapter method's configuration.

    Subclasses are dataclasses. Instances are immutable (a set key cannot change; custom extra
    attributes may be added once), behave as read-only mappings, and serialise to the same dict
    AdapterHub writes, so configs and their hashes match across both libraries.

    Class attributes:
        architecture: The method family written as ``"architecture"`` in saved configs
            (``None`` for bottleneck adapters, ``"lora"`` for the LoRA family).
        method: The registered method name (see :mod:`adapterkit.methods`) that builds modules.
    """

    architecture: ClassVar[str | None] = None
    method: ClassVar[str] = ""

    def __init__(self) -> None:
        raise TypeError("AdapterConfig is abstract: use a concrete config such as BnConfig or LoRAConfig.")

    def __setattr__(self, name: str, value: Any) -> None:
        if name in self.__dict__:
            raise FrozenInstanceError(
                f"cannot assign to field {name!r}: configs are immutable, use replace()"
            )
        object.__setattr__(self, name, value)

    def __delattr__(self, name: str) -> None:
        raise FrozenInstanceError(f"cannot delete field {name!r}: configs are immutable")

    def __getitem__(self, key: str) -> Any:
        return self.__dict__[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.__dict__)

    def __len__(self) -> int:
        return len(self.__dict__)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Mapping):
            return NotImplemented
        other_dict = other.to_dict() if isinstance(other, AdapterConfig) else dict(other)
        return self.to_dict() == other_dict

    __hash__ = None  # type: ignore[assignment]  # mutable-looking mapping semantics, like dict

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check field values; subclasses raise ``ValueError`` naming the key, value and what is allowed."""

    def to_dict(self) -> dict[str, Any]:
        """Return the config as a plain dict (dataclass fields only), as AdapterHub writes it."""
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    def replace(self: C, **changes: Any) -> C:
        """Return a copy with ``changes`` applied.

        Raises:
            TypeError: if a key is not a field of this config.
        """
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}  # type: ignore[arg-type]
        if unknown:
            raise TypeError(
                f"{type(self).__name__} has no key(s) {sorted(unknown)}; "
                f"allowed: {sorted(f.name for f in dataclasses.fields(self))}"  # type: ignore[arg-type]
            )
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]

    def with_leave_out(self: C, layers: Sequence[int]) -> C:
        """A copy that also leaves out ``layers`` (added to its own ``leave_out``; config unions: to every part).

        Raises:
            TypeError: if this config has no ``leave_out`` key.
        """
        return self.replace(leave_out=sorted(set(getattr(self, "leave_out", ())) | set(layers)))

    @classmethod
    def from_dict(cls: type[C], config: Mapping[str, Any] | AdapterConfig) -> C:
        """Build a config from a dict; unknown keys become extra attributes (as in AdapterHub).

        Raises:
            TypeError / ValueError: if a field value is invalid.
        """
        if isinstance(config, AdapterConfig):
            return config  # type: ignore[return-value]
        field_names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        known = {k: v for k, v in config.items() if k in field_names}
        extra = {k: v for k, v in config.items() if k not in field_names and k != "architecture"}
        obj = cls(**known)
        for key, value in extra.items():
            setattr(obj, key, value)
        return obj

    @classmethod
    def load(
        cls, config: AdapterConfig | Mapping[str, Any] | str | os.PathLike, **overrides: Any
    ) -> AdapterConfig:
        """Resolve any config specifier to a config instance.

        Args:
            config: a config object, a dict, an alias from ``ADAPTER_CONFIG_MAP`` (``"seq_bn"``), a config
                string (``"seq_bn[reduction_factor=8]"``), or the path of a JSON file (the nested
                ``"config"`` key of an ``adapter_config.json`` is used when present).
            overrides: key/value changes applied on top; ``None`` values are ignored.

        Raises:
            ValueError: for an unknown alias, a malformed config string or an unreadable file.
            TypeError: for a key the config class does not have.
        """
        from .registry import config_class_for, parse_config_string

        if isinstance(config, AdapterConfig):
            resolved: AdapterConfig = config
        elif isinstance(config, Mapping):
            resolved = config_class_for(config).from_dict(config)
        elif isinstance(config, (str, os.PathLike)) and os.path.isfile(config):
            data = read_config_file(config, "config")
            resolved = config_class_for(data).from_dict(data)
        elif isinstance(config, str):
            resolved = parse_config_string(config)
        else:
            raise TypeError(
                f"cannot load an adapter config from {type(config).__name__}; "
                "pass an AdapterConfig, a dict, an alias, a config string or a JSON file path"
            )
        changes = {k: v for k, v in overrides.items() if v is not None}
        return resolved.replace(**changes) if changes else resolved


def read_config_file(path: str | os.PathLike, what: str) -> Mapping[str, Any]:
    """The config object of a JSON file: the file itself, or its ``"config"`` entry (saved adapter and
    fusion folders wrap the config with metadata).

    Args:
        path: the JSON file.
        what: the kind of config, for messages (``"config"``, ``"AdapterFusion config"``).

    Raises:
        ValueError: for invalid JSON or a file that does not hold a JSON object.
    """
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{what} file {os.fspath(path)!r} is not valid JSON: {e}") from None
    data = data.get("config", data) if isinstance(data, dict) else data
    if not isinstance(data, Mapping):
        raise ValueError(f"{what} file {os.fspath(path)!r} does not hold a JSON object")
    return data


def check_choice(config: AdapterConfig, key: str, allowed: tuple[Any, ...]) -> None:
    """Raise ``ValueError`` if ``config[key]`` is not one of ``allowed``."""
    value = getattr(config, key)
    if value not in allowed:
        raise ValueError(
            f"{type(config).__name__}.{key}={value!r} is not allowed; choose one of {list(allowed)}"
        )


def check_type(config: AdapterConfig, key: str, types: tuple[type, ...], what: str) -> None:
    """Raise ``ValueError`` if ``config[key]`` is not an instance of ``types`` (bools never count as numbers)."""
    value = getattr(config, key)
    is_bool_for_number = isinstance(value, bool) and bool not in types
    if not isinstance(value, types) or is_bool_for_number:
        raise ValueError(f"{type(config).__name__}.{key}={value!r} is not allowed; expected {what}")
