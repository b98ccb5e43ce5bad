"""`ConfigUnion`: several methods' configs served under one adapter name; `MAMConfig` and `UniPELTConfig`."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any, ClassVar

from .base import AdapterConfig
from .bottleneck import BnConfig, ParBnConfig, SeqBnConfig
from .lora import LoRAConfig
from .prefix_tuning import PrefixTuningConfig


class ConfigUnion(AdapterConfig):
    """Several adapter configs (of different methods, or bottleneck configs at different locations) that
    together form one adapter (AdapterHub's ``ConfigUnion``, saved as ``{"architecture": "union", ...}``).

    Args:
        *configs: the parts, in order (their modules are added in this order).

    Raises:
        TypeError: if a part is not an `AdapterConfig` or is itself a union.
        ValueError: if two parts have the same architecture, unless either has a ``leave_out`` (decided when the
            adapter is added) or both are bottleneck configs whose ``mh_adapter`` and ``output_adapter`` both
            differ.

    Access: ``union[i]`` is part ``i``; ``union["i.key"]`` its value of ``key``; iterating yields ``"i.key"``
    names (AdapterHub's mapping view, which its config hash uses).
    """

    architecture: ClassVar[str | None] = "union"
    method: ClassVar[str] = "union"

    configs: tuple[AdapterConfig, ...]

    def __init__(self, *configs: AdapterConfig) -> None:
        self.validate_configs(configs)
        object.__setattr__(self, "configs", tuple(configs))

    @staticmethod
    def validate_configs(configs: Sequence[Any]) -> None:
        """Check that ``configs`` can form one union (AdapterHub's rules, see the class docstring).

        Raises:
            TypeError, ValueError: as the class docstring says, naming the configs.
        """
        for config in configs:
            if isinstance(config, ConfigUnion):
                raise TypeError(f"{config!r} of type {type(config).__name__} cannot be part of a config union")
            if not isinstance(config, AdapterConfig):
                raise TypeError(
                    f"{config!r} (type {type(config).__name__}) is not an AdapterConfig; a config union takes "
                    "config objects"
                )
        for i, c_a in enumerate(configs):
            for c_b in configs[:i]:
                if c_a.architecture != c_b.architecture:
                    continue
                if c_a.get("leave_out", []) or c_b.get("leave_out", []):
                    continue  # decided per layer when the adapter is added
                if c_a.architecture is None or c_a.architecture == "bottleneck":
                    if c_a.mh_adapter != c_b.mh_adapter and c_a.output_adapter != c_b.output_adapter:
                        continue
                    raise ValueError(
                        f"{type(c_b).__name__} and {type(c_a).__name__} cannot be combined: two bottleneck configs "
                        "in one union must differ in both mh_adapter and output_adapter (one location each)"
                    )
                raise ValueError(
                    f"{type(c_b).__name__} and {type(c_a).__name__} have the same adapter architecture "
                    f"{c_a.architecture!r} and cannot be combined (unless one of them has a leave_out)"
                )

    def validate(self) -> None:
        """Re-check the parts (see `validate_configs`)."""
        self.validate_configs(self.configs)

    # ---- mapping view (AdapterHub's) --------------------------------------------------------
    def __getitem__(self, key: int | str) -> Any:  # type: ignore[override]
        if isinstance(key, int):
            return self.configs[key]
        if key in self.__dict__:
            return self.__dict__[key]
        index, _, sub_key = key.partition(".")
        if not sub_key or not index.isdigit():
            raise KeyError(f"{key!r}: a config union takes an int index or an 'i.key' name")
        i = int(index)
        if i >= len(self.configs):
            raise KeyError(f"{key!r}: this union has {len(self.configs)} configs")
        return self.configs[i][sub_key]

    def __iter__(self) -> Iterator[str]:
        for i, config in enumerate(self.configs):
            for key in config:
                yield f"{i}.{key}"

    def __len__(self) -> int:
        return sum(len(c) for c in self.configs)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Mapping):
            return NotImplemented
        other_dict = other.to_dict() if isinstance(other, AdapterConfig) else dict(other)
        return self.to_dict() == other_dict

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(repr(c) for c in self.configs)})"

    # ---- serialisation and copies -----------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """``{"architecture": "union", "configs": [part.to_dict(), ...]}`` (AdapterHub's saved form)."""
        return {"architecture": self.architecture, "configs": [c.to_dict() for c in self.configs]}

    def replace(self, **changes: Any) -> ConfigUnion:  # type: ignore[override]
        """A new `ConfigUnion` with ``changes`` applied to every part (as AdapterHub).

        Raises:
            TypeError: if a part does not have one of the keys.
        """
        return ConfigUnion(*(c.replace(**changes) for c in self.configs))

    def with_leave_out(self, layers: Sequence[int]) -> ConfigUnion:
        """A copy in which every part also leaves out ``layers`` (each keeps its own ``leave_out``)."""
        return ConfigUnion(*(c.with_leave_out(layers) for c in self.configs))

    @classmethod
    def from_dict(cls, config: Mapping[str, Any] | AdapterConfig) -> ConfigUnion:  # type: ignore[override]
        """Build a union from its saved dict (each part's class chosen by its ``"architecture"``).

        Raises:
            ValueError: if the dict has no ``"configs"`` list or a part's architecture is unknown.
            TypeError: as the constructor.
        """
        if isinstance(config, AdapterConfig):
            return config  # type: ignore[return-value]
        from .registry import config_class_for

        parts = config.get("configs")
        if not isinstance(parts, Sequence) or isinstance(parts, str):
            raise ValueError(f"a union config needs a 'configs' list, got {parts!r}")
        return ConfigUnion(*(config_class_for(p).from_dict(p) for p in parts))


class MAMConfig(ConfigUnion):
    """Mix-and-Match adapters (He et al., 2021): prefix tuning plus a parallel bottleneck adapter.

    Args:
        prefix_tuning: default ``PrefixTuningConfig(bottleneck_size=800)``.
        adapter: default ``ParBnConfig()``.

    Raises:
        TypeError: if ``prefix_tuning`` is not a `PrefixTuningConfig` or ``adapter`` not a `BnConfig`.
    """

    def __init__(self, prefix_tuning: PrefixTuningConfig | None = None, adapter: BnConfig | None = None) -> None:
        prefix_tuning = prefix_tuning or PrefixTuningConfig(bottleneck_size=800)
        adapter = adapter or ParBnConfig()
        if not isinstance(prefix_tuning, PrefixTuningConfig):
            raise TypeError(f"MAMConfig prefix_tuning must be a PrefixTuningConfig, got {type(prefix_tuning).__name__}")
        if not isinstance(adapter, BnConfig):
            raise TypeError(f"MAMConfig adapter must be a BnConfig, got {type(adapter).__name__}")
        super().__init__(prefix_tuning, adapter)

    @property
    def prefix_tuning(self) -> PrefixTuningConfig:
        """The prefix tuning part."""
        return self.configs[0]  # type: ignore[return-value]

    @property
    def adapter(self) -> BnConfig:
        """The bottleneck part."""
        return self.configs[1]  # type: ignore[return-value]


class UniPELTConfig(ConfigUnion):
    """UniPELT (Mao et al., 2022): gated prefix tuning, bottleneck adapter and LoRA.

    Every part gets ``use_gating=True``.

    Args:
        prefix_tuning: default ``PrefixTuningConfig(prefix_length=10)``.
        adapter: default ``SeqBnConfig(reduction_factor=16)``.
        lora: default ``LoRAConfig(r=8, alpha=2)`` (with the gate, ``alpha / r`` has no effect).
    """

    def __init__(
        self,
        prefix_tuning: PrefixTuningConfig | None = None,
        adapter: BnConfig | None = None,
        lora: LoRAConfig | None = None,
    ) -> None:
        parts = [
            prefix_tuning or PrefixTuningConfig(prefix_length=10),
            adapter or SeqBnConfig(reduction_factor=16),
            lora or LoRAConfig(r=8, alpha=2),
        ]
        super().__init__(*(c.replace(use_gating=True) for c in parts))


__all__ = ["ConfigUnion", "MAMConfig", "UniPELTConfig"]
