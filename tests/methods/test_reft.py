"""ReFT (LoReFT, NoReFT, DiReFT): positions from the attention mask, the unit formula, every architecture,
composition (rows are independent), persistence with ``subtract_projection``, training, generation."""

from __future__ import annotations

import pytest
import torch

from adapterkit import (
    AdapterSetup,
    AutoAdapterModel,
    Average,
    BatchSplit,
    DiReftConfig,
    Fuse,
    LoReftConfig,
    MultiTask,
    NoReftConfig,
    Parallel,
    ReftConfig,
    Split,
    Stack,
)
from adapterkit.configs import AdapterConfig, config_hash
from adapterkit.context import ForwardContext
from adapterkit.methods.reft import Positions, ReftUnit
from tiny import ARCHS, DECODERS, tiny_config, tiny_inputs, tiny_model

B, T = 4, 9


def _hidden(model, **kwargs) -> torch.Tensor:
    with torch.no_grad():
        return model.base_model(**tiny_inputs(batch=B, seq=T), **kwargs).last_hidden_state


def randomize(model, name: str, seed: int = 1) -> None:
    """Random weights for adapter ``name``. LoReFT's ``original`` only gets noise above its diagonal: torch's
    orthogonal parametrization reads just the int() of the diagonal (-1), so |noise| < 1 there would zero R."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for per_layer in model.get_adapter(name).values():
            for module in per_layer.values():
                for param_name, p in module.named_parameters():
                    noise = torch.randn(p.shape, generator=g) * 0.3
                    if param_name.endswith("parametrizations.weight.original"):
                        noise = noise.triu(1)
                    p.add_(noise)


def _close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=0)


# ---- config -------------------------------------------------------------------------------------------
def test_presets_aliases_and_saved_subtract_projection():
    assert AdapterConfig.load("loreft") == LoReftConfig()
    assert LoReftConfig().orthogonality and not NoReftConfig().orthogonality
    assert DiReftConfig().subtract_projection is False and NoReftConfig().subtract_projection is True
    saved = DiReftConfig().to_dict()
    assert saved["architecture"] == "reft" and saved["subtract_projection"] is False
    reloaded = AdapterConfig.load(saved)
    assert type(reloaded) is ReftConfig and reloaded == DiReftConfig()
    assert config_hash(DiReftConfig(r=2)) != config_hash(NoReftConfig(r=2))  # distinct entries in config_map
    assert AdapterConfig.load("direft[r=4, tied_weights=True]") == DiReftConfig(r=4, tied_weights=True)


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"layers": "some"}, "layers='some'"),
        ({"prefix_positions": -1}, "prefix_positions=-1"),
        ({"prefix_positions": 0, "suffix_positions": 0}, "intervene nowhere"),
        ({"r": 0}, "r=0"),
        ({"dropout": 1.5}, "dropout=1.5"),
        ({"dtype": "int8"}, "dtype='int8'"),
        ({"output_reft": False}, "output_reft=False"),
    ],
)
def test_invalid_values_name_key_and_value(changes, match):
    with pytest.raises(ValueError, match=match):
        LoReftConfig(**changes)


def test_adapterhub_file_without_subtract_projection_loads_as_adapterhub_reloads_it(caplog):
    data = {k: v for k, v in DiReftConfig().to_dict().items() if k not in ("subtract_projection", "leave_out")}
    config = AdapterConfig.load(data)
    assert config.subtract_projection is True and "subtract_projection" in caplog.text


# ---- positions and unit --------------------------------------------------------------------------------
def _targets(mask: list[list[int]], prefix: int, suffix: int, tokens: int | None = None):
    ctx = ForwardContext(None)
    ctx.attention_mask = torch.tensor(mask)
    tokens = tokens or len(mask[0])
    positions = Positions.for_forward(ctx, torch.zeros(len(mask), tokens, 1))
    index, valid = positions.targets(prefix, suffix, tokens)
    return [[i for i, ok in zip(r, v, strict=True) if ok] for r, v in zip(index.tolist(), valid.tolist(), strict=True)]


def test_positions_follow_the_real_tokens():
    right = [[1] * 9, [1] * 7 + [0] * 2, [1] * 5 + [0] * 4]
    assert _targets(right, 3, 0) == [[0, 1, 2]] * 3
    # suffix = last real tokens; the overlap (row 2, position 1) is left to the suffix unit
    assert _targets(right, 2, 4) == [[0, 1, 5, 6, 7, 8], [0, 1, 3, 4, 5, 6], [0, 1, 2, 3, 4]]
    left = [[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]]
    assert _targets(left, 2, 1) == [[2, 3, 5], [0, 1, 5]]
    # fewer real tokens than positions: only real tokens are intervened on
    assert _targets([[1, 1, 0, 0]], 3, 0) == [[0, 1]]
    assert _targets([[1, 1, 0, 0]], 0, 3) == [[0, 1]]
    # with a KV cache the hidden states are the last tokens of the mask
    assert _targets([[1, 1, 1, 1, 1]], 0, 2, tokens=1) == [[0]]
    assert _targets([[1, 1, 1, 1, 1]], 3, 0, tokens=1) == [[]]


def test_unit_formula_and_orthogonal_projection():
    torch.manual_seed(0)
    for config in (
        LoReftConfig(r=3, dropout=0.0),
        NoReftConfig(r=2, non_linearity="tanh", dropout=0.0),
        DiReftConfig(),
    ):
        unit = ReftUnit(32, config, None).eval()
        h = torch.randn(2, 5, 32)
        w, b, r = unit.learned_source.weight, unit.learned_source.bias, unit.projection.weight
        act = torch.tanh if config.non_linearity == "tanh" else (lambda x: x)
        source = act(h @ w.t() + b) - (h @ r.t() if config.subtract_projection else 0)
        torch.testing.assert_close(unit(h), h + source @ r)
        if config.orthogonality:
            torch.testing.assert_close(r @ r.t(), torch.eye(config.r), atol=1e-5, rtol=0)


# ---- every architecture -------------------------------------------------------------------------------
@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("arch", ARCHS)
def test_forward_activation_and_delete(arch, attn):
    model = tiny_model(arch, attn)
    base = _hidden(model)
    model.add_adapter("a", config="loreft[prefix_positions=2, suffix_positions=2]")
    randomize(model, "a")
    assert set(model.get_adapter("a")) == {0, 1} and set(model.get_adapter("a")[0]) == {"output_reft"}
    assert torch.equal(_hidden(model), base)
    with AdapterSetup("a"):
        in_context = _hidden(model)
    model.set_active_adapters("a")
    active = _hidden(model)
    assert torch.equal(in_context, active)
    changed = (active - base).abs().amax(-1) > 1e-4  # (B, T): which positions moved
    assert changed[:, :2].all() and not torch.allclose(active, base, atol=1e-4)
    model.delete_adapter("a")
    assert torch.equal(_hidden(model), base)
    assert not any(hasattr(layer, "reft_layer") for layer in model._adapter_target.layers)
    guards = {id(model.base_model), *map(id, model._adapter_target.layers)}
    assert not [
        m for m in model.base_model.modules() if (m._forward_hooks or m._forward_pre_hooks) and id(m) not in guards
    ]


def test_only_chosen_positions_change_in_the_first_layer_output():
    model = tiny_model("bert")
    model.add_adapter("a", config=NoReftConfig(layers=[0], prefix_positions=1, suffix_positions=1, dropout=0.0))
    randomize(model, "a")
    outputs = []
    model._adapter_target.layers[0].register_forward_hook(lambda m, a, o: outputs.append(o))
    mask = tiny_inputs(batch=B, seq=T)["attention_mask"]
    _hidden(model)
    model.set_active_adapters("a")
    _hidden(model)
    moved = (outputs[1] - outputs[0]).abs().amax(-1) > 0
    last = mask.sum(1) - 1
    expected = torch.zeros(B, T, dtype=torch.bool)
    expected[:, 0] = True
    expected[torch.arange(B), last] = True
    assert torch.equal(moved, expected)


def test_layers_leave_out_and_unknown_layers():
    model = tiny_model("llama")
    model.add_adapter("a", config="noreft[layers=[1]]")
    model.add_adapter("b", config="noreft[leave_out=[0]]")
    assert set(model.get_adapter("a")) == {1} == set(model.get_adapter("b"))
    assert not hasattr(model._adapter_target.layers[0], "reft_layer")
    with pytest.raises(ValueError, match=r"layers=\[5\] names layers this model does not have"):
        model.add_adapter("c", config="noreft[layers=[5]]")
    assert "c" not in model.adapters_config


# ---- composition ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ["bert", "gpt2", "llama"])
def test_blocks_equal_running_adapters_alone(arch):
    model = tiny_model(arch)
    model.add_adapter("a", config="loreft[prefix_positions=2, suffix_positions=1]")
    model.add_adapter("b", config="direft[r=2]")
    randomize(model, "a", seed=10)
    randomize(model, "b", seed=11)
    model.set_active_adapters(None)
    base = _hidden(model)
    model.set_active_adapters("a")
    a = _hidden(model)
    model.set_active_adapters("b")
    b = _hidden(model)

    model.set_active_adapters(Stack("a", "b"))
    stacked = _hidden(model)
    assert not torch.allclose(stacked, a, atol=1e-4) and not torch.allclose(stacked, b, atol=1e-4)
    model.set_active_adapters(Parallel("a", "b", None))
    parallel = _hidden(model)
    _close(parallel, torch.cat([a, b, base]))
    model.set_active_adapters(BatchSplit("b", None, "a", batch_sizes=[1, 1, 2]))
    _close(_hidden(model), torch.cat([b[:1], base[1:2], a[2:]]))
    per_row = ["b", "a", None, "b"]
    expected = torch.stack([{"a": a, "b": b, None: base}[t][i] for i, t in enumerate(per_row)])
    model.set_active_adapters(MultiTask("a", "b", None))
    _close(_hidden(model, task_ids=per_row), expected)
    model.set_active_adapters(None)
    _close(_hidden(model, adapter_names=per_row), expected)
    model.set_active_adapters(Average("a", "b", weights=[1.0, 0.0]))
    _close(_hidden(model), a)
    for block in (Split("a", "b", splits=[4, 5]), Fuse("a", "b")):
        with pytest.raises(ValueError, match=rf"adapter 'a' \(reft\) cannot run inside {type(block).__name__}"):
            model.set_active_adapters(block)


def test_average_weights_the_interventions():
    """In BERT the last layer's output is the model output, so an Average there is visible as it is."""
    model = tiny_model("bert")
    model.add_adapter("a", config="noreft[layers=[1], suffix_positions=2]")
    model.add_adapter("b", config="direft[layers=[1]]")
    randomize(model, "a", seed=3)
    randomize(model, "b", seed=4)
    outputs = {}
    for setup in (None, "a", "b", Average("a", "b", weights=[0.25, 0.75])):
        model.set_active_adapters(setup)
        outputs[str(setup)] = _hidden(model)
    base, a, b = outputs["None"], outputs["a"], outputs["b"]
    _close(outputs[str(Average("a", "b", weights=[0.25, 0.75]))], base + 0.25 * (a - base) + 0.75 * (b - base))


# ---- persistence, seeds, training ------------------------------------------------------------------------
@pytest.mark.parametrize("config", ["loreft", "direft[tied_weights=True, suffix_positions=2]"])
def test_save_load_round_trip(tmp_path, config):
    model = tiny_model("bert")
    model.add_adapter("a", config=config)
    model.add_classification_head("a", num_labels=3)
    randomize(model, "a")
    model.set_active_adapters("a")
    expected = _hidden(model)
    for use_safetensors in (True, False):
        model.save_adapter(tmp_path / str(use_safetensors), "a", use_safetensors=use_safetensors)
        other = tiny_model("bert")
        info: dict = {}
        other.load_adapter(tmp_path / str(use_safetensors), load_as="b", set_active=True, loading_info=info)
        assert info == {"missing_keys": [], "unexpected_keys": []}
        assert other.adapters_config.get("b") == model.adapters_config.get("a")
        _close(_hidden(other), expected)
    model.save_pretrained(tmp_path / "full")
    full = AutoAdapterModel.from_pretrained(tmp_path / "full").eval()
    full.set_active_adapters("a")
    _close(_hidden(full), expected)


def test_saved_keys_are_adapterhubs(tmp_path):
    model = tiny_model("bert")
    model.add_adapter("a", config="loreft")
    keys = [k for k in model.state_dict() if ".refts.a." in k]
    assert "bert.encoder.layer.0.reft_layer.refts.a.units.0.learned_source.weight" in keys
    assert "bert.encoder.layer.0.reft_layer.refts.a.units.1.projection.parametrizations.weight.original" in keys
    assert "bert.encoder.layer.1.reft_layer.refts.a.units.0.projection.parametrizations.weight.0.base" in keys


def test_init_weights_seed_and_load_leave_out(tmp_path):
    model = tiny_model("gpt2")
    model.add_adapter("a", config="loreft[init_weights_seed=3]")
    model.add_adapter("b", config="loreft[init_weights_seed=3]")
    sa = {k.replace(".a.", "."): v for k, v in model.state_dict().items() if ".refts.a." in k}
    sb = {k.replace(".b.", "."): v for k, v in model.state_dict().items() if ".refts.b." in k}
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    model.save_adapter(tmp_path, "a")
    other = tiny_model("gpt2")
    other.load_adapter(tmp_path, leave_out=[0])
    assert set(other.get_adapter("a")) == {1} and other.adapters_config.get("a").leave_out == [0]


def test_train_adapter_trains_only_the_intervention_and_its_head():
    model = tiny_model("llama")
    model.add_adapter("a", config="loreft[suffix_positions=1]")
    model.add_adapter("other", config="noreft")
    model.add_causal_lm_head("a")
    model.train_adapter("a")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".refts.a." in n or n.startswith("heads.a.") for n in trainable)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    inputs = tiny_inputs(batch=B, seq=T)
    loss = model(**inputs, labels=inputs["input_ids"]).loss
    loss.backward()
    optimizer.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert any(".refts.a.units.0.projection" in n for n in changed) and any(n.startswith("heads.a.") for n in changed)
    assert changed <= trainable


@pytest.mark.parametrize("arch", DECODERS[:2])
def test_generate_with_and_without_cache_agree(arch):
    """Prefix positions lie in the prompt, so a KV cache changes nothing: the generated tokens are the same."""
    torch.manual_seed(0)
    model = AutoAdapterModel.from_config(tiny_config(arch)).eval()
    model.add_adapter("a", config="loreft[prefix_positions=2]")
    model.add_causal_lm_head("a")
    randomize(model, "a")
    model.set_active_adapters("a")
    ids = tiny_inputs(batch=2, seq=6)["input_ids"].clamp(min=3)
    full = torch.ones_like(ids)
    left_padded = full.clone()
    left_padded[1, :2] = 0  # generate() keeps a mask with padding, and leaves out an all-ones one
    for mask in (full, left_padded):
        runs = [
            model.generate(
                input_ids=ids * mask,
                attention_mask=mask,
                max_new_tokens=4,
                do_sample=False,
                use_cache=cache,
                pad_token_id=0,
            )
            for cache in (True, False)
        ]
        assert torch.equal(runs[0], runs[1])


def test_half_precision_orthogonal_projection_stays_float32(caplog):
    model = tiny_model("bert")
    model.add_adapter("a", config="loreft[dtype='bfloat16']")
    unit = model.get_adapter("a")[0]["output_reft"].units[0]
    assert unit.learned_source.weight.dtype == torch.bfloat16
    assert unit.projection.weight.dtype == torch.float32 and "float32" in caplog.text
    model.set_active_adapters("a")
    assert _hidden(model).dtype == torch.float32


def test_activation_checkpointing_gives_the_same_gradients():
    """The recomputed layers intervene at the same positions, with the same dropout masks."""
    grads = []
    for checkpointing in (False, True):
        model = tiny_model("llama")
        model.add_adapter("a", config="loreft[suffix_positions=2]")
        randomize(model, "a")
        model.train_adapter("a")
        if checkpointing:
            model.activation_checkpointing_enable()
        torch.manual_seed(0)
        model.base_model(**tiny_inputs(batch=B, seq=T)).last_hidden_state.pow(2).sum().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad})
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], atol=1e-5, rtol=1e-4)
