"""average_adapter / average_head (AdapterHub's task arithmetic) and config unions on several architectures."""

from __future__ import annotations

import pytest
import torch

from adapterkit import ConfigUnion, LoRAConfig, MAMConfig, PrefixTuningConfig, SeqBnConfig, UniPELTConfig
from adapterkit.composition import Fuse, Split
from tiny import ARCHS, randomize, tiny_inputs, tiny_model


def _params(model, name):
    return {k: v.detach().clone() for k, v in model.named_parameters() if f".{name}." in f".{k}."}


def _renamed(params, old, new):
    return {k.replace(f".{old}.", f".{new}."): v for k, v in params.items()}


def _out(model, inputs, name):
    model.set_active_adapters(name)
    with torch.no_grad():
        return model.base_model(**inputs).last_hidden_state


WEIGHTS = [-0.2, 0.9, 0.3]  # AdapterHub's test weights (sum 1)


@pytest.mark.parametrize(
    "config",
    [
        *("seq_bn", "double_seq_bn", "compacter[reduction_factor=4]", "seq_bn_inv"),
        *("lora", "ia3", "vera", "dora", "prefix_tuning", "prompt_tuning", "loreft", "mam", "unipelt"),
    ],
)
def test_linear_average_is_the_weighted_sum(config):
    model = tiny_model("bert")
    names = ["a0", "a1", "a2"]
    for i, name in enumerate(names):
        model.add_adapter(name, config)
        randomize(model, name, seed=i + 1)
    model.average_adapter("avg", names, weights=WEIGHTS)
    averaged = _params(model, "avg")
    assert averaged
    sources = [_renamed(_params(model, n), n, "avg") for n in names]
    assert all(set(s) == set(averaged) for s in sources)
    for key, value in averaged.items():
        torch.testing.assert_close(value, sum(w * s[key] for w, s in zip(WEIGHTS, sources, strict=True)))


def test_weights_equal_default_normalisation_and_dict():
    model = tiny_model("bert")
    for i, name in enumerate(["a", "b"]):
        model.add_adapter(name, "lora")
        randomize(model, name, seed=i + 1)
    model.average_adapter("eq", ["a", "b"])
    model.average_adapter("norm", ["a", "b"], weights=[1.0, 3.0])
    model.average_adapter("raw", {"a": 1.0, "b": 3.0}, normalize_weights=False)
    a, b = _params(model, "a"), _renamed(_params(model, "b"), "b", "a")
    for key in a:
        for new, (wa, wb) in (("eq", (0.5, 0.5)), ("norm", (0.25, 0.75)), ("raw", (1.0, 3.0))):
            got = _params(model, new)[key.replace(".a.", f".{new}.")]
            torch.testing.assert_close(got, wa * a[key] + wb * b[key])


def test_errors_name_the_adapters_and_leave_the_model_unchanged():
    model = tiny_model("bert")
    model.add_adapter("a", "lora")
    model.add_adapter("b", "lora[r=4]")
    model.add_adapter("c", "seq_bn")
    with pytest.raises(ValueError, match="'a' and 'b'"):
        model.average_adapter("x", ["a", "b"])
    with pytest.raises(ValueError, match="no adapter named 'zz'"):
        model.average_adapter("x", ["a", "zz"])
    with pytest.raises(ValueError, match="not known"):
        model.average_adapter("x", ["a"], combine_strategy="ties")
    with pytest.raises(ValueError, match="not supported for bottleneck"):
        model.average_adapter("x", ["c"], combine_strategy="lora_linear_only_negate_b")
    with pytest.raises(ValueError, match="needs svd_rank"):
        model.average_adapter("x", ["a"], combine_strategy="lora_delta_w_svd")
    with pytest.raises(ValueError, match="exists already"):
        model.average_adapter("c", ["a"])
    assert "x" not in model.adapters_config
    model.average_adapter("c", ["a"], overwrite_ok=True, set_active=True)
    assert model.adapters_config.get("c") == LoRAConfig()
    assert model.active_adapters.flatten() == {"c"}


def test_dropout_differences_are_ignored():
    model = tiny_model("bert")
    model.add_adapter("a", "lora[dropout=0.1]")
    model.add_adapter("b", "lora")
    model.average_adapter("x", ["a", "b"])
    assert model.adapters_config.get("x")["dropout"] == 0.1


def test_lora_linear_only_negate_b():
    model = tiny_model("bert")
    for i, name in enumerate(["a", "b"]):
        model.add_adapter(name, "lora")
        randomize(model, name, seed=i + 1)
    model.average_adapter("n", ["a", "b"], weights=[-0.5, 1.5], combine_strategy="lora_linear_only_negate_b")
    a, b, n = _params(model, "a"), _renamed(_params(model, "b"), "b", "a"), _params(model, "n")
    for key in a:
        expected = (0.5 if key.endswith("lora_A") else -0.5) * a[key] + 1.5 * b[key]
        torch.testing.assert_close(n[key.replace(".a.", ".n.")], expected)


def _delta_weights(model, name):
    return {
        (idx, loc): m.delta_weight()
        for idx, per in model.get_adapter(name).items()
        for loc, mods in per.items()
        for m in (mods if isinstance(mods, torch.nn.ModuleList) else [mods])
    }


@pytest.mark.parametrize("arch", ["bert", "gpt2"])  # gpt2: fused c_attn (per q/k/v group SVD)
def test_lora_delta_w_svd(arch):
    model = tiny_model(arch)
    for i, name in enumerate(["a", "b"]):
        model.add_adapter(name, "lora[r=4, alpha=8]")
        randomize(model, name, seed=i + 1)
    # full rank of the sum: exact; the new adapter's scaling alpha / svd_rank is accounted for
    model.average_adapter("s", ["a", "b"], weights=[0.3, 0.7], combine_strategy="lora_delta_w_svd", svd_rank=8)
    assert model.adapters_config.get("s").r == 8
    da, db, ds = (_delta_weights(model, n) for n in ("a", "b", "s"))
    for key in ds:
        torch.testing.assert_close(ds[key], 0.3 * da[key] + 0.7 * db[key], atol=1e-5, rtol=1e-4)
    # rank 1: the best rank-1 approximation of the weighted sum
    model.average_adapter("s1", ["a", "b"], weights=[0.3, 0.7], combine_strategy="lora_delta_w_svd", svd_rank=1)
    for key, value in _delta_weights(model, "s1").items():
        target = 0.3 * da[key] + 0.7 * db[key]
        for block, expected in zip(value.detach().split(32), target.detach().split(32), strict=True):  # q/k/v groups
            if not expected.any():
                continue  # a fused group the adapter does not cover (gpt2's k)
            assert torch.linalg.matrix_rank(block) == 1
            u, sv, vh = torch.linalg.svd(expected)
            torch.testing.assert_close(block, sv[0] * torch.outer(u[:, 0], vh[0]), atol=1e-5, rtol=1e-4)


def test_vera_and_unions_average_linearly_only():
    model = tiny_model("bert")
    model.add_adapter("v", "vera")
    model.add_adapter("u", "unipelt")
    with pytest.raises(ValueError, match="linear"):
        model.average_adapter("x", ["v"], combine_strategy="lora_linear_only_negate_b")
    with pytest.raises(ValueError, match="not supported for union"):
        model.average_adapter("x", ["u"], combine_strategy="lora_delta_w_svd", svd_rank=2)
    assert "x" not in model.adapters_config


def test_average_head():
    model = tiny_model("bert")
    model.add_classification_head("h1", num_labels=3)
    model.add_classification_head("h2", num_labels=3)
    model.add_classification_head("h3", num_labels=2)
    with torch.no_grad():
        for p in model.heads["h2"].parameters():
            p.add_(1.0)
    model.average_head("avg", ["h1", "h2"], weights=[1.0, 3.0], set_active=True)
    assert model.active_head == "avg"
    h1, h2, avg = (model.heads[n].state_dict() for n in ("h1", "h2", "avg"))
    for key in h1:
        torch.testing.assert_close(avg[key], 0.25 * h1[key] + 0.75 * h2[key])
    with pytest.raises(ValueError, match="'h1' .* and 'h3'"):
        model.average_head("bad", ["h1", "h3"])
    with pytest.raises(ValueError, match="exists already"):
        model.average_head("avg", ["h1"])
    inputs = tiny_inputs()
    with torch.no_grad():
        assert model(**inputs).logits.shape == (3, 3)


# ---- unions on several architectures ---------------------------------------------------------------------------
UNION = "lora[r=4]|seq_bn[reduction_factor=4]|prefix_tuning[prefix_length=3, bottleneck_size=8]"


@pytest.mark.parametrize("arch", ARCHS)
def test_union_add_forward_train_save_load_delete(arch, tmp_path):
    model = tiny_model(arch)
    inputs = tiny_inputs()
    with torch.no_grad():
        base = model.base_model(**inputs).last_hidden_state
    model.add_adapter("u", UNION)
    model.add_adapter("other", "seq_bn")
    randomize(model, "u")
    assert isinstance(model.adapters_config.get("u"), ConfigUnion)
    out = _out(model, inputs, "u")
    assert not torch.allclose(out, base)
    summary = {row["name"]: row for row in model.adapter_summary(as_dict=True)}
    assert summary["u"]["architecture"] == "union" and summary["u"]["#param"] == sum(
        p.numel() for p in _params(model, "u").values()
    )
    # a training step changes exactly the union's parameters
    model.train_adapter("u")
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    trainable = {k for k, v in model.named_parameters() if v.requires_grad}
    assert trainable and all(".u." in k or k.startswith("heads.") for k in trainable)
    assert any("lora" in k for k in trainable) and any("prefix" in k for k in trainable)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model.base_model(**inputs).last_hidden_state.pow(2).mean().backward()
    opt.step()
    changed = {k for k, v in model.named_parameters() if not torch.equal(v, before[k])}
    assert changed and all(".u." in k for k in changed)
    model.eval()
    out = _out(model, inputs, "u")
    # one adapter_config.json, one weights file with every part's keys
    model.save_adapter(tmp_path / "u", "u", with_head=False)
    twin = tiny_model(arch)
    info: dict = {}
    assert twin.load_adapter(tmp_path / "u", loading_info=info) == "u"
    assert info == {"missing_keys": [], "unexpected_keys": []}
    assert twin.adapters_config.get("u") == model.adapters_config.get("u")
    torch.testing.assert_close(_out(twin, inputs, "u"), out)
    twin.delete_adapter("u")
    assert not _params(twin, "u") and twin.get_adapter("u") == {}
    twin.set_active_adapters(None)
    with torch.no_grad():
        torch.testing.assert_close(twin.base_model(**inputs).last_hidden_state, base)


def test_union_composition_rules_leave_out_and_merge():
    model = tiny_model("bert")
    model.add_adapter("m", MAMConfig(PrefixTuningConfig(bottleneck_size=8)))
    model.add_adapter("b", "seq_bn")
    with pytest.raises(ValueError, match="'m' \\(union\\) cannot run inside Split"):
        model.set_active_adapters(Split("m", "b", splits=4))
    with pytest.raises(ValueError, match="cannot fuse adapter 'm'"):
        model.add_adapter_fusion(Fuse("m", "b"))
    # leave_out per part; two LoRA parts at disjoint layers
    model.add_adapter("l", ConfigUnion(LoRAConfig(leave_out=[1]), LoRAConfig(r=2, leave_out=[0]), SeqBnConfig()))
    modules = model.get_adapter("l")
    assert modules[0]["selfattn_lora"][0].lora_A.shape[0] == 8 and modules[1]["selfattn_lora"][0].lora_A.shape[0] == 2
    with pytest.raises(ValueError, match="conflict for adapter 'c'"):
        model.add_adapter("c", ConfigUnion(LoRAConfig(leave_out=[1]), LoRAConfig(r=2, leave_out=[1])))
    assert "c" not in model.adapters_config and not _params(model, "c")
    with pytest.raises(ValueError, match="one config per adapter"):
        model.add_adapter("p", ConfigUnion(PrefixTuningConfig(leave_out=[0]), PrefixTuningConfig(leave_out=[1])))
    # merging folds the LoRA part only; the bottleneck part keeps running
    randomize(model, "l")
    inputs = tiny_inputs()
    out = _out(model, inputs, "l")
    model.merge_adapter("l")
    with torch.no_grad():
        torch.testing.assert_close(model.base_model(**inputs).last_hidden_state, out, atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="cannot be merged"):
        model.merge_adapter("m")


def test_unipelt_gating_scores_and_full_model_reload(tmp_path):
    model = tiny_model("bert")
    model.add_adapter("u", UniPELTConfig(PrefixTuningConfig(prefix_length=3, bottleneck_size=8)), set_active=True)
    randomize(model, "u")
    inputs = tiny_inputs()
    with torch.no_grad():
        out = model.base_model(**inputs, output_adapter_gating_scores=True)
    locations = {loc for per in out.adapter_gating_scores["u"].values() for loc in per}
    assert locations == {"self_prefix", "output_adapter", "selfattn_lora"}
    model.save_pretrained(tmp_path)
    from adapterkit import AutoAdapterModel

    again = AutoAdapterModel.from_pretrained(tmp_path, attn_implementation="eager").eval()
    assert again.adapters_config.get("u") == model.adapters_config.get("u")
    torch.testing.assert_close(_out(again, inputs, "u"), out.last_hidden_state)
