"""The model-level parts of composition in `integration.target`: where `Parallel` replicates the batch
(AdapterDrop: the layers below the first adapter run once) and the per-row ``adapter_names`` argument."""

from __future__ import annotations

import pytest
import torch

from adapterkit import AdapterSetup, Parallel, SeqBnConfig, Stack
from tiny import randomize, tiny_inputs, tiny_model


def _model_with_batch_probe(leave_out=()):
    model = tiny_model("bert")  # 2 layers
    for i, name in enumerate(("a", "b")):
        model.add_adapter(name, config=SeqBnConfig(leave_out=list(leave_out)))
        randomize(model, name, seed=i)
    seen: list[int] = []
    for layer in model.bert.encoder.layer:
        layer.attention.self.register_forward_pre_hook(
            lambda m, args, kw: seen.append((args[0] if args else kw["hidden_states"]).shape[0]), with_kwargs=True
        )
    return model, seen


def _forward(model, **kwargs):
    with torch.no_grad():
        return model(**tiny_inputs(batch=3), **kwargs).last_hidden_state


def test_parallel_replicates_at_the_first_layer_with_an_adapter():
    model, seen = _model_with_batch_probe()
    model.set_active_adapters(Parallel("a", "b"))
    _forward(model)
    assert seen == [6, 6]
    seen.clear()
    model.set_active_adapters(Parallel("a", "b"), skip_layers=[0])
    _forward(model)
    assert seen == [3, 6], "layer 0 runs no adapter, so it runs once on the un-replicated batch"
    model, seen = _model_with_batch_probe(leave_out=[0])
    model.set_active_adapters(Parallel("a", "b"))
    _forward(model)
    assert seen == [3, 6], "leave_out moves the replication point too"


def test_pre_replicated_input_is_not_replicated_again():
    model, seen = _model_with_batch_probe()
    model.set_active_adapters(Parallel("a", "b"))
    expected = _forward(model)
    inputs = {k: v.repeat(2, 1) for k, v in tiny_inputs(batch=3).items()}
    seen.clear()
    with torch.no_grad():
        got = model(**inputs, adapter_input_parallelized=True).last_hidden_state
    assert seen == [6, 6]
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)


def test_adapter_names_are_checked_before_the_forward():
    model, _ = _model_with_batch_probe()
    with pytest.raises(ValueError, match="no adapter named 'nope'"):
        _forward(model, adapter_names=["a", "nope", None])
    with pytest.raises(ValueError, match="adapter_names has 2 entries for a batch of 3 rows"):
        _forward(model, adapter_names=["a", "b"])


def test_adapter_names_are_repeated_for_expanded_batches():
    model, _ = _model_with_batch_probe()
    per_row = _forward(model, adapter_names=["a", None, "b"])
    inputs = {k: v.repeat_interleave(2, dim=0) for k, v in tiny_inputs(batch=3).items()}
    with torch.no_grad():
        expanded = model(**inputs, adapter_names=["a", None, "b"]).last_hidden_state
    torch.testing.assert_close(expanded, per_row.repeat_interleave(2, dim=0), atol=1e-6, rtol=0)


@pytest.mark.parametrize("method", ["lora", "seq_bn"])
def test_routed_rows_train_like_separate_batches(method):
    """Gradients through a mixed batch equal the sum of each adapter's gradients on its own rows."""
    model = tiny_model("bert").train()
    for i, name in enumerate(("a", "b")):
        model.add_adapter(name, config=method)
        randomize(model, name, seed=i)
    model.train_adapter(Stack("a", "b"))  # both trainable; the setup itself is overridden per call
    inputs = tiny_inputs(batch=4)
    per_row = ["a", "b", None, "a"]
    model.zero_grad()
    model(**inputs, adapter_names=per_row).last_hidden_state.pow(2).sum().backward()
    mixed = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    for name in ("a", "b"):
        rows = [i for i, t in enumerate(per_row) if t == name]
        sub = {k: v[rows] for k, v in inputs.items()}
        model(**sub, adapter_names=[name] * len(rows)).last_hidden_state.pow(2).sum().backward()
    separate = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert mixed.keys() == separate.keys() and mixed
    for key in mixed:
        torch.testing.assert_close(mixed[key], separate[key], atol=1e-5, rtol=1e-4)


def test_adapter_setup_is_checked_before_the_forward():
    model, seen = _model_with_batch_probe()
    with AdapterSetup(Parallel("a", "nope")), pytest.raises(ValueError, match="no adapter named 'nope'"):
        _forward(model)
    assert seen == []
