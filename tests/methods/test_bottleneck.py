"""Bottleneck adapter math (BottleneckAdapter), checked against the formulas written out by hand."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from adapterkit.configs import BnConfig, ParBnConfig, SeqBnConfig
from adapterkit.methods.bottleneck import BottleneckAdapter, apply_adapter


def _adapter(config: BnConfig) -> BottleneckAdapter:
    adapter = BottleneckAdapter(8, 4, config, torch.Generator().manual_seed(0))
    with torch.no_grad():
        for p in adapter.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    return adapter.eval()


def _f(adapter: BottleneckAdapter, x: torch.Tensor) -> torch.Tensor:
    return adapter.adapter_up(adapter.adapter_down(x)) * adapter.scaling


H, R = torch.randn(2, 3, 8), torch.randn(2, 3, 8)
LN = nn.LayerNorm(8)


def test_seq_bn_formula():
    a = _adapter(SeqBnConfig(reduction_factor=2))
    x, residual = a.adapter_input(H, R, LN)
    out = a(x, residual)
    torch.testing.assert_close(out, _f(a, LN(H + R)) + H)
    hidden, up = apply_adapter(a, H, R, LN)
    torch.testing.assert_close(hidden, out)
    torch.testing.assert_close(up, _f(a, LN(H + R)))


def test_residual_after_ln_and_post_add():
    after = _adapter(SeqBnConfig(reduction_factor=2, residual_before_ln=False))
    torch.testing.assert_close(after(*after.adapter_input(H, R, LN)), _f(after, LN(H + R)) + LN(H + R))
    post = _adapter(SeqBnConfig(reduction_factor=2, residual_before_ln="post_add"))
    torch.testing.assert_close(post(*post.adapter_input(H, R, LN)), _f(post, LN(H + R)) + H + R)


def test_pre_ln_model_without_norm():
    a = _adapter(SeqBnConfig(reduction_factor=2))
    torch.testing.assert_close(a(*a.adapter_input(H, R, None)), _f(a, H + R) + H)


def test_parallel_reads_sub_block_input():
    a = _adapter(ParBnConfig(reduction_factor=2))
    out = a(*a.adapter_input(H, R, LN))
    torch.testing.assert_close(out, _f(a, R))
    torch.testing.assert_close(apply_adapter(a, H, R, LN)[0], H + _f(a, R))


def test_layer_norms_gating_and_key_layout():
    config = BnConfig(
        mh_adapter=False,
        output_adapter=True,
        reduction_factor=2,
        non_linearity="relu",
        ln_before=True,
        ln_after=True,
        use_gating=True,
        adapter_residual_before_ln=True,
    )
    a = _adapter(config)
    assert isinstance(a.adapter_down[0], nn.LayerNorm) and isinstance(a.adapter_down[1], nn.Linear)
    gate = torch.sigmoid(a.gate(H)).mean(dim=1, keepdim=True)
    torch.testing.assert_close(a(H, R), a.adapter_norm_after(_f(a, H) * gate + R))


@pytest.mark.parametrize("scaling, shape", [("learned", (1,)), ("channel", (8,))])
def test_learned_scaling_is_a_parameter(scaling, shape):
    a = BottleneckAdapter(8, 4, SeqBnConfig(scaling=scaling), None)
    assert isinstance(a.scaling, nn.Parameter) and a.scaling.shape == shape


@pytest.mark.parametrize("key, value", [("cross_adapter", True)])
def test_unavailable_options_are_refused_at_add(bert, key, value):
    with pytest.raises(ValueError, match=key):
        bert.add_adapter("a", config=SeqBnConfig(**{key: value}))
    assert not bert.has_adapters() and not bert.get_adapter("a")
