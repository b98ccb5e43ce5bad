"""`AdapterTrainer` with AdapterFusion: what trains, the value regularization in the loss (before the
optimizer step), no weight decay on value matrices, and fusions in checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import BertConfig, TrainingArguments

from adapterkit import AutoAdapterModel, Fuse
from adapterkit.io import FUSION_CONFIG_NAME, FUSION_SAFE_WEIGHTS_NAME
from adapterkit.training import AdapterTrainer, load_adapter_checkpoint, trains_fusion
from tiny import randomize


def _config() -> BertConfig:
    return BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37, vocab_size=99,
                      max_position_embeddings=64, pad_token_id=0, hidden_dropout_prob=0.0,
                      attention_probs_dropout_prob=0.0)


def _model(seed: int = 0, fusion_config: str | dict = "dynamic", silent_adapters: bool = False):
    """Adapters a, b (frozen), head "task", Fuse(a, b) being trained; value matrices moved off the identity."""
    torch.manual_seed(seed)
    model = AutoAdapterModel.from_config(_config())
    for i, name in enumerate("ab"):
        model.add_adapter(name)
        randomize(model, name, seed=i + 1)
        if silent_adapters:  # adapter outputs 0: the task loss does not depend on the value matrices
            for per_layer in model.get_adapter(name).values():
                for adapter in per_layer.values():
                    torch.nn.init.zeros_(adapter.adapter_up.weight)
                    torch.nn.init.zeros_(adapter.adapter_up.bias)
    model.add_classification_head("task", num_labels=2)
    model.add_adapter_fusion(Fuse("a", "b"), config=fusion_config)
    with torch.no_grad():
        for value in _values(model):
            value.add_(0.05 * torch.randn(value.shape, generator=torch.Generator().manual_seed(seed)))
    model.train_adapter_fusion(Fuse("a", "b"))
    return model


def _values(model) -> list[torch.nn.Parameter]:
    return [m.value.weight for per_layer in model.get_adapter_fusion("a,b").values() for m in per_layer.values()
            if m.config.value]


def _data(n: int = 32, seq: int = 8, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 99, (n, seq), generator=g)
    labels = (ids[:, 1] > 50).long()
    return [{"input_ids": ids[i], "attention_mask": torch.ones(seq, dtype=torch.long), "labels": labels[i]}
            for i in range(n)]


def _args(out: Path, **overrides) -> TrainingArguments:
    kwargs = dict(output_dir=str(out), per_device_train_batch_size=8, learning_rate=1e-2, max_steps=4,
                  save_strategy="steps", save_steps=2, logging_strategy="no", report_to=[], use_cpu=True, seed=0,
                  disable_tqdm=True, dataloader_num_workers=0, weight_decay=0.5)
    kwargs.update(overrides)
    return TrainingArguments(**kwargs)


def _state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("fusion_run")
    model = _model()
    before = _state(model)
    trainer = AdapterTrainer(model=model, args=_args(out), train_dataset=_data())
    trainer.train()
    return before, model, trainer, out


def test_only_fusion_and_head_change(run):
    before, model, trainer, _ = run
    assert trains_fusion(model)
    after = _state(model)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert any(".adapter_fusion_layer.a,b." in k for k in changed)
    assert any(k.startswith("heads.task.") for k in changed)
    assert all(".adapter_fusion_layer.a,b." in k or k.startswith("heads.task.") for k in changed), sorted(changed)


def test_loss_includes_the_regularization_in_training_only(run):
    _, model, trainer, _ = run
    batch = trainer.data_collator(_data(4, seed=3))
    model.train()
    with torch.no_grad():
        plain = model(**batch).loss
        reg = model.get_fusion_regularization_loss()
        assert reg is not None and reg > 0
        torch.testing.assert_close(trainer.compute_loss(model, dict(batch)), plain + reg)
        model.eval()
        torch.testing.assert_close(trainer.compute_loss(model, dict(batch)), model(**batch).loss)


def test_value_matrices_have_no_weight_decay(run):
    _, model, trainer, _ = run
    values = {id(v) for v in _values(model)}
    groups = trainer.optimizer.param_groups
    assert all(group["weight_decay"] == 0.0 for group in groups if any(id(p) in values for p in group["params"]))
    assert any(group["weight_decay"] == 0.5 for group in groups)


def _distance(model) -> float:
    return sum(float((torch.eye(32) - v.detach()).pow(2).sum()) for v in _values(model))


def test_regularization_pulls_values_towards_identity(tmp_path):
    """With silent adapters only the regularization moves the value matrices: towards the identity.
    Without it (regularization=False) they do not move at all, so weight decay does not touch them."""
    model = _model(silent_adapters=True)
    start = _distance(model)
    args = _args(tmp_path / "reg", save_strategy="no", max_steps=2)
    AdapterTrainer(model=model, args=args, train_dataset=_data()).train()
    assert _distance(model) < start

    no_reg = {**_model().adapters_config.fusions["a,b"].to_dict(), "regularization": False}
    model = _model(fusion_config=no_reg, silent_adapters=True)
    values = [v.detach().clone() for v in _values(model)]
    args = _args(tmp_path / "plain", save_strategy="no", max_steps=2)
    AdapterTrainer(model=model, args=args, train_dataset=_data()).train()
    for v, w in zip(values, _values(model), strict=True):
        torch.testing.assert_close(w, v, rtol=0, atol=0)


def test_checkpoints_hold_the_fusion_and_reload_in_place(run):
    _, trained, _, out = run
    ckpt = out / "checkpoint-4"
    assert (ckpt / "a,b" / FUSION_CONFIG_NAME).is_file() and (ckpt / "a,b" / FUSION_SAFE_WEIGHTS_NAME).is_file()
    assert (ckpt / "a" / "adapter_config.json").is_file() and (ckpt / "task" / "head_config.json").is_file()
    assert not (ckpt / "extra_trainable_params.safetensors").exists()

    model = _model(seed=1)
    params = dict(model.named_parameters())
    load_adapter_checkpoint(model, ckpt)
    assert all(params[n] is p for n, p in model.named_parameters())
    assert model.active_adapters == Fuse("a", "b") and trains_fusion(model)
    want = trained.state_dict()
    for key, value in model.state_dict().items():
        if ".adapter_fusion_layer." in key or key.startswith("heads.") or ".adapters." in key:
            torch.testing.assert_close(value, want[key], rtol=0, atol=0, msg=key)
