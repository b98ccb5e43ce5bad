"""DoRA, VeRA, DvoRA and MTL-LoRA: formulas against hand-written math, merge/reset, seeding, training,
save/load, leave_out, composition rules and parameter sharing, on every tiny architecture."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from adapterkit import (
    AdapterSetup,
    Average,
    BatchSplit,
    DoRAConfig,
    ForwardContext,
    MTLLoRAConfig,
    MultiTask,
    Parallel,
    Split,
    Stack,
    VeraConfig,
)
from adapterkit.configs import AdapterConfig, LoRAConfig
from adapterkit.methods.lora import VeRA
from tiny import ARCHS, randomize, tiny_inputs, tiny_model

VARIANTS = ["dora", "vera", "dvora", "mtl_lora"]
# every FFN projection too: shapes differ (VeRA's shared A/B are sized for the largest projection)
ALL_PROJECTIONS = "[intermediate_lora=True, output_lora=True, attn_matrices=['q','k','v']]"


def _hidden(model, **kwargs) -> torch.Tensor:
    with torch.no_grad():
        return model.base_model(**tiny_inputs(), **kwargs).last_hidden_state


def _config(variant: str, arch: str, extra: str = ALL_PROJECTIONS) -> str:
    if variant == "mtl_lora" and arch == "gpt2":  # no MTL-LoRA on a fused q/k/v projection
        return "mtl_lora[intermediate_lora=True, output_lora=True, selfattn_lora=False]"
    return variant + extra


def _call(proj: nn.Module, setup, x: torch.Tensor) -> torch.Tensor:
    """Run one projection on its own inside a forward context for ``setup``."""
    ctx = ForwardContext(setup)
    ctx.enter(owner=proj)
    try:
        with torch.no_grad():
            return proj(x)
    finally:
        ctx.exit(owner=proj)


def _randomized(arch: str, config: str, name: str = "a", seed: int = 1):
    model = tiny_model(arch)
    model.add_adapter(name, config=config)
    randomize(model, name, seed)
    return model


# ---- formulas ------------------------------------------------------------------------------
def test_dora_formula_rescales_output_bias_included_with_unscaled_norm():
    model = _randomized("bert", "dora[alpha=16]")  # s = 2: the norm uses B A, the update s B A
    proj = model.bert.encoder.layer[0].attention.self.query
    lora = proj.loras["a"]
    x = torch.randn(2, 5, 32)
    ba = lora.lora_B @ lora.lora_A
    m = lora.m.weight.view(-1)
    expected = m / torch.linalg.norm(proj.weight + ba, dim=1) * (x @ proj.weight.t() + proj.bias + 2 * x @ ba.t())
    torch.testing.assert_close(_call(proj, Stack("a"), x), expected)


def test_dora_magnitude_starts_at_the_row_norms_and_the_adapter_as_identity():
    model = tiny_model("llama")
    base = _hidden(model)
    model.add_adapter("a", config="dora", set_active=True)
    proj = model.model.layers[0].self_attn.v_proj  # GQA: 16 x 32
    assert proj.loras["a"].m.weight.shape == (16, 1)
    torch.testing.assert_close(proj.loras["a"].m.weight.view(-1), torch.linalg.norm(proj.weight, dim=1))
    torch.testing.assert_close(_hidden(model), base, atol=1e-5, rtol=0)


def test_vera_formula_with_shared_frozen_matrices_and_vectors():
    model = _randomized("llama", "vera[intermediate_lora=True]")  # q, v (32 -> 32, 16) and down_proj (37 -> 32)
    shared = model.model.shared_parameters["a"]
    assert shared["lora_A"].shape == (8, 37) and shared["lora_B"].shape == (32, 8)  # largest in / out
    assert not shared["lora_A"].requires_grad and not shared["lora_B"].requires_grad
    for proj, d_out in ((model.model.layers[0].self_attn.v_proj, 16), (model.model.layers[1].mlp.down_proj, 32)):
        vera = proj.loras["a"]
        d_in = proj.weight.shape[1]
        assert vera.vera_D.shape == (8,) and vera.vera_B.shape == (d_out,)
        a, b = shared["lora_A"][:, :d_in], shared["lora_B"][:d_out]
        dw = torch.diag(vera.vera_B) @ b @ torch.diag(vera.vera_D) @ a
        x = torch.randn(2, 4, d_in)
        torch.testing.assert_close(_call(proj, Stack("a"), x), x @ (proj.weight + dw).t())  # alpha / r = 1


def test_vera_starts_as_identity_and_shares_one_pair_of_matrices():
    model = tiny_model("bert")
    base = _hidden(model)
    model.add_adapter("a", config="vera", set_active=True)
    torch.testing.assert_close(_hidden(model), base, atol=0, rtol=0)  # vera_b = 0
    layers = model.bert.encoder.layer
    assert layers[0].attention.self.query.loras["a"].shared is layers[1].attention.self.value.loras["a"].shared
    assert not any(n.startswith("bert.shared_parameters") for n, _ in model.named_parameters() if "loras" in n)


def test_dvora_formula():
    model = _randomized("bert", "dvora")
    proj = model.bert.encoder.layer[1].attention.self.value
    vera = proj.loras["a"]
    a, b = vera.shared["lora_A"], vera.shared["lora_B"]
    dw = torch.diag(vera.vera_B) @ b @ torch.diag(vera.vera_D) @ a
    x = torch.randn(2, 5, 32)
    scale = vera.m.weight.view(-1) / torch.linalg.norm(proj.weight + dw, dim=1)
    torch.testing.assert_close(_call(proj, Stack("a"), x), scale * (x @ (proj.weight + dw).t() + proj.bias))


@pytest.mark.parametrize("kind", ["singular_values", "linear"])
def test_mtl_lora_formula(kind):
    model = tiny_model("bert")
    model.add_adapter("t", config=MTLLoRAConfig(n_up_projection=3, task_specific_matrix_type=kind, alpha=16))
    randomize(model, "t")
    proj = model.bert.encoder.layer[0].attention.self.query
    lora = proj.loras["t"]
    assert lora.lora_B.shape == (3, 32, 8) and lora.weights.shape == (3,)
    lam = torch.diag(lora.task_specific.values) if kind == "singular_values" else lora.task_specific.values
    p = torch.softmax(lora.weights / 0.05, dim=0)
    x = torch.randn(2, 5, 32)
    h = x @ lora.lora_A.t() @ lam
    delta = sum(p[k] * h @ lora.lora_B[k].t() for k in range(3))
    torch.testing.assert_close(_call(proj, Stack("t"), x), x @ proj.weight.t() + proj.bias + 2 * delta)


def test_mtl_lora_linear_task_matrix_starts_as_identity():
    model = tiny_model("bert")
    model.add_adapter("t", config=MTLLoRAConfig(task_specific_matrix_type="linear"))
    values = model.bert.encoder.layer[0].attention.self.query.loras["t"].task_specific.values
    assert torch.equal(values, torch.eye(8))


@pytest.mark.parametrize("variant", ["dora", "vera", "dvora"])
def test_fused_qkv_projection_leaves_k_untouched(variant):
    model = _randomized("gpt2", variant)  # q and v of c_attn (Conv1D: weight is in x out)
    proj = model.transformer.h[0].attn.c_attn
    x = torch.randn(2, 5, 32)
    base = x @ proj.weight + proj.bias
    out = _call(proj, Stack("a"), x)
    torch.testing.assert_close(out[..., 32:64], base[..., 32:64], atol=0, rtol=0)
    lora = proj.loras["a"]
    for i, m in enumerate(("q", "v")):  # each slice follows the single-projection formula
        rows = slice(64 * (m == "v"), 64 * (m == "v") + 32)
        w = proj.weight.t()[rows]
        if variant == "dora":
            dw = lora.lora_B[32 * i : 32 * i + 32] @ lora.lora_A[8 * i : 8 * i + 8]
        else:
            a, b = lora.shared["lora_A"], lora.shared["lora_B"]
            dw = torch.diag(lora.vera_B[32 * i : 32 * i + 32]) @ b @ torch.diag(lora.vera_D[8 * i : 8 * i + 8]) @ a
        expected = x @ (w + dw).t() + proj.bias[rows]
        if lora.is_dora:
            m_i = lora.m.weight.view(-1)[32 * i : 32 * i + 32]
            expected = m_i / torch.linalg.norm(w + dw, dim=1) * expected
        torch.testing.assert_close(out[..., rows], expected)


# ---- every architecture: merge, reset, save/load -------------------------------------------
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("arch", ARCHS)
def test_merge_equals_unmerged_and_reset_restores_exactly(arch, variant):
    model = tiny_model(arch)
    base = _hidden(model)
    original = {k: v.clone() for k, v in model.state_dict().items()}
    model.add_adapter("a", config=_config(variant, arch), set_active=True)
    randomize(model, "a")
    unmerged = _hidden(model)
    assert not torch.allclose(unmerged, base, atol=1e-4)
    model.merge_adapter("a")
    torch.testing.assert_close(_hidden(model), unmerged, atol=1e-5, rtol=1e-5)
    model.reset_adapter()
    state = model.state_dict()
    for key, value in original.items():
        assert torch.equal(state[key], value), key
    assert torch.equal(_hidden(model), unmerged)


@pytest.mark.parametrize("variant", VARIANTS)
def test_save_load_round_trip_keeps_keys_and_outputs(tmp_path, variant):
    model = _randomized("bert", variant + "[intermediate_lora=True]")
    model.set_active_adapters("a")
    expected = _hidden(model)
    model.save_adapter(tmp_path, "a")
    keys = set(model.state_dict())
    other = tiny_model("bert")
    info: dict = {}
    other.load_adapter(tmp_path, load_as="b", set_active=True, loading_info=info)
    assert info == {"missing_keys": [], "unexpected_keys": []}
    torch.testing.assert_close(_hidden(other), expected, atol=0, rtol=0)
    layer0 = "bert.encoder.layer.0.attention.self.query.loras.a"
    if variant in ("dora", "dvora"):
        assert f"{layer0}.m.weight" in keys
    if variant in ("vera", "dvora"):
        assert {f"{layer0}.vera_D", f"{layer0}.vera_B", "bert.shared_parameters.a.lora_A"} <= keys
        assert "bert.shared_parameters.b.lora_B" in other.state_dict()
    if variant == "mtl_lora":
        assert {f"{layer0}.task_specific.values", f"{layer0}.weights"} <= keys


def test_adapterhub_vera_matrices_load_as_vectors_or_dense(tmp_path):
    model = _randomized("bert", "vera")
    model.set_active_adapters("a")
    model.save_adapter(tmp_path, "a", use_safetensors=False)
    path = tmp_path / "pytorch_adapter.bin"
    weights = torch.load(path, weights_only=True)
    diagonal = {k: torch.diag(v) if k.endswith(("vera_D", "vera_B")) else v for k, v in weights.items()}
    torch.save(diagonal, path)  # AdapterHub's shapes, still diagonal: loads into vectors, same outputs
    other = tiny_model("bert")
    other.load_adapter(tmp_path, set_active=True)
    vera = other.bert.encoder.layer[0].attention.self.query.loras["a"]
    assert vera.vera_B.dim() == 1
    torch.testing.assert_close(_hidden(other), _hidden(model), atol=0, rtol=0)
    key = "bert.encoder.layer.0.attention.self.query.loras.a.vera_B"
    dense = dict(diagonal)
    dense[key] = diagonal[key] + 0.01 * torch.randn(32, 32)  # trained by AdapterHub: every entry
    torch.save(dense, path)
    other.load_adapter(tmp_path, set_active=True)
    vera = other.bert.encoder.layer[0].attention.self.query.loras["a"]
    assert vera.vera_B.shape == (32, 32) and vera.vera_D.dim() == 1
    torch.testing.assert_close(vera.vera_B, dense[key], atol=0, rtol=0)
    x = torch.randn(1, 3, 32)
    a, b = vera.shared["lora_A"], vera.shared["lora_B"]
    proj = other.bert.encoder.layer[0].attention.self.query
    expected = x @ (proj.weight + dense[key] @ b @ torch.diag(vera.vera_D) @ a).t() + proj.bias
    torch.testing.assert_close(_call(proj, Stack("a"), x), expected)


@pytest.mark.parametrize("variant", VARIANTS)
def test_init_weights_seed_gives_identical_weights(variant):
    config = AdapterConfig.load(variant).replace(init_weights_seed=3, init_weights="bert")
    twins = [tiny_model("bert", seed=s) for s in (0, 1)]
    for model in twins:
        for name in ("x", "y"):
            model.add_adapter(name, config=config)
    states = [
        {k.replace(".x.", ".?."): v for k, v in m.state_dict().items() if ".x." in k}
        | {k.replace(".y.", ".?.") + "#y": v for k, v in m.state_dict().items() if ".y." in k}
        for m in twins
    ]
    keys = [k for k in states[0] if not k.endswith("#y")]
    assert keys and states[0].keys() == states[1].keys()
    for key in keys:
        # across adapters, and across models (DoRA's magnitude follows each model's own weights)
        assert torch.equal(states[0][key], states[0][key + "#y"]), key
        if not key.endswith("m.weight"):
            assert torch.equal(states[0][key], states[1][key]), key


@pytest.mark.parametrize("variant", VARIANTS)
def test_train_adapter_changes_only_that_adapter_and_its_head(variant):
    model = tiny_model("bert")
    model.add_adapter("a", config=variant)
    model.add_adapter("b", config=variant)
    model.add_classification_head("a", num_labels=2)
    model.train_adapter("a")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".loras.a." in n or n.startswith("heads.a.") for n in trainable)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    for _ in range(2):
        loss = model(**tiny_inputs(), labels=torch.tensor([0, 1, 1])).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and all(".loras.a." in k or k.startswith("heads.a.") for k in changed)
    if variant in ("vera", "dvora"):
        assert any(k.endswith("vera_B") for k in changed)  # zero at start: its gradient is not


@pytest.mark.parametrize("variant", VARIANTS)
def test_leave_out(variant):
    model = tiny_model("llama")
    model.add_adapter("a", config=f"{variant}[leave_out=[0]]")
    assert set(model.get_adapter("a")) == {1}
    assert not any(".layers.0." in k and ".loras.a." in k for k in model.state_dict())


# ---- composition ---------------------------------------------------------------------------
def _dora_lora_model():
    model = tiny_model("bert")
    model.add_adapter("d", config="dora")
    model.add_adapter("l", config="lora")
    model.add_adapter("f", config="lora[selfattn_lora=False, intermediate_lora=True]")  # other projections
    model.add_adapter("d2", config="dvora")
    for i, name in enumerate(("d", "l", "f", "d2")):
        randomize(model, name, seed=i + 1)
    return model


@pytest.mark.parametrize(
    "setup",
    [
        Stack("l", "d"),
        Stack("d", "d2"),
        Stack("l", Average("d", "l")),
        Stack("l", BatchSplit("d", "l", batch_sizes=[2, 1])),
    ],
    ids=repr,
)
def test_dora_after_another_adapter_at_its_projection_is_refused(setup):
    model = _dora_lora_model()
    with pytest.raises(ValueError, match=r"DoRA adapter 'd2?' runs after adapter '(l|d)'.*first adapter"):
        model.set_active_adapters(setup)
    with pytest.raises(ValueError, match="DoRA"):
        model.base_model(**tiny_inputs(), adapter_names=[setup, None, None])


def test_dora_runs_first_and_later_adapters_act_on_its_output():
    model = _dora_lora_model()
    proj = model.bert.encoder.layer[0].attention.self.query
    l_ = proj.loras["l"]
    x = torch.randn(3, 5, 32)
    alone = _call(proj, Stack("d"), x)
    torch.testing.assert_close(_call(proj, Stack("d", "l"), x), alone + l_.delta(x))
    model.set_active_adapters(Stack("d", "l"))
    stacked = _hidden(model)
    model.merge_adapter("d")  # "as if it were merged"
    torch.testing.assert_close(_hidden(model), stacked, atol=1e-5, rtol=1e-5)
    model.set_active_adapters(Stack("f", "d"))  # f adapts other projections: no conflict
    model.set_active_adapters(Average("d", "l", weights=[0.25, 0.75]))
    base = x @ proj.weight.t() + proj.bias
    expected = base + 0.25 * (alone - base) + 0.75 * l_.delta(x)
    torch.testing.assert_close(_call(proj, model.active_adapters, x), expected)


def test_dora_at_forward_checks_order_and_merged_weights():
    model = _dora_lora_model()
    with AdapterSetup(Stack("l", "d")):  # checked when the forward opens its context
        with pytest.raises(ValueError, match="must be the first adapter"):
            _hidden(model)
    model.set_active_adapters("d")
    model.merge_adapter("l")
    with pytest.raises(RuntimeError, match="merged"):
        _hidden(model)


@pytest.mark.parametrize("variant", VARIANTS)
def test_row_blocks_equal_each_adapter_alone(variant):
    model = tiny_model("llama")
    for i, name in enumerate(("a", "b")):
        model.add_adapter(name, config=variant)
        randomize(model, name, seed=i + 1)
    alone = {}
    for name in ("a", "b"):
        model.set_active_adapters(name)
        alone[name] = _hidden(model)
    model.set_active_adapters(BatchSplit("a", "b", batch_sizes=[2, 1]))
    torch.testing.assert_close(_hidden(model), torch.cat([alone["a"][:2], alone["b"][2:]]), atol=1e-5, rtol=0)
    model.set_active_adapters(Parallel("a", "b"))
    torch.testing.assert_close(_hidden(model), torch.cat([alone["a"], alone["b"]]), atol=1e-5, rtol=0)
    model.set_active_adapters(MultiTask("a", "b"))
    mixed = _hidden(model, task_ids=torch.tensor([1, 0, 1]))
    torch.testing.assert_close(mixed, torch.stack([alone["b"][0], alone["a"][1], alone["b"][2]]), atol=1e-5, rtol=0)
    model.set_active_adapters(None)
    routed = _hidden(model, adapter_names=["b", "a", "b"])
    torch.testing.assert_close(routed, mixed, atol=1e-5, rtol=0)
    model.set_active_adapters(Split("a", "b", splits=[4, 5]))
    _hidden(model)  # runs


# ---- MTL-LoRA parameter sharing ------------------------------------------------------------
def test_share_and_unshare_parameters():
    model = tiny_model("bert")
    for name in ("t0", "t1", "t2"):
        model.add_adapter(name, config=MTLLoRAConfig(n_up_projection=2))
        randomize(model, name, seed=len(name) + ord(name[-1]))
    proj = model.bert.encoder.layer[0].attention.self.value
    t1_values = proj.loras["t1"].lora_A.detach().clone()
    model.share_parameters(MultiTask("t0", "t1"), reference_adapter_name="t1")
    assert proj.loras["t0"].lora_A is proj.loras["t1"].lora_A and proj.loras["t0"].lora_B is proj.loras["t1"].lora_B
    assert torch.equal(proj.loras["t0"].lora_A, t1_values)
    assert proj.loras["t0"].weights is not proj.loras["t1"].weights  # task-specific parts stay apart
    model.train_adapter(MultiTask("t0", "t1"))
    assert {n for n, p in model.named_parameters() if p.requires_grad} >= {
        "bert.encoder.layer.0.attention.self.value.loras.t0.lora_A"
    }
    with pytest.raises(ValueError, match="already shared"):
        model.share_parameters(["t0", "t1"])
    model.unshare_parameters("t0,t1")
    assert proj.loras["t0"].lora_A is not proj.loras["t1"].lora_A
    assert torch.equal(proj.loras["t0"].lora_A, proj.loras["t1"].lora_A)
    with pytest.raises(ValueError, match="no parameters are shared"):
        model.unshare_parameters(["t0", "t1"])


def test_share_parameters_refusals():
    model = tiny_model("bert")
    model.add_adapter("t0", config="mtl_lora")
    model.add_adapter("t1", config="mtl_lora[r=4]")
    model.add_adapter("l", config="lora")
    with pytest.raises(TypeError, match="MultiTaskConfig"):
        model.share_parameters(["t0", "l"])
    with pytest.raises(ValueError, match="equal r"):
        model.share_parameters(["t0", "t1"])
    with pytest.raises(ValueError, match="reference adapter 'x'"):
        model.share_parameters(["t0", "t1"], reference_adapter_name="x")
    with pytest.raises(ValueError, match="no adapter named 'zz'"):
        model.share_parameters(["t0", "zz"])


# ---- configs -------------------------------------------------------------------------------
def test_preset_defaults_match_adapterhub():
    assert VeraConfig().to_dict() == LoRAConfig(vera_d=0.1, vera_b=0.0, init_weights="vera").to_dict()
    assert DoRAConfig().use_dora and DoRAConfig().init_weights == "lora"
    dvora = AdapterConfig.load("dvora")
    assert (dvora.use_dora, dvora.vera_d, dvora.vera_b, dvora.init_weights, dvora.alpha) == (True, 0.1, 0.0, "vera", 8)
    mtl = AdapterConfig.load("mtl_lora").to_dict()
    assert mtl["architecture"] == "mtl_lora"
    assert (mtl["n_up_projection"], mtl["task_specific_matrix_type"], mtl["weights_sharpness"]) == (
        1,
        "singular_values",
        0.05,
    )
    assert type(AdapterConfig.load(mtl)) is MTLLoRAConfig


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"vera_d": 0.1}, "VeRA needs both"),
        ({"vera_d": "big", "vera_b": 0.0}, "vera_d='big'"),
        ({"use_dora": True, "composition_mode": "scale", "r": 1}, "composition_mode='add'"),
        ({"use_dora": "yes"}, "use_dora='yes'"),
    ],
)
def test_lora_config_refusals(changes, match):
    with pytest.raises(ValueError, match=match):
        LoRAConfig(**changes)


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"n_up_projection": 0}, "n_up_projection=0"),
        ({"task_specific_matrix_type": "full"}, "task_specific_matrix_type='full'"),
        ({"weights_sharpness": 0}, "weights_sharpness=0"),
        ({"use_dora": True}, "MTL-LoRA takes plain LoRA"),
    ],
)
def test_mtl_config_refusals(changes, match):
    with pytest.raises(ValueError, match=match):
        MTLLoRAConfig(**changes)


def test_mtl_lora_on_fused_projection_is_refused_and_leaves_the_model_unchanged():
    model = tiny_model("gpt2")
    keys = set(model.state_dict())
    with pytest.raises(ValueError, match="fused q/k/v"):
        model.add_adapter("t", config="mtl_lora")
    assert set(model.state_dict()) == keys and "t" not in model.adapters_config


def test_vera_module_requires_shared_matrices():
    with pytest.raises(ValueError, match="shared"):
        VeRA(4, 4, None, VeraConfig(), None)


@pytest.mark.parametrize("variant", VARIANTS)
def test_variants_follow_model_dtype(variant):
    model = tiny_model("llama").to(torch.bfloat16)
    model.add_adapter("a", config=variant, set_active=True)
    randomize(model, "a")
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    out = _hidden(model)
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    model.merge_adapter("a")
    torch.testing.assert_close(_hidden(model), out, atol=0.1, rtol=0.05)


def test_delete_restores_the_base_model():
    model = tiny_model("gpt2")
    base = _hidden(model)
    keys = set(model.state_dict())
    for i, variant in enumerate(("dvora", "vera", "dora")):
        model.add_adapter(f"a{i}", config=variant)
        randomize(model, f"a{i}")
    model.set_active_adapters(BatchSplit("a0", "a1", "a2", batch_sizes=[1, 1, 1]))
    assert not torch.allclose(_hidden(model), base)
    for i in range(3):
        model.delete_adapter(f"a{i}")
    assert set(model.state_dict()) == keys and not hasattr(model.transformer, "shared_parameters")
    assert torch.equal(_hidden(model), base)
