"""Every composition block with every method on every architecture, checked against running the
adapters alone. `SUPPORT` is the published support matrix (docs/composition.md renders it; a test
below keeps the two equal)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from adapterkit import Average, BatchSplit, Fuse, MultiTask, Parallel, Split, Stack
from tiny import ARCHS, randomize, tiny_inputs, tiny_model

METHODS = [
    "seq_bn",
    "double_seq_bn",
    "par_bn",
    "lora",
    "ia3",
    "prefix_tuning[prefix_length=3, bottleneck_size=8]",
    "noreft[prefix_positions=2, suffix_positions=1, dropout=0.0]",
]
FAMILIES = {
    "bottleneck": "bottleneck",
    "lora": "LoRA",
    "ia3": "(IA)^3",
    "prefix_tuning": "prefix tuning",
    "reft": "ReFT",
}
BLOCKS = ["Stack", "Fuse", "Split", "BatchSplit", "Parallel", "Average", "MultiTask", "per-row adapter_names"]
REFUSED = "ValueError at set_active_adapters"
# block -> method family -> True (checked below against the adapters alone) or how it is refused
SUPPORT: dict[str, dict[str, bool | str]] = {block: dict.fromkeys(FAMILIES.values(), True) for block in BLOCKS}
SUPPORT["Fuse"].update({"LoRA": REFUSED, "(IA)^3": REFUSED, "prefix tuning": REFUSED})
SUPPORT["Split"]["prefix tuning"] = REFUSED
SUPPORT["Average"]["prefix tuning"] = REFUSED
SUPPORT["Fuse"]["ReFT"] = REFUSED
SUPPORT["Split"]["ReFT"] = REFUSED


def _family(model, name: str) -> str:
    config = model.adapters_config.get(name)
    method = config.method
    if method == "lora" and config.composition_mode == "scale":
        method = "ia3"
    return FAMILIES[method]


B, T = 4, 9


def _model(arch: str, method: str):
    model = tiny_model(arch)
    for i, name in enumerate(("a", "b")):
        model.add_adapter(name, config=method)
        randomize(model, name, seed=10 + i)
    return model


def _run(model, setup, **kwargs) -> torch.Tensor:
    model.set_active_adapters(setup)
    with torch.no_grad():
        return model(**tiny_inputs(batch=B, seq=T), **kwargs).last_hidden_state


def _close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("arch", ARCHS)
def test_blocks_equal_running_adapters_alone(arch, method):
    model = _model(arch, method)
    family = _family(model, "a")
    base, a, b = _run(model, None), _run(model, "a"), _run(model, "b")
    assert not torch.allclose(a, b, atol=1e-4)

    stacked = _run(model, Stack("a", "b"))
    assert not torch.allclose(stacked, a, atol=1e-4) and not torch.allclose(stacked, b, atol=1e-4)

    parallel = _run(model, Parallel("a", "b", None))
    assert parallel.shape[0] == 3 * B
    _close(parallel[:B], a)
    _close(parallel[B : 2 * B], b)
    _close(parallel[2 * B :], base)

    split_rows = _run(model, BatchSplit("b", None, "a", batch_sizes=[1, 1, 2]))
    _close(split_rows, torch.cat([b[:1], base[1:2], a[2:]]))

    with pytest.raises(ValueError, match="needs the forward argument task_ids"):
        _run(model, MultiTask("a", "b"))
    per_row = ["b", "a", None, "b"]
    expected = torch.stack([{"a": a, "b": b, None: base}[t][i] for i, t in enumerate(per_row)])
    _close(_run(model, MultiTask("a", "b", None), task_ids=per_row), expected)
    _close(_run(model, None, adapter_names=per_row), expected)

    checks = {
        "Average": lambda: _close(_run(model, Average("a", "b", weights=[1.0, 0.0])), a),
        "Split": lambda: _close(_run(model, Split("a", "a", splits=[4, T - 4])), a),
        "Fuse": lambda: model.set_active_adapters(Fuse("a", "b")),  # fusion math: tests/methods/test_fusion.py
    }
    for block, check in checks.items():
        if SUPPORT[block][family] is not True:
            with pytest.raises(ValueError, match=rf"adapter '[ab]' \(\w+\) cannot run inside {block}"):
                check()
        elif block != "Fuse":
            check()


def render_support() -> str:
    """`SUPPORT` as the markdown table published in docs/composition.md."""
    families = list(FAMILIES.values())
    lines = ["| block | " + " | ".join(families) + " |", "|---" * (len(families) + 1) + "|"]
    for block in BLOCKS:
        cells = ["yes" if SUPPORT[block][f] is True else f"no ({SUPPORT[block][f]})" for f in families]
        lines.append(f"| {block} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def test_docs_publish_this_matrix():
    text = (Path(__file__).parents[2] / "docs" / "composition.md").read_text()
    published = text.split("<!-- support matrix start -->\n")[1].split("\n<!-- support matrix end -->")[0]
    hint = "run `PYTHONPATH=src:tests python tests/model/test_composition_matrix.py` and paste its table"
    assert published == render_support(), hint


if __name__ == "__main__":
    print(render_support())
