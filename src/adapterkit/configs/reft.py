"""ReFT configs (Wu et al., 2024, https://arxiv.org/abs/2404.03592): `ReftConfig` and the LoReFT, NoReFT and
DiReFT presets."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from .base import AdapterConfig, C, check_choice, check_type

logger = logging.getLogger(__name__)

_DTYPES = (None, "float32", "float16", "bfloat16", "float64")


@dataclass(eq=False)
class ReftConfig(AdapterConfig):
    """Representation fine-tuning: a low-rank intervention on the hidden states after whole layers, at a few
    token positions.

    At each chosen layer and position, the layer output ``h`` becomes

        h + (act(W h + b) - R h) @ R         (subtract_projection=True: LoReFT, NoReFT)
        h + act(W h + b) @ R                 (subtract_projection=False: DiReFT)

    with ``R`` (``r x hidden``; rows orthonormal when ``orthogonality``) and ``W``, ``b`` learned; dropout
    applies to the result while training. Positions come from the attention mask: the first
    ``prefix_positions`` and the last ``suffix_positions`` real (mask = 1) tokens of each row.

    Keys and defaults are AdapterHub's (reference inventory, section 1.10), plus two that AdapterHub lacks:
    ``subtract_projection`` is a saved field here (a class attribute in AdapterHub, lost on save), and
    ``leave_out`` removes layers (what ``load_adapter(leave_out=...)`` uses).

    Args:
        layers: ``"all"`` or the layer ids that get an intervention.
        prefix_positions: number of first real tokens intervened on.
        suffix_positions: number of last real tokens intervened on.
        r: rank of the intervention.
        orthogonality: keep the rows of ``R`` orthonormal (torch's orthogonal parametrization; half-precision
            ``dtype`` is computed in float32 for it).
        tied_weights: one unit for prefix and suffix positions (else one each).
        subtract_projection: subtract ``R h`` before projecting back (False: DiReFT).
        dropout: dropout rate on the intervened states (training only).
        non_linearity: activation on ``W h + b`` (None: identity).
        dtype: dtype of the intervention weights (``"float32"``, ``"bfloat16"``, ...); None: the model's.
        output_reft: intervene after the layer output (the only location; AdapterHub's key).
        init_weights_seed: seed the initialisation, so every layer and adapter with the same seed starts
            identical.
        leave_out: layer ids without an intervention (applied on top of ``layers``).

    Raises:
        ValueError: for a value outside what a key allows, naming the key and the allowed values.
    """

    layers: str | list[int]
    prefix_positions: int
    suffix_positions: int
    r: int
    orthogonality: bool
    tied_weights: bool = False
    subtract_projection: bool = True
    dropout: float = 0.05
    non_linearity: str | None = None
    dtype: str | None = None
    output_reft: bool = True
    init_weights_seed: int | None = None
    leave_out: list[int] = field(default_factory=list)

    architecture: ClassVar[str | None] = "reft"
    method: ClassVar[str] = "reft"

    def validate(self) -> None:
        """Check every key; see the class docstring for the rules."""
        name = type(self).__name__
        if self.layers != "all" and not (
            isinstance(self.layers, (list, tuple))
            and all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in self.layers)
        ):
            raise ValueError(f"{name}.layers={self.layers!r} is not allowed; expected 'all' or a list of layer ids")
        for key in ("prefix_positions", "suffix_positions"):
            check_type(self, key, (int,), "a non-negative integer")
            if getattr(self, key) < 0:
                raise ValueError(f"{name}.{key}={getattr(self, key)!r} is not allowed; expected a non-negative integer")
        if self.prefix_positions == 0 and self.suffix_positions == 0:
            raise ValueError(
                f"{name}: prefix_positions=0 and suffix_positions=0 intervene nowhere; set at least one above 0"
            )
        check_type(self, "r", (int,), "a positive integer")
        if self.r < 1:
            raise ValueError(f"{name}.r={self.r!r} is not allowed; expected a positive integer")
        for key in ("orthogonality", "tied_weights", "subtract_projection", "output_reft"):
            check_type(self, key, (bool,), "True or False")
        if not self.output_reft:
            raise ValueError(f"{name}.output_reft=False is not allowed: the layer output is ReFT's only location")
        if not isinstance(self.dropout, (int, float)) or isinstance(self.dropout, bool) or not 0.0 <= self.dropout < 1:
            raise ValueError(f"{name}.dropout={self.dropout!r} is not allowed; expected a number in [0, 1)")
        if self.non_linearity is not None and not isinstance(self.non_linearity, str):
            raise ValueError(f"{name}.non_linearity={self.non_linearity!r} is not allowed; expected a name or None")
        check_choice(self, "dtype", _DTYPES)
        if self.init_weights_seed is not None:
            check_type(self, "init_weights_seed", (int,), "an integer or None")
        if not isinstance(self.leave_out, (list, tuple)) or not all(
            isinstance(i, int) and not isinstance(i, bool) for i in self.leave_out
        ):
            raise ValueError(f"{name}.leave_out={self.leave_out!r} is not allowed; expected a list of layer ids")

    def applies_to(self, layer_idx: int) -> bool:
        """Whether layer ``layer_idx`` gets an intervention (``layers`` minus ``leave_out``)."""
        return (self.layers == "all" or layer_idx in self.layers) and layer_idx not in self.leave_out

    def to_dict(self) -> dict[str, Any]:
        """The saved form: AdapterHub's keys (``"architecture": "reft"`` first) plus ``subtract_projection`` and
        ``leave_out``."""
        return {"architecture": self.architecture, **super().to_dict()}

    @classmethod
    def from_dict(cls: type[C], config: Mapping[str, Any] | AdapterConfig) -> C:
        """Build a config from a saved dict.

        AdapterHub does not save ``subtract_projection`` (a class attribute there), so its DiReFT and NoReFT
        files are identical and AdapterHub itself reloads both with the projection subtracted. A dict without
        the key therefore loads with ``subtract_projection=True``, which reproduces what AdapterHub computes with
        the reloaded file; add ``"subtract_projection": false`` to such a file to get the DiReFT it was trained as.
        """
        if isinstance(config, AdapterConfig):
            return config  # type: ignore[return-value]
        if "subtract_projection" not in config and not config.get("orthogonality", True):
            logger.warning(
                "ReFT config without 'subtract_projection' (saved by AdapterHub, which does not record it): loading "
                "it with subtract_projection=True as AdapterHub does; if it was trained as DiReFT, add "
                '"subtract_projection": false to its adapter_config.json'
            )
        return super().from_dict(config)  # type: ignore[misc]


@dataclass(eq=False)
class LoReftConfig(ReftConfig):
    """Low-rank linear subspace ReFT: orthonormal ``R``, projection subtracted; alias ``loreft``."""

    layers: str | list[int] = "all"
    prefix_positions: int = 3
    suffix_positions: int = 0
    r: int = 1
    orthogonality: bool = True


@dataclass(eq=False)
class NoReftConfig(ReftConfig):
    """LoReFT without the orthogonality constraint; alias ``noreft``."""

    layers: str | list[int] = "all"
    prefix_positions: int = 3
    suffix_positions: int = 0
    r: int = 1
    orthogonality: bool = False


@dataclass(eq=False)
class DiReftConfig(ReftConfig):
    """NoReFT without subtracting the projection, ``h + act(W h + b) @ R``; alias ``direft``."""

    layers: str | list[int] = "all"
    prefix_positions: int = 3
    suffix_positions: int = 0
    r: int = 1
    orthogonality: bool = False
    subtract_projection: bool = False
