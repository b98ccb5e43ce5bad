"""Smoke test of benchmarks/generate.py: the whole script on a tiny decoder, a few tokens, one round."""

from __future__ import annotations

import importlib.util
import json
import time
from pathlib import Path

import torch

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "generate.py"
TINY = ["--hidden", "32", "--intermediate", "64", "--layers", "2", "--heads", "4", "--kv-heads", "2"]
TINY += ["--vocab", "100", "--prompt-len", "5", "--new-tokens", "3", "--batches", "1,2", "--threads", "1"]


def load_script():
    spec = importlib.util.spec_from_file_location("generate_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generate_benchmark_runs_every_variant_and_checks_merging(tmp_path):
    script = load_script()
    variants = "hf,lora,lora_merged,seq_bn,lora_all,lora_all_merged"
    out_json, out_md = tmp_path / "g.json", tmp_path / "g.md"
    argv = [*TINY, "--repeats", "1", "--warmup", "0", "--variants", variants]
    results = script.main([*argv, "--json", str(out_json), "--markdown", str(out_md)])

    assert torch.get_num_threads() == 1
    assert results["settings"]["variants"] == ["hf", "base", *variants.split(",")[1:]]
    assert json.loads(out_json.read_text())["settings"]["batches"] == [1, 2]
    for batch in (1, 2):
        phase = results["batches"][str(batch)]
        checks = phase["checks"]
        assert checks["generated_shape"] == [batch, 3]
        assert checks["merged_tokens_equal"] == {"lora_merged": True, "lora_all_merged": True}
        assert checks["logit_diffs"]["hf vs base"] == 0.0
        # the LoRA adapters change the output (lora_B is randomised), and merging keeps that change
        assert checks["logit_diff_from_base"]["lora"] > 1e-3
        assert abs(checks["logit_diff_from_base"]["lora_merged"] - checks["logit_diff_from_base"]["lora"]) < 1e-4
        timings = phase["timings"]
        assert timings["lora"]["tokens_per_s"] == batch * 3 / timings["lora"]["median_s"]
        ratio = {r["variant"]: r for r in phase["ratios"]}
        assert set(ratio) == set(results["settings"]["variants"]) - {"base"}
        assert ratio["seq_bn"]["value"] == timings["base"]["median_s"] / timings["seq_bn"]["median_s"]
    text = out_md.read_text()
    assert text.startswith("## generate.py, ") and "| lora_all_merged |" in text


def test_wait_until_quiet_returns_on_a_quiet_window_and_gives_up_after_max_wait():
    load_script()  # puts benchmarks/ on sys.path
    from _timing import wait_until_quiet

    assert wait_until_quiet(float("inf"), max_wait_s=0.0, window_s=0.01) is True
    # no window can have negative load: waits out max_wait_s, then reports False
    start = time.perf_counter()
    assert wait_until_quiet(-1.0, max_wait_s=0.05, window_s=0.01) is False
    assert time.perf_counter() - start >= 0.05
