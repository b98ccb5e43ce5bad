"""LoRA-family configs: `LoRAConfig` and its presets `IA3Config`, `VeraConfig`, `DoRAConfig`,
`DvoRAConfig`, and `MTLLoRAConfig` (multi-task LoRA, AdapterHub architecture ``"mtl_lora"``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from .base import AdapterConfig, check_choice, check_type

_ATTN_MATRICES = ("q", "k", "v")
_INIT_WEIGHTS = ("lora", "bert", "ia3", "vera")
_TASK_MATRICES = ("singular_values", "linear")


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
        use_dora: DoRA (Liu et al., 2024): a learned magnitude ``m`` (initialised to the row norms of
            ``W``) rescales the output, ``y = m / ||W + dW||_row * (W x + b + s dW x)``. Only with ``"add"``.
        vera_d: with ``vera_b``, makes the adapter VeRA (Kopiczko et al., 2024): frozen random ``A``,
            ``B`` shared by every layer, trainable vectors ``d`` (init ``vera_d``) and ``b`` (init
            ``vera_b``), ``dW = diag(b) B diag(d) A``. Only with ``"add"``.
        vera_b: see ``vera_d``; both are set or both are None.
        dtype: torch dtype name of the adapter tensors (default: the projection's dtype).

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
        for key in ("vera_d", "vera_b"):
            if getattr(self, key) is not None:
                check_type(self, key, (int, float), "a number or None")
        if (self.vera_d is None) != (self.vera_b is None):
            raise ValueError(
                f"{type(self).__name__}: vera_d={self.vera_d!r} and vera_b={self.vera_b!r} are not allowed; VeRA needs "
                "both (numbers: the initial values of its d and b vectors), plain LoRA neither"
            )
        if self.composition_mode == "scale" and (self.use_dora or self.is_vera):
            raise ValueError(
                f"{type(self).__name__}: use_dora={self.use_dora!r}, vera_d={self.vera_d!r} are not allowed with "
                "composition_mode='scale' ((IA)^3); DoRA and VeRA need composition_mode='add'"
            )
        if self.dtype is not None:
            check_choice(self, "dtype", ("float32", "float16", "bfloat16", "float64"))
        if not isinstance(self.leave_out, (list, tuple)) or not all(
            isinstance(i, int) for i in self.leave_out
        ):
            raise ValueError(
                f"{type(self).__name__}.leave_out={self.leave_out!r} is not allowed; expected a list of layer ids"
            )

    @property
    def is_vera(self) -> bool:
        """Whether this config describes VeRA (``vera_d`` and ``vera_b`` set)."""
        return self.vera_d is not None

    def to_dict(self) -> dict[str, Any]:
        """The saved form; ``"architecture"`` comes first, as AdapterHub writes it."""
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


@dataclass(eq=False)
class VeraConfig(LoRAConfig):
    """VeRA (Kopiczko et al., 2024, https://arxiv.org/abs/2310.11454); alias ``vera``.

    ``dW = diag(b) B diag(d) A`` with ``A`` (r x in) and ``B`` (out x r) frozen, random and shared by
    every adapted projection of the model, and trainable vectors ``d`` (r, init ``vera_d``) and ``b``
    (out, init ``vera_b``); ``y = W x + b + (alpha / r) dW x``. ``vera_b=0.0`` makes it start as the identity.
    """

    r: int = 8
    vera_d: float | None = 0.1
    vera_b: float | None = 0.0
    init_weights: str = "vera"
    composition_mode: str = "add"
    dtype: str | None = None


@dataclass(eq=False)
class DoRAConfig(LoRAConfig):
    """DoRA (Liu et al., 2024, https://arxiv.org/abs/2402.09353): LoRA plus a learned magnitude; alias ``dora``."""

    use_dora: bool = True


@dataclass(eq=False)
class DvoRAConfig(LoRAConfig):
    """DvoRA: VeRA's update with DoRA's magnitude (AdapterHub's preset); alias ``dvora``."""

    vera_d: float | None = 0.1
    vera_b: float | None = 0.0
    init_weights: str = "vera"
    use_dora: bool = True


class MultiTaskConfig(AdapterConfig):
    """Flag base class of multi-task methods (AdapterHub's): their adapters can share parameters
    (``model.share_parameters``) and run in a `MultiTask` block. It adds no keys."""


@dataclass(eq=False)
class MTLLoRAConfig(LoRAConfig, MultiTaskConfig):
    """MTL-LoRA (Yang et al., 2024, https://arxiv.org/abs/2410.09437); alias ``mtl_lora``.

    One adapter per task; tasks share ``A`` and the up-projections ``B_1..B_n`` through
    ``model.share_parameters(MultiTask(...))``, each keeps a task-specific ``r x r`` matrix ``L`` and
    mixing weights ``w``: ``y = W x + b + (alpha / r) sum_k softmax(w / weights_sharpness)_k B_k L^T A x``.

    Args:
        n_up_projection: number of up-projections ``B_k``.
        task_specific_matrix_type: ``"singular_values"`` (``L = diag(values)``, ones at start) or
            ``"linear"`` (a full ``r x r`` matrix, the identity at start).
        weights_sharpness: temperature of the softmax over the up-projection weights.
        (other keys: as `LoRAConfig`; DoRA, VeRA and ``composition_mode="scale"`` are not allowed.)

    Raises:
        ValueError: for a value outside what a key allows, naming the key and the allowed values.
    """

    n_up_projection: int = 1
    task_specific_matrix_type: str = "singular_values"
    weights_sharpness: float = 0.05

    architecture: ClassVar[str | None] = "mtl_lora"

    def validate(self) -> None:
        """Check every key; see the class docstring for the rules."""
        super().validate()
        check_type(self, "n_up_projection", (int,), "a positive integer")
        if self.n_up_projection < 1:
            raise ValueError(
                f"{type(self).__name__}.n_up_projection={self.n_up_projection!r} is not allowed; "
                "expected a positive integer"
            )
        check_choice(self, "task_specific_matrix_type", _TASK_MATRICES)
        check_type(self, "weights_sharpness", (int, float), "a positive number")
        if self.weights_sharpness <= 0:
            raise ValueError(
                f"{type(self).__name__}.weights_sharpness={self.weights_sharpness!r} is not allowed; "
                "expected a positive number"
            )
        if self.use_dora or self.is_vera or self.composition_mode != "add":
            raise ValueError(
                f"{type(self).__name__}: use_dora={self.use_dora!r}, vera_d={self.vera_d!r}, "
                f"composition_mode={self.composition_mode!r} are not allowed; MTL-LoRA takes plain LoRA updates "
                "(use_dora=False, vera_d=vera_b=None, composition_mode='add')"
            )
