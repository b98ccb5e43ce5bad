"""Every architecture x every method, run as a user runs it: add, forward, a training step, save/load,
and merge for the LoRA family. `docs/models.md` is rendered from this matrix (``PYTHONPATH=src:tests python
tests/integration/test_models.py`` prints it; a test keeps the two equal).

A cell is either supported (every stage below must pass) or refused at ``add_adapter`` with a ValueError, for a
reason the architecture's table entry declares (`REFUSALS`); nothing else is accepted.
"""

from __future__ import annotations

import functools
import re
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

import adapterkit
from adapterkit import AdapterSetup
from adapterkit.integration.architectures import ArchitectureSpec
from tiny import ALL_ARCHS, TINY_CONFIGS, randomize, tiny_inputs, tiny_model

# matrix column -> the config it runs (sizes for the tiny models; the aliases' defaults are for hidden 768)
METHODS: dict[str, str] = {
    "seq_bn": "seq_bn",
    "par_bn": "par_bn",
    "double_seq_bn": "double_seq_bn",
    "Compacter++": "compacter++[reduction_factor=4, phm_dim=2]",
    "AdapterPlus": "AdapterPlusConfig",
    "invertible": "seq_bn_inv",
    "LoRA": "lora[intermediate_lora=True, output_lora=True, attn_matrices=['q','k','v']]",
    "(IA)^3": "ia3",
    "DoRA": "dora",
    "VeRA": "vera",
    "prefix tuning": "prefix_tuning[prefix_length=3, bottleneck_size=8]",
    "prompt tuning": "prompt_tuning[prompt_length=2]",
    "ReFT": "noreft[prefix_positions=2, suffix_positions=1]",
    "MAM": "mam",
    "UniPELT": "unipelt",
}
MERGEABLE = {"LoRA", "(IA)^3", "DoRA", "VeRA"}
USES_PREFIX = {"prefix tuning", "MAM", "UniPELT"}
USES_EMBEDDINGS = {"invertible", "prompt tuning"}

Refusal = tuple[Callable[[ArchitectureSpec], bool], set[str], str, str]
# (which architectures, which columns, the error message must match, the reason printed in docs/models.md)
REFUSALS: list[Refusal] = [
    (
        lambda spec: spec.decoder_only,
        {"prompt tuning"},
        "prompt tuning is not available",
        "decoder-only: prompts would shift positions, labels and the generation cache",
    ),
    (
        lambda spec: any(not s.attention_interface for s in spec.stacks),
        USES_PREFIX,
        "prefix tuning is not available",
        "attention does not go through transformers' AttentionInterface",
    ),
    (
        lambda spec: spec.embeddings is None and spec.embedding_output is None,
        USES_EMBEDDINGS,
        "has no token embeddings",
        "no token embeddings at the model's input (Whisper's encoder reads audio features)",
    ),
    (
        lambda spec: spec.prompt_tuning_refusal is not None,
        {"prompt tuning"},
        "prompt tuning is not available",
        "the entry's `prompt_tuning_refusal`: prompts would move the token CLIP's text tower pools, or meet BEiT's "
        "relative position bias sized for the patch grid",
    ),
    (
        lambda spec: spec.has_towers,
        {"Compacter++"},
        "shared PHM weights",
        "towers of different hidden sizes (the tiny CLIP's 32 and 24; released CLIPs' 512 and 768) cannot share "
        "PHM weights; Compacter with shared_phm_rule=False works",
    ),
]


@functools.cache
def spec_of(arch: str) -> ArchitectureSpec:
    """The table entry the tiny model of ``arch`` uses."""
    return tiny_model(arch)._adapter_target.spec


def refusal(arch: str, column: str) -> tuple[str, str] | None:
    """(message pattern, reason) if ``column`` is declared refused on ``arch``, else None."""
    spec = spec_of(arch)
    for applies, columns, pattern, reason in REFUSALS:
        if column in columns and applies(spec):
            return pattern, reason
    return None


def _config(column: str):
    config = METHODS[column]
    return getattr(adapterkit, config)() if config.endswith("Config") else config


def _tensors(output) -> list[torch.Tensor]:
    """The floating-point tensors of a model output (hidden states, embeddings, logits), in field order."""
    values = output.values() if hasattr(output, "values") else output
    return [v for v in values if isinstance(v, torch.Tensor) and v.is_floating_point()]


def _forward(model, inputs) -> list[torch.Tensor]:
    with torch.no_grad():
        return _tensors(model(**inputs))


def _projection(t: torch.Tensor) -> torch.Tensor:
    """A fixed random linear function of ``t`` (a loss whose gradient does not vanish after a final layer norm,
    as the mean square's does)."""
    weights = torch.randn(t.shape, generator=torch.Generator().manual_seed(0))
    return (t * weights.to(t.dtype)).mean()


def _equal(a: list[torch.Tensor], b: list[torch.Tensor], atol: float = 0.0) -> bool:
    return len(a) == len(b) and all(
        x.shape == y.shape and torch.allclose(x, y, atol=atol, rtol=0) for x, y in zip(a, b, strict=True)
    )


@pytest.mark.parametrize("column", list(METHODS))
@pytest.mark.parametrize("arch", ALL_ARCHS)
def test_method_on_architecture(arch, column, tmp_path):
    model = tiny_model(arch)
    inputs = tiny_inputs(arch=arch)
    base = _forward(model, inputs)
    declared = refusal(arch, column)
    if declared is not None:
        with pytest.raises(ValueError, match=declared[0]):
            model.add_adapter("a", config=_config(column))
        return

    model.add_adapter("a", config=_config(column))
    randomize(model, "a")
    assert _equal(_forward(model, inputs), base), "an inactive adapter changed the output"
    with AdapterSetup("a"):
        in_context = _forward(model, inputs)
    model.set_active_adapters("a")
    active = _forward(model, inputs)
    assert _equal(in_context, active), "AdapterSetup and set_active_adapters differ"
    assert not _equal(active, base, atol=1e-4), "the active adapter does not change the output"

    # a training step changes this adapter's parameters and nothing else
    model.train_adapter("a")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    loss = sum(_projection(t) for t in _tensors(model(**inputs)))
    loss.backward()
    optimizer.step()
    model.eval()
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed, "the training step changed nothing"
    assert all(".a." in k for k in changed), sorted(k for k in changed if ".a." not in k)
    trained = _forward(model, inputs)

    # save / load into a fresh model with the same base weights
    model.save_adapter(str(tmp_path), "a")
    fresh = tiny_model(arch)
    fresh.load_adapter(str(tmp_path), set_active=True)
    assert _equal(_forward(fresh, inputs), trained, atol=1e-6), "the reloaded adapter gives other outputs"

    if column in MERGEABLE:
        model.merge_adapter("a")
        assert _equal(_forward(model, inputs), trained, atol=1e-5), "merged differs from unmerged"
        model.reset_adapter()
        assert _equal(_forward(model, inputs), trained, atol=1e-6)


# ---- docs/models.md --------------------------------------------------------------------------------------
DOC = Path(__file__).resolve().parents[2] / "docs" / "models.md"
BEGIN, END = "<!-- models matrix: begin -->", "<!-- models matrix: end -->"
GOLDEN = Path(__file__).resolve().parents[1] / "fixtures" / "golden"


def _golden(arch: str) -> bool:
    """Whether AdapterHub-saved fixtures of ``arch`` are checked (tests/io/test_golden*.py)."""
    model_type = TINY_CONFIGS[arch]().model_type
    return any((GOLDEN / sub / model_type).is_dir() for sub in ("", "models", "methods", "composition"))


def render_matrix() -> str:
    """The architecture x method table of docs/models.md, with the refusal reasons as footnotes."""
    reasons: dict[str, int] = {}
    header = ["architecture", "stacks", *METHODS, "AdapterHub golden"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for arch in ALL_ARCHS:
        spec = spec_of(arch)
        cells = [f"`{arch}`", " + ".join(s.name or "layers" for s in spec.stacks)]
        for column in METHODS:
            declared = refusal(arch, column)
            if declared is None:
                cells.append("yes")
            else:
                number = reasons.setdefault(declared[1], len(reasons) + 1)
                cells.append(f"no ({number})")
        cells.append("yes" if _golden(arch) else "-")
        lines.append("| " + " | ".join(cells) + " |")
    notes = [f"({n}) refused at `add_adapter` with a ValueError: {reason}." for reason, n in reasons.items()]
    checks = (
        "Each \"yes\" is checked by `tests/integration/test_models.py`: add, inactive adapter changes nothing, "
        "`AdapterSetup` equals `set_active_adapters`, the active adapter changes the output, one training step "
        "changes only the adapter's parameters, save/load into a fresh model gives the same outputs, and for "
        "LoRA, (IA)^3, DoRA and VeRA merged equals unmerged and reset restores the outputs."
    )
    return "\n".join([*lines, "", *notes, "", checks])


def test_docs_models_matrix_is_current():
    text = DOC.read_text()
    found = re.search(re.escape(BEGIN) + r"\n(.*)\n" + re.escape(END), text, re.S)
    assert found, f"{DOC} lacks the {BEGIN} ... {END} markers"
    assert found.group(1) == render_matrix(), (
        "docs/models.md is out of date: run `PYTHONPATH=src:tests python tests/integration/test_models.py --write`"
    )


def write_docs() -> None:
    """Replace the matrix between the markers of docs/models.md."""
    text = DOC.read_text()
    start, end = text.index(BEGIN) + len(BEGIN), text.index(END)
    DOC.write_text(text[:start] + "\n" + render_matrix() + "\n" + text[end:])


if __name__ == "__main__":
    if "--write" in sys.argv:
        write_docs()
    else:
        print(render_matrix())
