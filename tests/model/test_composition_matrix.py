"""Every composition block with every method on every architecture, checked against running the
adapters alone. `SUPPORT` is the published support matrix (docs/composition.md renders it; a test
below keeps the two equal)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import adapterkit
from adapterkit import Average, BatchSplit, Fuse, MultiTask, Parallel, Split, Stack
from tiny import ARCHS, randomize, tiny_inputs, tiny_model

# method config -> its column in the published matrix (tiny-model sizes; the aliases' defaults are for hidden 768)
METHODS = {
    "seq_bn": "bottleneck",
    "double_seq_bn": "bottleneck",
    "par_bn": "bottleneck",
    "compacter++[reduction_factor=4, phm_dim=2]": "Compacter",
    "AdapterPlusConfig": "AdapterPlus",
    "seq_bn_inv": "invertible",
    "lora": "LoRA",
    "ia3": "(IA)^3",
    "dora": "DoRA",
    "vera": "VeRA",
    "prefix_tuning[prefix_length=3, bottleneck_size=8]": "prefix tuning",
    "prompt_tuning[prompt_length=2]": "prompt tuning",
    "noreft[prefix_positions=2, suffix_positions=1, dropout=0.0]": "ReFT",
}
FAMILIES = list(dict.fromkeys(METHODS.values()))
BLOCKS = ["Stack", "Fuse", "Split", "BatchSplit", "Parallel", "Average", "MultiTask", "per-row adapter_names"]
REFUSED = "ValueError at set_active_adapters"
# block -> method family -> True (checked below against the adapters alone) or how it is refused
SUPPORT: dict[str, dict[str, bool | str]] = {block: dict.fromkeys(FAMILIES, True) for block in BLOCKS}
for family in ("LoRA", "(IA)^3", "DoRA", "VeRA", "prefix tuning", "prompt tuning", "ReFT"):
    SUPPORT["Fuse"][family] = REFUSED
for family in ("prefix tuning", "prompt tuning", "ReFT"):
    SUPPORT["Split"][family] = REFUSED
for family in ("prefix tuning", "prompt tuning"):
    SUPPORT["Average"][family] = REFUSED
SUPPORT["Parallel"]["prompt tuning"] = REFUSED
SUPPORT["Stack"]["DoRA"] = "only as the first adapter at each projection (ValueError otherwise)"
ENCODER_ONLY = {"prompt tuning"}  # refused at add_adapter on decoders (positions, causal labels, cache)
DECODERS = {"gpt2", "llama", "mistral", "qwen2"}


B, T = 4, 9


def _model(arch: str, method: str):
    model = tiny_model(arch)
    config = getattr(adapterkit, method)() if method.endswith("Config") else method
    for i, name in enumerate(("a", "b")):
        model.add_adapter(name, config=config)
        randomize(model, name, seed=10 + i)
    return model


def _run(model, setup, **kwargs) -> torch.Tensor:
    model.set_active_adapters(setup)
    with torch.no_grad():
        return model(**tiny_inputs(batch=B, seq=T), **kwargs).last_hidden_state


def _close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=0)


def _rows_close(actual: torch.Tensor, per_row: list[torch.Tensor]) -> None:
    """Row i equals ``per_row[i]`` on that row's own positions (prompt tuning lengthens the rows that have
    prompts; rows of a shorter setup are padded at the end)."""
    for i, expected in enumerate(per_row):
        _close(actual[i, : expected.shape[0]], expected)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("arch", ARCHS)
def test_blocks_equal_running_adapters_alone(arch, method):
    family = METHODS[method]
    if family in ENCODER_ONLY and arch in DECODERS:
        with pytest.raises(ValueError):
            _model(arch, method)
        return
    model = _model(arch, method)
    base, a, b = _run(model, None), _run(model, "a"), _run(model, "b")
    assert not torch.allclose(a, b, atol=1e-4)

    split_rows = _run(model, BatchSplit("b", None, "a", batch_sizes=[1, 1, 2]))
    _rows_close(split_rows, [b[0], base[1], a[2], a[3]])

    with pytest.raises(ValueError, match="needs the forward argument task_ids"):
        _run(model, MultiTask("a", "b"))
    per_row = ["b", "a", None, "b"]
    expected = [{"a": a, "b": b, None: base}[t][i] for i, t in enumerate(per_row)]
    _rows_close(_run(model, MultiTask("a", "b", None), task_ids=per_row), expected)
    _rows_close(_run(model, None, adapter_names=per_row), expected)

    def parallel() -> None:
        out = _run(model, Parallel("a", "b", None))
        assert out.shape[0] == 3 * B
        _rows_close(out, [*a, *b, *base])

    def stack() -> None:
        stacked = _run(model, Stack("a", "b"))
        for alone in (a, b):  # stacked prompts lengthen the rows further
            assert stacked.shape != alone.shape or not torch.allclose(stacked, alone, atol=1e-4)

    checks = {
        "Stack": stack,
        "Parallel": parallel,
        "Average": lambda: _close(_run(model, Average("a", "b", weights=[1.0, 0.0])), a),
        "Split": lambda: _close(_run(model, Split("a", "a", splits=[4, T - 4])), a),
        "Fuse": lambda: model.set_active_adapters(Fuse("a", "b")),  # fusion math: tests/methods/test_fusion.py
    }
    for block, check in checks.items():
        if SUPPORT[block][family] is not True:
            with pytest.raises(ValueError, match=r"adapter '[ab]'"):  # the message names the adapter
                check()
        elif block != "Fuse":
            check()


def _cell(support: bool | str) -> str:
    if support is True:
        return "yes"
    return f"partly: {support}" if support.startswith("only") else f"no ({support})"


def render_support() -> str:
    """`SUPPORT` as the markdown table published in docs/composition.md."""
    families = FAMILIES
    lines = ["| block | " + " | ".join(families) + " |", "|---" * (len(families) + 1) + "|"]
    for block in BLOCKS:
        cells = [_cell(SUPPORT[block][f]) for f in families]
        lines.append(f"| {block} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def test_docs_publish_this_matrix():
    text = (Path(__file__).parents[2] / "docs" / "composition.md").read_text()
    published = text.split("<!-- support matrix start -->\n")[1].split("\n<!-- support matrix end -->")[0]
    hint = "run `PYTHONPATH=src:tests python tests/model/test_composition_matrix.py` and paste its table"
    assert published == render_support(), hint


if __name__ == "__main__":
    print(render_support())
