"""`AdapterDropCallback`: the sampling rule, what runs in a training step, restoring for evaluation."""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from transformers import BertConfig, TrainerCallback, TrainingArguments

import adapterkit
from adapterkit import AutoAdapterModel
from adapterkit.callbacks import AdapterDropCallback
from adapterkit.training import AdapterTrainer

LAYERS = 4


def _model(seed: int = 0):
    """Tiny 4-layer BertAdapterModel training seq_bn adapter "task" with its classification head."""
    torch.manual_seed(seed)
    config = BertConfig(
        hidden_size=32,
        num_hidden_layers=LAYERS,
        num_attention_heads=4,
        intermediate_size=37,
        vocab_size=99,
        max_position_embeddings=64,
        pad_token_id=0,
    )
    model = AutoAdapterModel.from_config(config)
    model.add_adapter("task", config="seq_bn")
    model.add_classification_head("task", num_labels=2)
    model.train_adapter("task")
    return model


def _data(n: int, seq: int = 8, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 99, (n, seq), generator=g)
    return [
        {"input_ids": ids[i], "attention_mask": torch.ones(seq, dtype=torch.long), "labels": (ids[i, 1] > 50).long()}
        for i in range(n)
    ]


def _begin(callback: AdapterDropCallback, model, seed: int = 0) -> None:
    callback.on_train_begin(SimpleNamespace(seed=seed), SimpleNamespace(global_step=0), None, model=model)


def _step(callback: AdapterDropCallback, step: int) -> None:
    callback.on_step_begin(None, SimpleNamespace(global_step=step), None)


def test_default_rule_drops_a_random_prefix_below_the_top_layer():
    model = _model()
    callback = AdapterDropCallback(seed=3)
    _begin(callback, model)
    chosen = [callback.choose(step) for step in range(200)]
    assert all(c == frozenset(range(len(c))) for c in chosen)  # always layers 0..n-1
    assert {len(c) for c in chosen} == set(range(LAYERS))  # n in 0..3: the top layer keeps its adapters


def test_choice_is_seeded_and_resumable():
    model = _model()
    first, again, other = AdapterDropCallback(seed=1), AdapterDropCallback(seed=1), AdapterDropCallback(seed=2)
    for callback in (first, again, other):
        _begin(callback, model)
    sequence = [first.choose(s) for s in range(30)]
    assert sequence == [again.choose(s) for s in range(30)]
    assert sequence != [other.choose(s) for s in range(30)]
    assert sequence[10:] == [first.choose(s) for s in range(10, 30)]  # a function of (seed, step) only
    default = AdapterDropCallback()
    _begin(default, model, seed=1)  # no seed given: the training arguments' seed
    assert [default.choose(s) for s in range(30)] == sequence


def test_max_skip_layers_and_layer_sets():
    model = _model()
    capped = AdapterDropCallback(max_skip_layers=1, seed=0)
    _begin(capped, model)
    assert {capped.choose(s) for s in range(100)} == {frozenset(), frozenset({0})}
    everything = AdapterDropCallback(max_skip_layers=LAYERS, seed=0)
    _begin(everything, model)
    assert frozenset(range(LAYERS)) in {everything.choose(s) for s in range(100)}
    sets = AdapterDropCallback(layer_sets=[[1, 2], [0], []], seed=0)
    _begin(sets, model)
    assert {sets.choose(s) for s in range(100)} == {frozenset({1, 2}), frozenset({0}), frozenset()}


def test_model_skip_layers_are_kept_and_restored():
    model = _model()
    model.set_active_adapters("task", skip_layers=[3])
    callback = AdapterDropCallback(layer_sets=[[0, 1]], seed=0)
    _begin(callback, model)
    _step(callback, 0)
    assert callback.current == {0, 1}
    assert model.adapters_config.skip_layers == {0, 1, 3}
    callback.on_step_end(None, SimpleNamespace(global_step=1), None)
    assert model.adapters_config.skip_layers == {3} and callback.current is None
    _step(callback, 1)
    callback.on_evaluate(None, None, None, metrics={})
    assert model.adapters_config.skip_layers == {3}
    _step(callback, 2)
    callback.on_train_end(None, None, None)
    assert model.adapters_config.skip_layers == {3}
    assert model.active_adapters == adapterkit.Stack("task")  # the setup itself is untouched


def test_bad_arguments():
    with pytest.raises(ValueError, match="not both"):
        AdapterDropCallback(max_skip_layers=2, layer_sets=[[0]])
    with pytest.raises(ValueError, match="non-negative"):
        AdapterDropCallback(max_skip_layers=-1)
    with pytest.raises(ValueError, match="at least one"):
        AdapterDropCallback(layer_sets=[])
    with pytest.raises(ValueError, match="negative layer ids"):
        AdapterDropCallback(layer_sets=[[-1]])
    model = _model()
    with pytest.raises(ValueError, match="exceeds"):
        _begin(AdapterDropCallback(max_skip_layers=LAYERS + 1), model)
    with pytest.raises(ValueError, match=r"layers \[4\]"):
        _begin(AdapterDropCallback(layer_sets=[[0], [4]]), model)
    with pytest.raises(ValueError, match="adapterkit model"):
        _begin(AdapterDropCallback(), torch.nn.Linear(2, 2))
    with pytest.raises(RuntimeError, match="once training begins"):
        AdapterDropCallback().choose(0)


def test_lazy_export():
    assert "AdapterDropCallback" in adapterkit.__all__
    assert adapterkit.AdapterDropCallback is AdapterDropCallback


class _Recorder(TrainerCallback):
    """After AdapterDropCallback: per training step, the dropped layers and the layers whose adapter ran."""

    def __init__(self, drop: AdapterDropCallback, log: list[tuple[bool, int]]):
        self.drop, self.log = drop, log
        self.steps: list[tuple[frozenset[int], set[int]]] = []
        self._mark = 0

    def on_step_begin(self, args, state, control, **kwargs):
        self._mark = len(self.log)
        self._chosen = self.drop.current

    def on_step_end(self, args, state, control, model=None, **kwargs):
        ran = {layer for training, layer in self.log[self._mark :] if training}
        self.steps.append((self._chosen, ran))
        assert model.adapters_config.skip_layers == frozenset()  # restored before logging / evaluation


def test_with_adapter_trainer(tmp_path: Path):
    model = _model()
    log: list[tuple[bool, int]] = []  # (training, layer) for every adapter call
    for layer, modules in model.get_adapter("task").items():
        for module in modules.values():
            module.adapter_up.register_forward_hook(
                lambda mod, args, out, layer=layer: log.append((mod.training, layer))
            )
    drop = AdapterDropCallback(seed=0)
    twin = AdapterDropCallback(seed=0)
    _begin(twin, model)
    expected = [twin.choose(step) for step in range(8)]
    recorder = _Recorder(drop, log)
    args = TrainingArguments(
        output_dir=str(tmp_path),
        per_device_train_batch_size=4,
        per_device_eval_batch_size=8,
        max_steps=8,
        learning_rate=1e-2,
        eval_strategy="steps",
        eval_steps=4,
        save_strategy="no",
        logging_strategy="no",
        report_to=[],
        use_cpu=True,
        seed=0,
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    trainer = AdapterTrainer(
        model=model, args=args, train_dataset=_data(32), eval_dataset=_data(8, seed=1), callbacks=[drop, recorder]
    )
    trainer.train()

    assert len(recorder.steps) == 8
    for chosen, ran in recorder.steps:
        assert chosen == frozenset(range(len(chosen))) and len(chosen) < LAYERS
        assert ran == set(range(LAYERS)) - chosen  # the dropped layers really ran no adapter
    assert len({chosen for chosen, _ in recorder.steps}) > 1  # the choice changes from step to step
    assert [c for c, _ in recorder.steps] == expected  # the seeded sequence, by global step
    evaluated = [layer for training, layer in log if not training]
    assert evaluated and sorted(set(evaluated)) == list(range(LAYERS))  # evaluation: every layer, every time
    assert all(evaluated.count(layer) == evaluated.count(0) for layer in range(LAYERS))
    assert model.adapters_config.skip_layers == frozenset()
    trainer.predict(_data(4, seed=2))
    assert model.adapters_config.skip_layers == frozenset()


def test_adapterdrop_guide_runs():
    """docs/adapterdrop.md: every ```python block, in order, in one namespace."""
    text = (Path(__file__).parents[1] / "docs" / "adapterdrop.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)
    assert len(blocks) >= 4
    namespace: dict = {"__name__": "docs.adapterdrop"}
    for i, block in enumerate(blocks):
        exec(compile(block, f"adapterdrop.md snippet {i + 1}", "exec"), namespace)
