"""The user guides' code runs: every ```python block of a guide, in order, in one namespace."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DOCS = Path(__file__).parents[1] / "docs"
GUIDES = [
    "bottleneck_family.md",
    "composition.md",
    "custom_models.md",
    "fusion.md",
    "heads.md",
    "lora_family.md",
    "methods.md",
    "models_decoders.md",
    "models_encoders.md",
    "models_seq2seq.md",
    "models_vision.md",
    "models_speech_and_composite.md",
    "parallel_and_generation.md",
    "reft.md",
    "invertible.md",
    "prompt_tuning.md",
    "unions_and_averaging.md",
]


@pytest.mark.parametrize("guide", GUIDES)
def test_guide_snippets_run(guide):
    text = (DOCS / guide).read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)
    assert blocks, f"{guide} has no python snippets"
    namespace: dict = {"__name__": f"docs.{guide}"}
    for i, block in enumerate(blocks):
        try:
            exec(compile(block, f"{guide} snippet {i + 1}", "exec"), namespace)
        except Exception as error:  # name the snippet, keep the original traceback
            raise AssertionError(f"{guide} snippet {i + 1} failed:\n{block}") from error
