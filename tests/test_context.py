"""Forward context and AdapterSetup: per-thread and per-task isolation, correct outputs under concurrency."""

from __future__ import annotations

import asyncio
import threading

import torch

from adapterkit import AdapterSetup, Stack
from adapterkit.context import ForwardContext
from tiny import randomize, tiny_inputs, tiny_model


def test_adapter_setup_nests_and_resets():
    assert AdapterSetup.get_context() is None
    with AdapterSetup("a") as outer:
        with AdapterSetup(Stack("b", "c")) as inner:
            assert AdapterSetup.get_context() is inner and inner.head_setup == "c"
        assert AdapterSetup.get_context() is outer
    assert AdapterSetup.get_context() is None


def test_ignore_empty_keeps_outer_setup():
    with AdapterSetup("a") as outer, AdapterSetup(None, ignore_empty=True):
        assert AdapterSetup.get_context() is outer


def test_context_closed_after_forward_and_after_error(bert):
    bert.add_adapter("a", set_active=True)
    bert(**tiny_inputs())
    assert ForwardContext.get_context() is None
    try:
        bert(input_ids=torch.full((1, 100), 5))  # longer than max positions: fails inside the forward
    except Exception:
        pass
    assert ForwardContext.get_context() is None


def _two_adapter_model():
    model = tiny_model("bert")
    for name in ("a", "b"):
        model.add_adapter(name, config="seq_bn")
        randomize(model, name, seed=len(name) + ord(name))
    return model


def test_threads_with_different_setups_get_their_own_outputs():
    model, inputs = _two_adapter_model(), tiny_inputs()
    expected = {}
    for name in ("a", "b"):
        with torch.no_grad(), AdapterSetup(name):
            expected[name] = model(**inputs).last_hidden_state
    assert not torch.allclose(expected["a"], expected["b"])
    results: dict[str, list[bool]] = {"a": [], "b": []}
    barrier = threading.Barrier(2)

    def worker(name: str) -> None:
        barrier.wait()
        for _ in range(20):
            with torch.no_grad(), AdapterSetup(name):
                out = model(**inputs).last_hidden_state
            results[name].append(torch.equal(out, expected[name]))

    threads = [threading.Thread(target=worker, args=(n,)) for n in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results["a"] == [True] * 20 and results["b"] == [True] * 20


def test_asyncio_tasks_with_different_setups():
    model, inputs = _two_adapter_model(), tiny_inputs()
    with torch.no_grad(), AdapterSetup("a"):
        expected_a = model(**inputs).last_hidden_state

    async def run(name: str) -> torch.Tensor:
        with AdapterSetup(name):
            await asyncio.sleep(0)  # let the other task enter its own setup in between
            with torch.no_grad():
                return model(**inputs).last_hidden_state

    async def main():
        return await asyncio.gather(run("a"), run("b"))

    out_a, out_b = asyncio.run(main())
    assert torch.equal(out_a, expected_a) and not torch.equal(out_b, expected_a)
