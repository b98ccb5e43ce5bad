"""`AdapterTrainer` with a Parallel setup: both adapters and both heads train in one run."""

from __future__ import annotations

import torch
from transformers import BertConfig, TrainingArguments

from adapterkit import AutoAdapterModel, Parallel
from adapterkit.training import AdapterTrainer


def _model():
    torch.manual_seed(0)
    config = BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
                        vocab_size=99, max_position_embeddings=64, pad_token_id=0)
    model = AutoAdapterModel.from_config(config)
    for name in ("a", "b"):
        model.add_adapter(name, config="seq_bn")
        model.add_classification_head(name, num_labels=2)
    model.add_qa_head("qa")
    model.train_adapter(Parallel("a", "b"))
    return model


def _data(n: int = 32, seq: int = 8) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 99, (n, seq), generator=g)
    labels = (ids[:, 1] > 50).long()
    return [{"input_ids": ids[i], "attention_mask": torch.ones(seq, dtype=torch.long), "labels": labels[i]}
            for i in range(n)]


def test_adapter_trainer_trains_both_channels_and_their_heads(tmp_path):
    model = _model()
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=8, per_device_eval_batch_size=8,
                             learning_rate=1e-2, max_steps=3, save_strategy="no", logging_strategy="no",
                             report_to=[], use_cpu=True, seed=0, disable_tqdm=True, dataloader_num_workers=0)
    trainer = AdapterTrainer(model=model, args=args, train_dataset=_data(), eval_dataset=_data(16))
    assert trainer.label_names == ["labels"]  # from the channels' heads
    trainer.train()
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    for prefix in (".adapters.a.", ".adapters.b.", "heads.a.", "heads.b."):
        assert any(prefix in k or k.startswith(prefix) for k in changed), prefix
    assert all(".adapters." in k or k.startswith(("heads.a.", "heads.b.")) for k in changed), sorted(changed)
    metrics = trainer.evaluate()
    assert metrics["eval_loss"] > 0
