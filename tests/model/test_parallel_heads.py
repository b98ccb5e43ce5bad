"""Heads with Parallel, BatchSplit and per-row routing: each channel's head equals that adapter alone,
head choice rules, errors at forward start, training both channels in one step."""

from __future__ import annotations

import pytest
import torch
from transformers.modeling_outputs import CausalLMOutputWithPast, SequenceClassifierOutput

from adapterkit import AdapterSetup, BatchSplit, Fuse, MultiHeadOutput, Parallel, Stack
from tiny import randomize, tiny_inputs, tiny_model

TOL = dict(atol=1e-5, rtol=0)
LABELS = torch.tensor([0, 1, 2])


def _bert(config: str = "seq_bn"):
    """Tiny BERT with adapters "a", "b" and 3-class heads "a", "b", "base" ("base" active)."""
    model = tiny_model("bert")
    for name in ("a", "b"):
        model.add_adapter(name, config=config)
        randomize(model, name, seed=ord(name))
        model.add_classification_head(name, num_labels=3)
    model.add_classification_head("base", num_labels=3)
    return model


def _run(model, setup, **kwargs):
    model.set_active_adapters(setup)
    with torch.no_grad():
        return model(**tiny_inputs(batch=3), **kwargs)


@pytest.mark.parametrize("config", ["seq_bn", "lora"])
def test_each_parallel_channel_equals_its_adapter_alone_with_its_head(config):
    model = _bert(config)
    alone = {name: _run(model, name, labels=LABELS) for name in ("a", "b")}
    out = _run(model, Parallel("a", "b"), labels=LABELS)
    assert isinstance(out, MultiHeadOutput) and len(out) == 2 and model.active_head == ["a", "b"]
    for i, name in enumerate(("a", "b")):
        assert isinstance(out[i], SequenceClassifierOutput)
        torch.testing.assert_close(out[i].logits, alone[name].logits, **TOL)
        torch.testing.assert_close(out[i].loss, alone[name].loss, **TOL)
    torch.testing.assert_close(out.loss, alone["a"].loss + alone["b"].loss, **TOL)
    torch.testing.assert_close(out.logits, torch.cat([alone["a"].logits, alone["b"].logits]), **TOL)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_parallel_causal_lm_heads_equal_each_adapter_alone(arch):
    model = tiny_model(arch)
    for name in ("a", "b"):
        model.add_adapter(name, config="seq_bn")
        randomize(model, name, seed=ord(name))
        model.add_causal_lm_head(name)
    ids = tiny_inputs(batch=2)["input_ids"]
    alone = {}
    for name in ("a", "b"):
        model.set_active_adapters(name)
        with torch.no_grad():
            alone[name] = model(ids, labels=ids)
    model.set_active_adapters(Parallel("a", "b"))
    with torch.no_grad():
        out = model(ids, labels=ids)
    for i, name in enumerate(("a", "b")):
        assert isinstance(out[i], CausalLMOutputWithPast)
        torch.testing.assert_close(out[i].logits, alone[name].logits, **TOL)
    torch.testing.assert_close(out.loss, alone["a"].loss + alone["b"].loss, **TOL)
    assert out.logits.shape == (4, ids.shape[1], 99)
    assert out.past_key_values is not None and out.past_key_values.get_seq_length() == ids.shape[1]


def test_identity_channel_is_the_base_model_with_the_active_head():
    model = _bert()
    base = _run(model, None)
    assert model.active_head == "base"
    out = _run(model, Parallel("a", None))
    assert model.active_head == ["a", "base"]
    torch.testing.assert_close(out[1].logits, base.logits, **TOL)
    # explicit heads win over the active head for the identity channel
    explicit = _run(model, Parallel("a", None), head=["a", "b"])
    assert torch.equal(explicit[0].logits, out[0].logits)
    with torch.no_grad():
        b_head_on_base = model(**tiny_inputs(batch=3), head="b", adapter_names=[None] * 3)
    torch.testing.assert_close(explicit[1].logits, b_head_on_base.logits, **TOL)


def test_adapter_setup_derives_heads_or_takes_a_head_setup_list():
    model = _bert()
    alone = {name: _run(model, name) for name in ("a", "b")}
    model.set_active_adapters(None)
    inputs = tiny_inputs(batch=3)
    with AdapterSetup(Parallel("b", "a")), torch.no_grad():
        derived = model(**inputs)
    torch.testing.assert_close(derived[0].logits, alone["b"].logits, **TOL)
    torch.testing.assert_close(derived[1].logits, alone["a"].logits, **TOL)
    with AdapterSetup(Parallel("b", "a"), head_setup=["base", "base"]), torch.no_grad():
        chosen = model(**inputs)
    with AdapterSetup("b", head_setup="base"), torch.no_grad():
        b_with_base_head = model(**inputs)
    torch.testing.assert_close(chosen[0].logits, b_with_base_head.logits, **TOL)


def test_head_lists_from_argument_and_active_head():
    model = _bert()
    out = _run(model, Parallel("a", "b"), head=["b", "b"])
    with torch.no_grad():
        model.set_active_adapters(Parallel("a", "b"))
        model.active_head = ["b", "b"]
        stored = model(**tiny_inputs(batch=3))
    assert model.active_head == ["b", "b"]
    torch.testing.assert_close(out.logits, stored.logits, **TOL)
    # a list with a single-channel setup runs every head on the same rows (AdapterHub's multi-head output)
    multi = _run(model, "a", head=["a", "base"], labels=LABELS)
    single = _run(model, "a", head="base", labels=LABELS)
    assert len(multi) == 2 and multi.logits.shape == (6, 3)
    torch.testing.assert_close(multi[1].logits, single.logits, **TOL)
    assert multi.loss is not None


def test_heads_are_checked_at_forward_start():
    model = _bert()
    model.set_active_adapters(Parallel("a", "b"))
    inputs = tiny_inputs(batch=3)
    with pytest.raises(ValueError, match=r"2 Parallel channels .* lists 3 heads"):
        model(**inputs, head=["a", "b", "a"])
    with pytest.raises(ValueError, match=r"needs one head per channel, but head is 'a'.*list of 2 head names"):
        model(**inputs, head="a")
    with pytest.raises(ValueError, match="names no head 'nope'"):
        model(**inputs, head=["a", "nope"])
    model.delete_head("b")
    with pytest.raises(ValueError, match=r"heads are missing: channel 1 \('b'\) -> 'b'.*heads \['a', 'base'\]"):
        model(**inputs)
    with pytest.raises(ValueError, match="names no head 'nope'"):
        model.active_head = ["a", "nope"]
    with pytest.raises(TypeError, match="active_head must be"):
        model.active_head = 3
    model.active_head = None
    with pytest.raises(ValueError, match="entry 1 of head is None .* single active head, but none is set"):
        model(**inputs, head=["a", None])


def test_parallel_without_heads_returns_the_replicated_base_output():
    model = tiny_model("bert")
    model.add_adapter("a")
    model.add_adapter("b")
    out = _run(model, Parallel("a", "b"))
    assert out.last_hidden_state.shape[0] == 6


def test_batch_split_runs_each_split_through_its_head():
    model = _bert()
    alone = {name: _run(model, name, labels=LABELS) for name in ("a", "b")}
    out = _run(model, BatchSplit("a", "b", batch_sizes=[1, 2]), labels=LABELS)
    assert isinstance(model.active_head, BatchSplit) and list(model.active_head) == ["a", "b"]
    assert isinstance(out, MultiHeadOutput) and len(out) == 2
    torch.testing.assert_close(out[0].logits, alone["a"].logits[:1], **TOL)
    torch.testing.assert_close(out[1].logits, alone["b"].logits[1:], **TOL)
    torch.testing.assert_close(out.logits[1:], alone["b"].logits[1:], **TOL)
    assert out.loss is not None
    with pytest.raises(ValueError, match=r"batch_sizes \[2, 2\] \(sum 4\) but the batch has 3 rows"):
        _run(model, "a", head=BatchSplit("a", "b", batch_sizes=[2, 2]))


def test_per_row_routing_uses_each_rows_head_in_row_order():
    model = _bert()
    alone = {name: _run(model, name) for name in ("a", "b")}
    base = _run(model, None)  # "base" is the active head
    out = _run(model, None, adapter_names=["b", None, "a"])
    assert isinstance(out, MultiHeadOutput)
    torch.testing.assert_close(out.logits[0], alone["b"].logits[0], **TOL)
    torch.testing.assert_close(out.logits[1], base.logits[1], **TOL)
    torch.testing.assert_close(out.logits[2], alone["a"].logits[2], **TOL)
    interleaved = _run(model, None, adapter_names=["a", "b", "a"], labels=LABELS)
    assert [len(o.logits) for o in interleaved] == [2, 1]  # head "a": rows 0 and 2, head "b": row 1
    torch.testing.assert_close(interleaved.logits[[0, 2]], alone["a"].logits[[0, 2]], **TOL)
    torch.testing.assert_close(interleaved.logits[1], alone["b"].logits[1], **TOL)
    assert interleaved.loss is not None
    same = _run(model, None, adapter_names=["a", "a", "a"])
    assert isinstance(same, SequenceClassifierOutput)


def test_single_channel_setups_keep_the_heads_own_output_and_tuples():
    model = _bert()
    assert isinstance(_run(model, Stack("b", "a")), SequenceClassifierOutput)
    assert model.active_head == "a"
    out = _run(model, Parallel("a", "b"), return_dict=False)
    assert isinstance(out, tuple) and len(out[0]) == 2


def test_fuse_channel_uses_the_fusion_head_when_it_exists():
    model = _bert()
    if not hasattr(model, "add_adapter_fusion"):
        pytest.skip("AdapterFusion is not available")
    model.add_adapter("c")
    model.add_classification_head("c", num_labels=3)
    model.add_adapter_fusion(Fuse("a", "b"))
    model.set_active_adapters(Parallel(Fuse("a", "b"), "c"))
    assert model.active_head == ["b", "c"]
    model.add_classification_head("a,b", num_labels=3)
    model.set_active_adapters(Parallel(Fuse("a", "b"), "c"))
    assert model.active_head == ["a,b", "c"]
    model.set_active_adapters(Fuse("a", "b"))
    assert model.active_head == "a,b"


def test_training_parallel_gives_each_adapter_the_gradients_of_training_it_alone():
    model = _bert("lora")
    inputs = tiny_inputs(batch=3)

    def grads(setup):
        model.train_adapter(setup)
        model.eval()  # no dropout: the runs must be comparable
        model.zero_grad()
        model(**inputs, labels=LABELS).loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad and p.grad is not None}

    alone = {**grads("a"), **grads("b")}
    both = grads(Parallel("a", "b"))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any(n.startswith("heads.a.") for n in trainable) and any(n.startswith("heads.b.") for n in trainable)
    assert not any(n.startswith("heads.base.") for n in trainable)
    assert set(both) == set(alone) and len(both) > 4
    for name, grad in both.items():
        torch.testing.assert_close(grad, alone[name], **TOL)
