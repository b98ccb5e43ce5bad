"""Every method of this version on every architecture: forward, activation, leave_out, delete, merge."""

from __future__ import annotations

import pytest
import torch

from adapterkit import AdapterPlusConfig, AdapterSetup
from tiny import ARCHS, randomize, tiny_inputs, tiny_model

METHODS = [
    "seq_bn",
    "double_seq_bn",
    "par_bn",
    "scaled_par_bn",
    "lora",
    "ia3",
    "lora[intermediate_lora=True, output_lora=True, attn_matrices=['q','k','v']]",
    "compacter++[reduction_factor=4, phm_dim=2]",
    AdapterPlusConfig(),
    "seq_bn_inv",
    "dora",
    "vera",
    "dvora",
    "prefix_tuning[prefix_length=3, bottleneck_size=8]",
    "prefix_tuning_flat[prefix_length=3]",
    "prompt_tuning[prompt_length=2]",
    "noreft[prefix_positions=2, suffix_positions=1]",  # LoReFT: golden and method tests (noise on its
    "direft",  # orthogonal parametrization's input can zero R, so `randomize` is no test for it)
    "mam",
    "unipelt",
]
ENCODER_ONLY = {"prompt_tuning[prompt_length=2]"}  # add_adapter refuses decoders, naming why
DECODERS = {"gpt2", "llama", "mistral", "qwen2"}
MERGEABLE = ["lora", "ia3", "lora[intermediate_lora=True, output_lora=True, attn_matrices=['k']]", "dora", "vera"]
MERGEABLE.append("dvora")


def _hidden(model, **kwargs):
    with torch.no_grad():
        return model(**tiny_inputs(), **kwargs).last_hidden_state


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("arch", ARCHS)
def test_forward_activation_and_delete(arch, method, attn):
    model = tiny_model(arch, attn)
    base = _hidden(model)
    if isinstance(method, str) and method in ENCODER_ONLY and arch in DECODERS:
        with pytest.raises(ValueError, match="prompt"):
            model.add_adapter("a", config=method)
        return
    model.add_adapter("a", config=method)
    randomize(model, "a")
    assert torch.equal(_hidden(model), base), "an inactive adapter must not change the output"
    with AdapterSetup("a"):
        in_context = _hidden(model)
    model.set_active_adapters("a")
    active = _hidden(model)
    assert torch.equal(in_context, active)
    assert active.shape != base.shape or not torch.allclose(active, base, atol=1e-4)  # prompts lengthen rows
    model.delete_adapter("a")
    assert torch.equal(_hidden(model), base)
    guarded = set(map(id, [model.base_model, *model._adapter_target.layers]))  # context guards stay
    hooked = [
        n
        for n, m in model.base_model.named_modules()
        if (m._forward_hooks or m._forward_pre_hooks) and id(m) not in guarded
    ]
    assert hooked == [], "deleting the last adapter removes its hooks"


@pytest.mark.parametrize("arch", ARCHS)
def test_eager_and_sdpa_agree_with_adapters(arch):
    outs = []
    for attn in ("eager", "sdpa"):
        model = tiny_model(arch, attn)
        model.add_adapter("b", config="double_seq_bn")
        model.add_adapter("l", config="lora")
        randomize(model, "b")
        randomize(model, "l")
        model.set_active_adapters(["b", "l"])
        outs.append(_hidden(model))
    torch.testing.assert_close(outs[0], outs[1], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("method", ["double_seq_bn", "lora"])
def test_leave_out(method):
    model = tiny_model("bert")
    model.add_adapter("a", config=f"{method}[leave_out=[0]]")
    modules = model.get_adapter("a")
    assert 0 not in modules and 1 in modules


def test_get_adapter_locations():
    model = tiny_model("bert")
    model.add_adapter("b", config="double_seq_bn")
    model.add_adapter("l", config="lora[intermediate_lora=True]")
    assert set(model.get_adapter("b")[0]) == {"mh_adapter", "output_adapter"}
    lora = model.get_adapter("l")[0]
    assert set(lora) == {"selfattn_lora", "intermediate_lora"} and len(lora["selfattn_lora"]) == 2


def _modules_of(model, name):
    """Adapter modules of ``name`` in a stable order (ModuleLists flattened)."""
    found = []
    for layer in sorted(model.get_adapter(name)):
        for location in sorted(model.get_adapter(name)[layer]):
            module = model.get_adapter(name)[layer][location]
            found += list(module) if isinstance(module, torch.nn.ModuleList) else [module]
    return found


@pytest.mark.parametrize("method", ["seq_bn", "lora[init_weights='bert']", "ia3[init_weights='bert']"])
def test_init_weights_seed_gives_identical_weights(method):
    model = tiny_model("bert")
    seeded = (
        method.replace("]", ", init_weights_seed=0]") if "[" in method else f"{method}[init_weights_seed=0]"
    )
    for name in ("x", "y"):
        model.add_adapter(name, config=seeded)
    x, y = _modules_of(model, "x"), _modules_of(model, "y")
    for mx, my in zip(x, y, strict=False):  # the same across adapters ...
        assert all(torch.equal(p, q) for p, q in zip(mx.parameters(), my.parameters(), strict=False))
    first = list(x[0].parameters())
    same_shape = [m for m in x if [p.shape for p in m.parameters()] == [p.shape for p in first]]
    assert len(same_shape) > 1  # ... and across layers
    for m in same_shape:
        assert all(torch.equal(p, q) for p, q in zip(m.parameters(), x[0].parameters(), strict=False))


@pytest.mark.parametrize("method", MERGEABLE)
@pytest.mark.parametrize("arch", ARCHS)
def test_merge_equals_unmerged_and_reset_restores_exactly(arch, method):
    model = tiny_model(arch)
    original = {k: v.clone() for k, v in model.state_dict().items()}
    model.add_adapter("a", config=method, set_active=True)
    randomize(model, "a")
    unmerged = _hidden(model)
    model.merge_adapter("a")
    assert not all(torch.equal(v, model.state_dict()[k]) for k, v in original.items())
    torch.testing.assert_close(_hidden(model), unmerged, atol=1e-5, rtol=1e-5)
    model.reset_adapter()
    for key, value in original.items():
        assert torch.equal(model.state_dict()[key], value), key
    torch.testing.assert_close(_hidden(model), unmerged, atol=0, rtol=0)


def test_merge_refusals():
    model = tiny_model("bert")
    model.add_adapter("a", config="lora")
    model.add_adapter("b", config="lora")
    model.add_adapter("g", config="lora[use_gating=True]")
    model.add_adapter("s", config="seq_bn")
    model.merge_adapter("a")
    with pytest.raises(ValueError, match="already merged"):
        model.merge_adapter("b")
    model.reset_adapter()
    with pytest.raises(ValueError, match="gating"):
        model.merge_adapter("g")
    with pytest.raises(ValueError, match="bottleneck"):
        model.merge_adapter("s")


def test_set_active_adapters_resets_merge():
    model = tiny_model("bert")
    model.add_adapter("a", config="lora", set_active=True)
    randomize(model, "a")
    weight = model.bert.encoder.layer[0].attention.self.query.weight.clone()
    model.merge_adapter("a")
    model.set_active_adapters("a")
    assert torch.equal(model.bert.encoder.layer[0].attention.self.query.weight, weight)


@pytest.mark.parametrize("method", ["double_seq_bn", "lora", "ia3"])
def test_adapters_follow_model_dtype(method):
    model = tiny_model("llama").to(torch.bfloat16)
    model.add_adapter("a", config=method, set_active=True)
    randomize(model, "a")
    assert all(p.dtype == torch.bfloat16 for m in model.get_adapter("a").values() for x in m.values()
               for p in x.parameters())
    assert _hidden(model).dtype == torch.bfloat16


@pytest.mark.parametrize("method", METHODS)
def test_train_adapter_changes_only_that_adapter_and_its_head(method):
    model = tiny_model("bert")
    model.add_adapter("other", config="seq_bn")
    model.add_adapter("a", config=method)
    model.add_classification_head("a", num_labels=2)
    model.train_adapter("a")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-2)
    for _ in range(2):
        loss = model(**tiny_inputs(), labels=torch.tensor([0, 1, 1])).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed, "training changed nothing"
    assert all(".a." in k or k.startswith("heads.a.") for k in changed), sorted(changed)
