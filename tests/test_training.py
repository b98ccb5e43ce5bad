"""`AdapterTrainer`: what it trains, what its checkpoints hold, resuming, best-model reload, refusals."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import BertConfig, BertForSequenceClassification, TrainingArguments

import adapterkit
from adapterkit import AutoAdapterModel, Stack
from adapterkit.training import EXTRA_TRAINABLE_NAME, AdapterTrainer, load_adapter_checkpoint
from tiny import randomize

FULL_WEIGHTS = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json",
                "pytorch_model.bin.index.json")


def _config() -> BertConfig:
    return BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37, vocab_size=99,
                      max_position_embeddings=64, pad_token_id=0, hidden_dropout_prob=0.0,
                      attention_probs_dropout_prob=0.0)


def _model(seed: int = 0, train: bool = True, other_head: bool = False):
    """Tiny BertAdapterModel with adapter + head "task" (and a frozen extra head "other")."""
    torch.manual_seed(seed)
    model = AutoAdapterModel.from_config(_config())
    model.add_adapter("task", config="seq_bn")
    if other_head:
        model.add_classification_head("other", num_labels=3)
    model.add_classification_head("task", num_labels=2)
    if train:
        model.train_adapter("task")
    return model


def _data(n: int = 64, seq: int = 8, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 99, (n, seq), generator=g)
    labels = (ids[:, 1] > 50).long()
    return [{"input_ids": ids[i], "attention_mask": torch.ones(seq, dtype=torch.long),
             "token_type_ids": torch.zeros(seq, dtype=torch.long), "labels": labels[i]} for i in range(n)]


def _args(out: Path, **overrides) -> TrainingArguments:
    kwargs = dict(output_dir=str(out), per_device_train_batch_size=8, per_device_eval_batch_size=16,
                  learning_rate=1e-2, max_steps=6, save_strategy="steps", save_steps=3, logging_strategy="no",
                  report_to=[], use_cpu=True, seed=0, disable_tqdm=True, dataloader_num_workers=0)
    kwargs.update(overrides)
    return TrainingArguments(**kwargs)


def _state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _trained(model, prefixes=(".adapters.task.", "heads.task.")) -> dict[str, torch.Tensor]:
    return {k: v for k, v in _state(model).items() if any(p in k for p in prefixes)}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One 6-step run with checkpoints at steps 3 and 6: (state before, model, trainer, output dir)."""
    out = tmp_path_factory.mktemp("run")
    model = _model(other_head=True)
    before = _state(model)
    trainer = AdapterTrainer(model=model, args=_args(out), train_dataset=_data())
    trainer.train()
    return before, model, trainer, out


def test_only_adapter_and_its_head_change(run):
    before, model, _, _ = run
    after = _state(model)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed, "nothing was trained"
    assert all(".adapters.task." in k or k.startswith("heads.task.") for k in changed), sorted(changed)
    assert any(".adapters.task." in k for k in changed) and any(k.startswith("heads.task.") for k in changed)
    assert not any(k.startswith("heads.other.") for k in changed)


def test_trainer_setup(run):
    _, _, trainer, _ = run
    assert trainer.label_names == ["labels"]  # from the active head, transformers finds none
    assert not trainer.model_accepts_loss_kwargs  # heads return a per-batch mean loss
    assert "token_type_ids" in trainer._signature_columns  # not dropped by remove_unused_columns


def test_checkpoints_hold_adapters_not_full_model(run):
    _, _, _, out = run
    for step in (3, 6):
        ckpt = out / f"checkpoint-{step}"
        for name in ("adapter_config.json", "adapter.safetensors", "head_config.json", "model_head.safetensors"):
            assert (ckpt / "task" / name).is_file(), name
        assert (ckpt / "other" / "head_config.json").is_file()
        assert not (ckpt / "other" / "adapter_config.json").exists()
        assert (ckpt / "training_args.bin").is_file() and (ckpt / "optimizer.pt").is_file()
        assert not (ckpt / EXTRA_TRAINABLE_NAME).exists()  # nothing trainable outside adapter + head
    assert not [p for p in out.rglob("*") if p.name in FULL_WEIGHTS]


def test_save_model_writes_adapters(run, tmp_path):
    _, model, trainer, _ = run
    trainer.save_model(str(tmp_path))
    assert (tmp_path / "task" / "adapter.safetensors").is_file()
    assert not [p for p in tmp_path.rglob("*") if p.name in FULL_WEIGHTS]
    saved = load_file(tmp_path / "task" / "adapter.safetensors")
    state = model.state_dict()
    assert saved and all(torch.equal(v, state[k]) for k, v in saved.items())


def test_resume_equals_uninterrupted_training(run, tmp_path):
    _, full_model, _, out = run
    model = _model(other_head=True)
    randomize(model, "task", seed=5)  # so only a real reload can give the right result
    with torch.no_grad():
        for p in model.heads["task"].parameters():
            p.add_(1.0)
    params_before = dict(model.named_parameters())
    trainer = AdapterTrainer(model=model, args=_args(tmp_path), train_dataset=_data())
    trainer.train(resume_from_checkpoint=str(out / "checkpoint-3"))
    assert trainer.state.global_step == 6
    expected, got = _trained(full_model), _trained(model)
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=1e-5, atol=1e-6, msg=key)
    # the reload kept parameter objects, trainability and the active setup
    assert all(params_before[n] is p for n, p in model.named_parameters())
    assert model.adapters_config.active_setup == Stack("task") and model.active_head == "task"
    assert all(p.requires_grad for p in model._adapter_parameters("task"))
    assert not any(p.requires_grad for n, p in model.bert.named_parameters() if ".adapters." not in n)


def test_load_best_model_at_end_reloads_best_adapter(tmp_path):
    scores = iter([1.0, 0.0])  # step 3 is the best

    def metrics(_):
        return {"score": next(scores)}

    model = _model()
    args = _args(tmp_path, eval_strategy="steps", eval_steps=3, load_best_model_at_end=True,
                 metric_for_best_model="score", greater_is_better=True)
    trainer = AdapterTrainer(model=model, args=args, train_dataset=_data(), eval_dataset=_data(16, seed=1),
                             compute_metrics=metrics)
    trainer.train()
    assert trainer.state.best_model_checkpoint == str(tmp_path / "checkpoint-3")
    state = model.state_dict()
    best = tmp_path / "checkpoint-3" / "task"
    last = load_file(tmp_path / "checkpoint-6" / "task" / "adapter.safetensors")
    for file in ("adapter.safetensors", "model_head.safetensors"):
        for key, value in load_file(best / file).items():
            torch.testing.assert_close(state[key], value, rtol=0, atol=0)
    assert any(not torch.equal(state[k], v) for k, v in last.items())
    assert model.adapters_config.active_setup == Stack("task")
    assert all(p.requires_grad for p in model._adapter_parameters("task"))


def test_refuses_model_without_active_adapters(tmp_path):
    with pytest.raises(ValueError, match=r"no active adapters.*train_adapter.*transformers\.Trainer"):
        AdapterTrainer(model=_model(train=False), args=_args(tmp_path), train_dataset=_data(8))


def test_refuses_model_without_adapter_mixin(tmp_path):
    torch.manual_seed(0)
    with pytest.raises(ValueError, match="transformers.Trainer"):
        AdapterTrainer(model=BertForSequenceClassification(_config()), args=_args(tmp_path))


def test_refuses_unfrozen_base_model(tmp_path):
    model = _model(train=False)
    trainer = AdapterTrainer(model=model, args=_args(tmp_path, max_steps=1), train_dataset=_data(8),
                             adapter_names="task")  # active, but nothing frozen
    assert model.adapters_config.active_setup == Stack("task")
    with pytest.raises(ValueError, match=r"base model is not frozen.*train_adapter"):
        trainer.train()


def test_refuses_frozen_adapter(tmp_path):
    model = _model()
    model.freeze_model(True)  # the flag says frozen, but so is the adapter
    trainer = AdapterTrainer(model=model, args=_args(tmp_path, max_steps=1), train_dataset=_data(8))
    with pytest.raises(ValueError, match=r"no parameter of the active adapters.*trainable"):
        trainer.train()


def test_model_init_with_adapter_names(tmp_path):
    trainer = AdapterTrainer(model_init=lambda: _model(), args=_args(tmp_path, max_steps=1, save_strategy="no"),
                             train_dataset=_data(8), adapter_names="task")
    assert trainer.train().global_step == 1
    assert trainer.model.adapters_config.active_setup == Stack("task")


def test_gradient_accumulation_matches_large_batch(tmp_path):
    results = []
    for bs, ga in ((8, 1), (4, 2)):
        model = _model()
        args = _args(tmp_path / f"{bs}", per_device_train_batch_size=bs, gradient_accumulation_steps=ga,
                     max_steps=2, save_strategy="no")
        AdapterTrainer(model=model, args=args, train_dataset=_data(16)).train()
        results.append(_trained(model))
    for key in results[0]:
        torch.testing.assert_close(results[1][key], results[0][key], rtol=1e-4, atol=1e-5, msg=key)


def test_static_head_model_checkpoints_trainable_head(tmp_path):
    """A model given adapters by `init` keeps a static classifier: it is saved and reloaded too."""
    torch.manual_seed(0)
    model = adapterkit.init(BertForSequenceClassification(_config()))
    model.add_adapter("task", config="seq_bn")
    model.train_adapter("task")
    AdapterTrainer(model=model, args=_args(tmp_path, max_steps=2, save_steps=2), train_dataset=_data(16)).train()
    ckpt = tmp_path / "checkpoint-2"
    extras = load_file(ckpt / EXTRA_TRAINABLE_NAME)
    assert sorted(extras) == ["classifier.bias", "classifier.weight"]
    assert not [p for p in tmp_path.rglob("*") if p.name in FULL_WEIGHTS]

    torch.manual_seed(1)
    fresh = adapterkit.init(BertForSequenceClassification(_config()))
    fresh.add_adapter("task", config="seq_bn")
    load_adapter_checkpoint(fresh, ckpt)
    trained, reloaded = model.state_dict(), fresh.state_dict()
    for key in [*extras, *(k for k in trained if ".adapters.task." in k)]:
        torch.testing.assert_close(reloaded[key], trained[key], rtol=0, atol=0, msg=key)


def test_checkpoint_without_adapters_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="no adapter in checkpoint"):
        load_adapter_checkpoint(_model(), tmp_path)


def test_lazy_export():
    assert adapterkit.AdapterTrainer is AdapterTrainer
    assert "AdapterTrainer" in adapterkit.__all__
