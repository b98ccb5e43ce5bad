"""`PrefixTuningConfig`: prefix tuning (Li & Liang, 2021, https://arxiv.org/abs/2101.00190)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from .base import AdapterConfig, check_type


@dataclass(eq=False)
class PrefixTuningConfig(AdapterConfig):
    """Prefix tuning: ``prefix_length`` learned key/value slots prepended to every self-attention.

    Keys and defaults are AdapterHub's (reference inventory, section 1.7). Aliases: ``prefix_tuning``
    and ``prefix_tuning_flat`` (``flat=True``).

    Args:
        encoder_prefix: add prefixes to the encoder of an encoder-decoder model. The supported
            architectures have no encoder-decoder split, so their self-attention always gets the prefix.
        cross_prefix: add prefixes to the cross-attention of an encoder-decoder model (no effect on the
            supported architectures, which have no cross-attention).
        leave_out: layer ids that get no prefix.
        flat: train the prefix key/values directly (one ``control_trans`` parameter) instead of
            producing them with an MLP from a learned embedding.
        prefix_length: number of prefix slots ``L``.
        bottleneck_size: hidden size of the reparametrizing MLP (``flat=False`` only).
        non_linearity: activation of that MLP (a ``transformers.get_activation`` name or ``"leakyrelu"``).
        dropout: dropout on the prefix keys and values.
        use_gating: scale each layer's prefix keys/values by a learned gate on the attention input.
        shared_gating: one gate for keys and values (else one each); only with ``use_gating``.
        init_weights_seed: seed the initialisation, so adapters created with the same seed start identical.

    Raises:
        ValueError: for a value outside what a key allows, naming the key and the allowed values.
    """

    encoder_prefix: bool = True
    cross_prefix: bool = True
    leave_out: list[int] = field(default_factory=list)
    flat: bool = False
    prefix_length: int = 30
    bottleneck_size: int = 512
    non_linearity: str = "tanh"
    dropout: float = 0.0
    use_gating: bool = False
    shared_gating: bool = True
    init_weights_seed: int | None = None

    architecture: ClassVar[str | None] = "prefix_tuning"
    method: ClassVar[str] = "prefix_tuning"

    def validate(self) -> None:
        """Check every key; see the class docstring for the rules."""
        for key in ("encoder_prefix", "cross_prefix", "flat", "use_gating", "shared_gating"):
            check_type(self, key, (bool,), "True or False")
        for key in ("prefix_length", "bottleneck_size"):
            check_type(self, key, (int,), "a positive integer")
            if getattr(self, key) < 1:
                raise ValueError(
                    f"{type(self).__name__}.{key}={getattr(self, key)!r} is not allowed; expected a positive integer"
                )
        check_type(self, "non_linearity", (str,), "an activation name such as 'tanh'")
        if not isinstance(self.dropout, (int, float)) or isinstance(self.dropout, bool) or not 0.0 <= self.dropout < 1:
            raise ValueError(
                f"{type(self).__name__}.dropout={self.dropout!r} is not allowed; expected a number in [0, 1)"
            )
        if self.init_weights_seed is not None:
            check_type(self, "init_weights_seed", (int,), "an integer or None")
        if not isinstance(self.leave_out, (list, tuple)) or not all(
            isinstance(i, int) and not isinstance(i, bool) for i in self.leave_out
        ):
            raise ValueError(
                f"{type(self).__name__}.leave_out={self.leave_out!r} is not allowed; expected a list of layer ids"
            )

    def to_dict(self) -> dict[str, Any]:
        """The saved form; ``"architecture": "prefix_tuning"`` comes first, as AdapterHub writes it."""
        return {"architecture": self.architecture, **super().to_dict()}
