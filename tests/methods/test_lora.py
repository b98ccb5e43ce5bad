"""LoRA and (IA)^3 math on single and fused projections, and how several adapters combine."""

from __future__ import annotations

import torch
from torch import nn

from adapterkit import ForwardContext, Stack
from adapterkit.configs import IA3Config, LoRAConfig
from adapterkit.methods.lora import IA3, LoRA
from tiny import randomize, tiny_model


def _rand(module: nn.Module) -> nn.Module:
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn_like(p))
    return module


X = torch.randn(2, 5, 6)


def test_lora_delta_formula():
    lora = _rand(LoRA(6, 4, None, LoRAConfig(r=2, alpha=6), None))
    torch.testing.assert_close(lora.delta(X), 3.0 * X @ lora.lora_A.t() @ lora.lora_B.t())
    torch.testing.assert_close(X @ lora.delta_weight().t(), lora.delta(X))


def test_fused_lora_places_each_matrix_in_its_slice():
    lora = _rand(LoRA(6, 4, ("q", "v"), LoRAConfig(r=2, alpha=2), None))
    delta = lora.delta(X)
    a_q, a_v = lora.lora_A[:2], lora.lora_A[2:]
    b_q, b_v = lora.lora_B[:4], lora.lora_B[4:]
    torch.testing.assert_close(delta[..., :4], X @ a_q.t() @ b_q.t())
    assert torch.equal(delta[..., 4:8], torch.zeros_like(delta[..., 4:8]))
    torch.testing.assert_close(delta[..., 8:], X @ a_v.t() @ b_v.t())
    torch.testing.assert_close(X @ lora.delta_weight().t(), delta)


def test_fused_ia3_scales_only_enabled_slices():
    ia3 = _rand(IA3(6, 4, ("k",), IA3Config(attn_matrices=["k"], alpha=2), None))
    factor = ia3.factor(X)
    assert torch.equal(factor[:4], torch.ones(4)) and torch.equal(factor[8:], torch.ones(4))
    torch.testing.assert_close(factor[4:8], 2 * ia3.lora_B.view(-1))


def test_gated_lora_uses_gate_instead_of_scaling():
    lora = _rand(LoRA(6, 4, None, LoRAConfig(r=2, use_gating=True), None))
    gate = torch.sigmoid(lora.gate(X)).mean(dim=1, keepdim=True)
    torch.testing.assert_close(lora.delta(X), gate * (X @ lora.lora_A.t() @ lora.lora_B.t()))


def test_stack_applies_updates_in_order_on_the_same_input():
    model = tiny_model("bert")
    for name, config in (("l1", "lora"), ("l2", "lora[r=4]"), ("s", "ia3")):
        model.add_adapter(name, config=config)
        randomize(model, name)
    query = model.bert.encoder.layer[0].attention.self.value  # value carries LoRA and (IA)^3
    x = torch.randn(1, 3, 32)
    base = nn.functional.linear(x, query.weight, query.bias)
    l1, l2, s = (query.loras[n] for n in ("l1", "l2", "s"))
    ctx = ForwardContext(Stack("l1", "l2", "s"))  # a module called on its own needs a context
    ctx.enter(owner=query)
    try:
        got = query(x)
    finally:
        ctx.exit(owner=query)
    torch.testing.assert_close(got, (base + l1.delta(x) + l2.delta(x)) * s.factor(x))
