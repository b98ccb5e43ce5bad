"""Bottleneck adapter configs (`BnConfig`) and their presets (Pfeiffer, Houlsby, parallel, Compacter,
AdapterPlus)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import ClassVar

from .base import AdapterConfig, check_choice, check_type

_INIT_WEIGHTS = ("bert", "mam_adapter", "houlsby")
_RESIDUAL_BEFORE_LN = (True, False, "post_add")
_INV_ADAPTERS = (None, "nice", "glow")
_HYPERCOMPLEX_INITS = ("glorot-uniform", "glorot-normal", "normal", "phm")
_PHM_C_INITS = ("normal", "uniform")


@dataclass(eq=False)
class BnConfig(AdapterConfig):
    """A bottleneck adapter: ``h + up(act(down(x))) * scaling`` inserted after a sub-block.

    Keys and defaults are AdapterHub's (reference inventory, section 1.3). The most used ones:

    Args:
        mh_adapter: add an adapter after the multi-head attention sub-block.
        output_adapter: add an adapter after the feed-forward sub-block.
        reduction_factor: hidden size / bottleneck size; a number, or a mapping of layer id (as a
            string) to factor with a ``"default"`` entry.
        non_linearity: activation name understood by ``transformers.get_activation`` (or
            ``"leakyrelu"``).
        original_ln_before: apply the pretrained residual add (and layer norm) before the adapter.
        original_ln_after: apply the pretrained residual add (and layer norm) after the adapter.
        residual_before_ln: take the adapter residual before (True) or after (False) the pretrained
            layer norm, or ``"post_add"``: after the residual add, before the norm.
        is_parallel: run the adapter in parallel to the sub-block (He et al., 2021).
        scaling: float, ``"learned"`` (a scalar parameter) or ``"channel"`` (one per hidden unit).
        leave_out: layer ids that get no adapter.
        phm_layer: Compacter: parameterized hypercomplex multiplication layers (`methods.phm`) instead of
            ``nn.Linear`` for the down and up projections; configured by the ``phm_*`` keys,
            ``factorized_phm_W``, ``shared_W_phm``, ``shared_phm_rule``, ``factorized_phm_rule``,
            ``learn_phm`` and ``hypercomplex_nonlinearity`` (see docs/bottleneck_family.md).
        stochastic_depth: probability of dropping the adapter branch for a whole sample while training
            (DropPath, "row" mode; AdapterPlus uses 0.1).

    Raises:
        ValueError: for a value outside what a key allows, naming the key and the allowed values.
    """

    mh_adapter: bool
    output_adapter: bool
    reduction_factor: float | Mapping
    non_linearity: str | None
    original_ln_before: bool = False
    original_ln_after: bool = True
    ln_before: bool = False
    ln_after: bool = False
    init_weights: str = "bert"
    init_weights_seed: int | None = None
    is_parallel: bool = False
    scaling: float | str = 1.0
    use_gating: bool = False
    residual_before_ln: bool | str = True
    adapter_residual_before_ln: bool = False
    inv_adapter: str | None = None
    inv_adapter_reduction_factor: float | None = None
    cross_adapter: bool = False
    leave_out: list[int] = field(default_factory=list)
    dropout: float = 0.0
    phm_layer: bool = False
    phm_dim: int = 4
    factorized_phm_W: bool | None = True
    shared_W_phm: bool | None = False
    shared_phm_rule: bool | None = True
    factorized_phm_rule: bool | None = False
    phm_c_init: str | None = "normal"
    phm_init_range: float | None = 0.0001
    learn_phm: bool | None = True
    hypercomplex_nonlinearity: str | None = "glorot-uniform"
    phm_rank: int | None = 1
    phm_bias: bool | None = True
    stochastic_depth: float | None = 0.0

    architecture: ClassVar[str | None] = None
    method: ClassVar[str] = "bottleneck"

    def validate(self) -> None:
        """Check every key this library can act on; see the class docstring for the rules."""
        for key in (
            "mh_adapter",
            "output_adapter",
            "original_ln_before",
            "original_ln_after",
            "ln_before",
            "ln_after",
            "is_parallel",
            "use_gating",
            "adapter_residual_before_ln",
            "cross_adapter",
            "phm_layer",
        ):
            check_type(self, key, (bool,), "True or False")
        rf = self.reduction_factor
        if isinstance(rf, Mapping):
            for layer, value in rf.items():
                if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
                    raise ValueError(
                        f"BnConfig.reduction_factor[{layer!r}]={value!r} is not allowed; expected a positive number"
                    )
        elif not isinstance(rf, (int, float)) or isinstance(rf, bool) or rf <= 0:
            raise ValueError(
                f"BnConfig.reduction_factor={rf!r} is not allowed; expected a positive number or a mapping "
                "of layer id to number with a 'default' entry"
            )
        check_choice(self, "init_weights", _INIT_WEIGHTS)
        check_choice(self, "residual_before_ln", _RESIDUAL_BEFORE_LN)
        check_choice(self, "inv_adapter", _INV_ADAPTERS)
        if not (
            isinstance(self.scaling, (int, float)) and not isinstance(self.scaling, bool)
        ) and self.scaling not in (
            "learned",
            "channel",
        ):
            raise ValueError(
                f"BnConfig.scaling={self.scaling!r} is not allowed; expected a number, 'learned' or 'channel'"
            )
        if not isinstance(self.dropout, (int, float)) or not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"BnConfig.dropout={self.dropout!r} is not allowed; expected a number in [0, 1)")
        if not isinstance(self.leave_out, (list, tuple)) or not all(
            isinstance(i, int) for i in self.leave_out
        ):
            raise ValueError(
                f"BnConfig.leave_out={self.leave_out!r} is not allowed; expected a list of layer ids"
            )
        if self.non_linearity is not None and not isinstance(self.non_linearity, str):
            raise ValueError(
                f"BnConfig.non_linearity={self.non_linearity!r} is not allowed; expected a name or None"
            )
        sd = self.stochastic_depth
        if sd is not None and (not isinstance(sd, (int, float)) or isinstance(sd, bool) or not 0.0 <= sd <= 1.0):
            raise ValueError(f"BnConfig.stochastic_depth={sd!r} is not allowed; expected a number in [0, 1]")
        if self.phm_layer:
            self._validate_phm()

    def _validate_phm(self) -> None:
        """The ``phm_*`` keys, checked only when ``phm_layer`` is on (AdapterHub ignores them otherwise)."""
        for key in ("phm_dim", "phm_rank"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"BnConfig.{key}={value!r} is not allowed; expected a positive integer")
        for key in (
            "factorized_phm_W", "shared_W_phm", "shared_phm_rule", "factorized_phm_rule", "learn_phm", "phm_bias"
        ):
            check_type(self, key, (bool,), "True or False")
        rng = self.phm_init_range
        if not isinstance(rng, (int, float)) or isinstance(rng, bool) or rng <= 0:
            raise ValueError(f"BnConfig.phm_init_range={rng!r} is not allowed; expected a positive number")
        check_choice(self, "hypercomplex_nonlinearity", _HYPERCOMPLEX_INITS)
        check_choice(self, "phm_c_init", _PHM_C_INITS)

    def reduction_factor_for(self, layer_idx: int) -> float:
        """The reduction factor of layer ``layer_idx``.

        Raises:
            KeyError: if ``reduction_factor`` is a mapping with neither this layer nor ``"default"``.
        """
        rf = self.reduction_factor
        if not isinstance(rf, Mapping):
            return rf
        if str(layer_idx) in rf:
            return rf[str(layer_idx)]
        if "default" in rf:
            return rf["default"]
        raise KeyError(
            f"BnConfig.reduction_factor has no entry for layer {layer_idx} and no 'default'; "
            'give one, e.g. {"1": 16, "default": 16}'
        )


@dataclass(eq=False)
class SeqBnConfig(BnConfig):
    """Sequential bottleneck adapter after the FFN (Pfeiffer et al., 2020); alias ``seq_bn``/``pfeiffer``."""

    original_ln_before: bool = True
    original_ln_after: bool = True
    residual_before_ln: bool | str = True
    ln_before: bool = False
    ln_after: bool = False
    mh_adapter: bool = False
    output_adapter: bool = True
    non_linearity: str | None = "relu"
    reduction_factor: float | Mapping = 16


@dataclass(eq=False)
class DoubleSeqBnConfig(BnConfig):
    """Two sequential adapters per layer (Houlsby et al., 2019); alias ``double_seq_bn``/``houlsby``."""

    original_ln_before: bool = False
    original_ln_after: bool = True
    residual_before_ln: bool | str = True
    ln_before: bool = False
    ln_after: bool = False
    mh_adapter: bool = True
    output_adapter: bool = True
    non_linearity: str | None = "swish"
    reduction_factor: float | Mapping = 16


@dataclass(eq=False)
class ParBnConfig(BnConfig):
    """Parallel bottleneck adapter (He et al., 2021); alias ``par_bn``/``parallel``."""

    original_ln_before: bool = False
    original_ln_after: bool = True
    ln_before: bool = False
    ln_after: bool = False
    mh_adapter: bool = False
    output_adapter: bool = True
    non_linearity: str | None = "relu"
    reduction_factor: float | Mapping = 2
    init_weights: str = "mam_adapter"
    is_parallel: bool = True
    scaling: float | str = 4.0


@dataclass(eq=False)
class CompacterConfig(DoubleSeqBnConfig):
    """Compacter (Mahabadi et al., 2021): Houlsby's two adapters with PHM projections; alias ``compacter``.

    With the default ``reduction_factor=32`` the bottleneck (hidden size // 32) must be a multiple of
    ``phm_dim`` (4): hidden size 768 gives 24. Small models need a smaller reduction factor.
    """

    phm_layer: bool = True
    reduction_factor: float | Mapping = 32
    non_linearity: str | None = "gelu"


@dataclass(eq=False)
class CompacterPlusPlusConfig(SeqBnConfig):
    """Compacter++ (Mahabadi et al., 2021): one adapter after the FFN with PHM projections; alias ``compacter++``."""

    phm_layer: bool = True
    reduction_factor: float | Mapping = 32
    non_linearity: str | None = "gelu"


@dataclass(eq=False)
class AdapterPlusConfig(BnConfig):
    """AdapterPlus (Steitz & Roth, 2024, https://arxiv.org/abs/2406.06820).

    One adapter after the FFN on ``z = LN(h + r)`` (the sub-block's own norm, applied once, before the
    adapter): ``out = z + scaling * drop_path(up(gelu(down(z))))`` with per-channel scaling, Houlsby
    initialisation and stochastic depth 0.1; ``out`` replaces the sub-block's output
    (``original_ln_after=False``). AdapterHub has no alias for it.
    """

    original_ln_after: bool = False
    original_ln_before: bool = True
    residual_before_ln: bool | str = False
    stochastic_depth: float | None = 0.1
    init_weights: str = "houlsby"
    scaling: float | str = "channel"
    mh_adapter: bool = False
    output_adapter: bool = True
    reduction_factor: float | Mapping = 96
    non_linearity: str | None = "gelu"
