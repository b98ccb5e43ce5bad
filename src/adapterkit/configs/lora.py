"""LoRA-family configs: `LoRAConfig` (low-rank updates) and `IA3Config` (learned rescaling)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from .base import AdapterConfig, check_choice, check_type

_ATTN_MATRICES = ("q", "k", "v")
_INIT_WEIGHTS = ("lora", "bert", "ia3", "vera")


@dataclass(eq=False)
class LoRAConfig(AdapterConfig):
    """Low-rank adaptation of linear projections (Hu et al., 2021, https://arxiv.org/abs/2106.09685).

    ``composition_mode="add"`` gives LoRA, ``y = W x + b + (alpha / r) * B A x``;
    ``composition_mode="scale"`` gives (IA)^3, ``y = (W x + b) * (alpha * l)`` with ``l = lora_B``.

    Args:
        selfattn_lora: adapt the attention projections named in ``attn_matrices``.
        intermediate_lora: adapt the first feed-forward projection.
        output_lora: adapt the second feed-forward projection.
        leave_out: layer ids that get no modules.
        r: rank of the update (must be 1 for ``"scale"``).
        alpha: LoRA scaling numerator (scaling = alpha / r); the (IA)^3 scale factor.
        dropout: dropout on the LoRA input (must be 0 for ``"scale"``).
        attn_matrices: subset of ``["q", "k", "v"]``.
        composition_mode: ``"add"`` or ``"scale"``.
        init_weights: ``"lora"`` (A Kaiming-uniform, B zero), ``"bert"`` (both N(0, 0.02)), ``"ia3"`` (ones)
            or ``"vera"``.
        init_weights_seed: seed the initialisation so every layer and adapter starts identical.
        use_gating: a learned sigmoid gate (mean over the sequence) replaces ``alpha / r``.

    Raises:
        ValueError: for a value outside what a key allows, naming the key and the allowed values.
    """

    selfattn_lora: bool = True
    intermediate_lora: bool = False
    output_lora: bool = False
    leave_out: list[int] = field(default_factory=list)
    r: int = 8
    alpha: int | float = 8
    dropout: float = 0.0
    attn_matrices: list[str] = field(default_factory=lambda: ["q", "v"])
    composition_mode: str = "add"
    init_weights: str = "lora"
    init_weights_seed: int | None = None
    use_gating: bool = False
    use_dora: bool = False
    vera_d: float | None = None
    vera_b: float | None = None
    dtype: str | None = None

    architecture: ClassVar[str | None] = "lora"
    method: ClassVar[str] = "lora"

    def validate(self) -> None:
        """Check every key; see the class docstring for the rules."""
        for key in ("selfattn_lora", "intermediate_lora", "output_lora", "use_gating", "use_dora"):
            check_type(self, key, (bool,), "True or False")
        check_type(self, "r", (int,), "a positive integer")
        if self.r < 1:
            raise ValueError(
                f"{type(self).__name__}.r={self.r!r} is not allowed; expected a positive integer"
            )
        check_type(self, "alpha", (int, float), "a number")
        check_choice(self, "composition_mode", ("add", "scale"))
        check_choice(self, "init_weights", _INIT_WEIGHTS)
        bad = [m for m in self.attn_matrices if m not in _ATTN_MATRICES]
        if bad or not isinstance(self.attn_matrices, (list, tuple)):
            raise ValueError(
                f"{type(self).__name__}.attn_matrices={self.attn_matrices!r} is not allowed; "
                f"choose a subset of {list(_ATTN_MATRICES)}"
            )
        if not isinstance(self.dropout, (int, float)) or not 0.0 <= self.dropout < 1.0:
            raise ValueError(
                f"{type(self).__name__}.dropout={self.dropout!r} is not allowed; expected a number in [0, 1)"
            )
        if self.composition_mode == "scale" and self.r != 1:
            raise ValueError(
                f"{type(self).__name__}.r={self.r} is not allowed with composition_mode='scale'; use r=1"
            )
        if self.composition_mode == "scale" and self.dropout > 0:
            raise ValueError(
                f"{type(self).__name__}.dropout={self.dropout} is not allowed with composition_mode='scale'; use 0.0"
            )
        if self.use_dora or self.vera_d is not None or self.vera_b is not None:
            raise ValueError(
                f"{type(self).__name__}: DoRA (use_dora) and VeRA (vera_d, vera_b) are not available in this "
                "version of adapterkit; leave them at False/None"
            )
        if self.dtype is not None:
            check_choice(self, "dtype", ("float32", "float16", "bfloat16", "float64"))
        if not isinstance(self.leave_out, (list, tuple)) or not all(
            isinstance(i, int) for i in self.leave_out
        ):
            raise ValueError(
                f"{type(self).__name__}.leave_out={self.leave_out!r} is not allowed; expected a list of layer ids"
            )

    def to_dict(self) -> dict[str, Any]:
        """The saved form; ``"architecture": "lora"`` comes first, as AdapterHub writes it."""
        return {"architecture": self.architecture, **super().to_dict()}


@dataclass(eq=False)
class IA3Config(LoRAConfig):
    """(IA)^3: learned rescaling of keys, values and the FFN (Liu et al., 2022); alias ``ia3``.

    As in AdapterHub, ``intermediate_lora=True`` (not ``output_lora``) is the FFN default.
    """

    selfattn_lora: bool = True
    intermediate_lora: bool = True
    output_lora: bool = False
    r: int = 1
    alpha: int | float = 1
    attn_matrices: list[str] = field(default_factory=lambda: ["k", "v"])
    composition_mode: str = "scale"
    init_weights: str = "ia3"
