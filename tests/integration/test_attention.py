"""Key/value hooks through transformers' AttentionInterface / AttentionMaskInterface registrations."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers import AttentionInterface
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from adapterkit import ForwardContext, Stack
from adapterkit.integration.attention import (
    KVExtension,
    adapter_attention_name,
    attention_owners,
    base_attention_name,
    extend_attention_mask,
    register_kv_hook,
    release_adapter_attention,
    use_adapter_attention,
)
from tiny import tiny_inputs, tiny_model


class _Attention(nn.Module):
    """A stand-in attention module (transformers passes the module to the attention function)."""

    def __init__(self, causal: bool):
        super().__init__()
        self.is_causal = causal


def _reference(q, k, v, mask):
    """softmax(q k^T / sqrt(d) + mask) v, output (batch, q, heads, d) as transformers returns it."""
    scores = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
    return (scores.softmax(-1) @ v).transpose(1, 2)


def test_names_are_registered_once_and_map_back():
    name = adapter_attention_name("sdpa")
    assert name == "adapterkit_sdpa" and adapter_attention_name(name) == name
    assert name in AttentionInterface() and name in ALL_MASK_ATTENTION_FUNCTIONS
    assert base_attention_name(name) == "sdpa" and base_attention_name("eager") == "eager"
    assert adapter_attention_name(None) == "adapterkit_eager"
    with pytest.raises(ValueError, match="not registered"):
        adapter_attention_name("no_such_attention")


@pytest.mark.parametrize("causal", [False, True])
def test_hook_prepends_slots_and_the_mask_follows(causal):
    torch.manual_seed(0)
    module = _Attention(causal)
    q, k, v = (torch.randn(2, 2, 3, 4) for _ in range(3))
    pk, pv = torch.randn(2, 2, 2, 4), torch.randn(2, 2, 2, 4)
    valid = torch.tensor([[True, True], [False, True]])  # row 1 does not see slot 0
    handle = register_kv_hook(
        module, lambda m, q_, k_, v_: KVExtension(torch.cat([pk, k_], 2), torch.cat([pv, v_], 2), 2, valid)
    )
    base = torch.ones(3, 3, dtype=torch.bool).tril() if causal else torch.ones(3, 3, dtype=torch.bool)
    full = torch.cat([valid[:, None, None, :].expand(2, 1, 3, 2), base.expand(2, 1, 3, 3)], dim=-1)
    expected = _reference(q, torch.cat([pk, k], 2), torch.cat([pv, v], 2), full)
    fn = ALL_ATTENTION_FUNCTIONS[adapter_attention_name("sdpa")]
    out, _ = fn(module, q, k, v, None, scaling=0.5)  # None: built as the model would (causal or not)
    torch.testing.assert_close(out, expected)
    out, _ = fn(module, q, k, v, base.expand(2, 1, 3, 3), scaling=0.5)  # a materialized bool mask
    torch.testing.assert_close(out, expected)
    handle.remove()
    out, _ = fn(module, q, k, v, None, scaling=0.5)
    torch.testing.assert_close(out, _reference(q, k, v, base.expand(2, 1, 3, 3) if causal else None))


def test_extend_additive_two_d_and_causal_masks():
    query = torch.zeros(2, 1, 2, 4)
    ext = KVExtension(torch.zeros(2, 1, 5, 4), torch.zeros(2, 1, 5, 4), 2, None)
    float_mask = torch.tensor([0.0, -1e9, 0.0]).expand(2, 1, 2, 3)
    extended = extend_attention_mask(float_mask, ext, query, _Attention(False))
    assert extended.shape == (2, 1, 2, 5) and torch.equal(extended[..., :2], torch.zeros(2, 1, 2, 2))
    two_d = extend_attention_mask(
        torch.tensor([[1, 1, 0], [1, 1, 1]]), ext, query, _Attention(False), "flash_attention_2"
    )
    assert torch.equal(two_d, torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]]))
    # None with a causal module: lower-right aligned (the last query sees every real key), additive for eager
    causal = extend_attention_mask(None, ext, query, _Attention(True), "eager")
    assert causal.dtype == torch.float32
    assert torch.equal(causal[0, 0] == 0, torch.tensor([[True, True, True, True, False], [True] * 5]))
    assert extend_attention_mask(None, ext, query, _Attention(False)) is None
    with pytest.raises(TypeError, match="BlockMask|object"):
        extend_attention_mask(object(), ext, query, _Attention(False))


def test_mask_function_materializes_only_while_adapters_run():
    name = adapter_attention_name("sdpa")
    mask_fn = ALL_MASK_ATTENTION_FUNCTIONS[name]
    kwargs = dict(batch_size=1, q_length=3, kv_length=3, attention_mask=torch.ones(1, 3, dtype=torch.bool))
    assert mask_fn(**kwargs) is None and sdpa_mask(**kwargs) is None  # no adapter: sdpa's own is_causal shortcut
    ctx = ForwardContext(Stack("a"))
    ctx.enter(owner=mask_fn)
    try:
        assert torch.equal(mask_fn(**kwargs), torch.ones(3, 3, dtype=torch.bool).tril().view(1, 1, 3, 3))
    finally:
        ctx.exit(owner=mask_fn)


def test_use_and_release_switch_every_config_back():
    model = tiny_model("llama", "sdpa")
    base = model.base_model
    use_adapter_attention(base, "x")
    use_adapter_attention(base, "y")
    assert model.config._attn_implementation == "adapterkit_sdpa" and attention_owners(base) == {"x", "y"}
    with torch.no_grad():
        wrapped = model(**tiny_inputs()).last_hidden_state
    release_adapter_attention(base, "x")
    assert model.config._attn_implementation == "adapterkit_sdpa"
    release_adapter_attention(base, "y")
    assert model.config._attn_implementation == "sdpa" and attention_owners(base) == frozenset()
    with torch.no_grad():
        assert torch.equal(model(**tiny_inputs()).last_hidden_state, wrapped)  # no hook: the same numbers
