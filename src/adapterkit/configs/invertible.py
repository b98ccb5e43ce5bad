"""Bottleneck presets with an invertible adapter on the embeddings (MAD-X language adapters, Pfeiffer et al.,
2020, https://arxiv.org/abs/2005.00052): ``seq_bn_inv`` and ``double_seq_bn_inv``.

Any `BnConfig` takes an invertible adapter through its ``inv_adapter`` (``"nice"`` or ``"glow"``) and
``inv_adapter_reduction_factor`` keys; these presets only set them (see `adapterkit.methods.invertible`).
"""

from __future__ import annotations

from dataclasses import dataclass

from .bottleneck import DoubleSeqBnConfig, SeqBnConfig


@dataclass(eq=False)
class SeqBnInvConfig(SeqBnConfig):
    """`SeqBnConfig` plus a NICE invertible adapter (reduction factor 2); alias ``seq_bn_inv`` (``pfeiffer+inv``)."""

    inv_adapter: str | None = "nice"
    inv_adapter_reduction_factor: float | None = 2


@dataclass(eq=False)
class DoubleSeqBnInvConfig(DoubleSeqBnConfig):
    """`DoubleSeqBnConfig` plus a NICE invertible adapter (reduction factor 2); alias ``double_seq_bn_inv``
    (``houlsby+inv``)."""

    inv_adapter: str | None = "nice"
    inv_adapter_reduction_factor: float | None = 2
