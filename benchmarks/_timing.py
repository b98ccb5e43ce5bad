"""Timing, statistics and environment helpers shared by the benchmark scripts in this folder.

- environment: `machine_info` (CPU, cores, versions, commit, date), `environment_lines`, `loadavg`;
- load measurement: `system_busy_s`, `own_cpu_s` and `other_cores`, the cores that *other* processes
  (and hypervisor steal) used while a sample ran, from /proc/stat; a sample is "quiet" when that is at
  most a threshold;
- sampling: `sampled_rounds` (variants round-robin with a rotating start, warm-up rounds, optionally
  more rounds until every variant has enough quiet samples) and `variant_stats`, the per-variant summary;
- statistics: `summary`, `bootstrap_ci` (paired by round), `unpaired_ci` and `ratio_stats`, every
  statistic of one ratio of medians;
- report text: `load_text`, `other_load_text`;
- command line and output files: `add_sampling_arguments`, `add_quiet_argument`, `sampling_settings`,
  `add_output_arguments`, `write_outputs`.

The scripts put this folder on ``sys.path`` (running ``python benchmarks/x.py`` does it) and import
from ``_timing``.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import gc
import json
import os
import platform
import random
import statistics
import subprocess
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

MIN_QUIET = 3  # quiet samples needed on both sides for a quiet-only ratio
VERDICT_QUIET = 5  # quiet samples each side needs before a verdict uses the quiet-only ratio


# ---- environment -------------------------------------------------------------------------------
def machine_info() -> dict[str, Any]:
    """CPU model, logical and usable CPUs, platform, python / torch / transformers / adapterkit versions,
    and the date (UTC)."""
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    import transformers

    import adapterkit

    return {
        "cpu": cpu,
        "logical_cpus": os.cpu_count(),
        "usable_cpus": usable,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "adapterkit": adapterkit.__version__,
        "commit": git_commit(),
        "date_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
    }


def git_commit() -> str | None:
    """The repository's HEAD commit (short), with ``+dirty`` when ``src/`` or ``benchmarks/`` have
    uncommitted changes (the run measured those); None outside a git checkout."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        head = subprocess.run(
            ["git", "-C", root, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", root, "status", "--porcelain", "--", "src", "benchmarks"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ("+dirty" if dirty else "")


def environment_lines(machine: dict[str, Any], threads: int, *, markdown: bool = False) -> list[str]:
    """The "Machine: ..." and "Versions: ..." lines of a report (``markdown``: as RESULTS.md list items)."""
    m = machine
    cpus = f"{m['cpu']}, {m['usable_cpus']} usable / {m['logical_cpus']} logical CPUs"
    versions = (
        f"python {m['python']}, torch {m['torch']}, transformers {m['transformers']}, adapterkit {m['adapterkit']}"
    )
    commit = f" at commit {m['commit']}" if m.get("commit") else ""
    if markdown:
        return [f"- Machine: {cpus}, `torch.set_num_threads({threads})`.", f"- Versions: {versions}{commit}."]
    return [f"Machine: {cpus}; torch threads {threads}", f"Versions: {versions}{commit}; {m['date_utc']}"]


def loadavg() -> list[float] | None:
    """The 1, 5 and 15 minute load averages, or None where the OS does not report them."""
    try:
        return list(os.getloadavg())
    except OSError:
        return None


_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def system_busy_s() -> float | None:
    """CPU seconds the whole machine has been busy (all cores; includes hypervisor steal), or None."""
    try:
        with open("/proc/stat") as f:
            vals = [int(v) for v in f.readline().split()[1:9]]  # user nice system idle iowait irq softirq steal
    except (OSError, ValueError):
        return None
    return (sum(vals) - vals[3] - vals[4]) / _CLK_TCK


def own_cpu_s() -> float:
    """CPU seconds (user + system, all threads) this process has used."""
    t = os.times()
    return t.user + t.system


def other_cores(busy0: float | None, own0: float, busy1: float | None, own1: float, wall_s: float) -> float | None:
    """Cores other processes used during a sample: (machine busy time - own CPU time) / wall time.

    Args:
        busy0, own0: `system_busy_s` and `own_cpu_s` before the sample.
        busy1, own1: the same after it.
        wall_s: the sample's wall time.

    Returns:
        The load in cores (>= 0), or None when /proc/stat could not be read.
    """
    if busy0 is None or busy1 is None:
        return None
    return max(0.0, (busy1 - busy0) - (own1 - own0)) / wall_s


# ---- sampling ----------------------------------------------------------------------------------
def summary(xs: list[float]) -> dict[str, Any]:
    """Median, minimum, quartiles, count and the samples themselves (in round order) of ``xs``."""
    qs = statistics.quantiles(xs, n=4) if len(xs) >= 2 else [xs[0]] * 3
    return {
        "median_s": statistics.median(xs),
        "min_s": min(xs),
        "p25_s": qs[0],
        "p75_s": qs[2],
        "n": len(xs),
        "samples_s": xs,
    }  # samples are in round order (one per round)


def variant_stats(
    wall: list[float], cpu: list[float], other: list[float | None], quiet_threshold: float
) -> dict[str, Any]:
    """One variant's `summary` of wall times plus CPU times, other-load values and its quiet samples.

    Args:
        wall, cpu, other: per sample (round order): wall seconds, process CPU seconds, other processes'
            load in cores (None: unknown).
        quiet_threshold: the most cores of other load a quiet sample may have seen.
    """
    quiet = [w for w, x in zip(wall, other, strict=True) if x is not None and x <= quiet_threshold]
    return summary(wall) | {
        "cpu_median_s": statistics.median(cpu),
        "cpu_samples_s": cpu,
        "other_load_cores": other,
        "quiet_n": len(quiet),
        "quiet_median_s": statistics.median(quiet) if quiet else None,
        "quiet_samples_s": quiet,
    }


def wait_until_quiet(threshold: float, max_wait_s: float, window_s: float = 0.25) -> bool:
    """Sleep in windows of ``window_s`` seconds until one window in which other processes used at most
    ``threshold`` cores (this process idle, so all busy time is theirs), or ``max_wait_s`` have passed.

    Returns:
        True when a quiet window was seen (or the load cannot be read), False when the wait ran out.
    """
    deadline = time.perf_counter() + max_wait_s
    while True:
        busy0, own0, t0 = system_busy_s(), own_cpu_s(), time.perf_counter()
        time.sleep(window_s)
        load = other_cores(busy0, own0, system_busy_s(), own_cpu_s(), time.perf_counter() - t0)
        if load is None or load <= threshold:
            return True
        if time.perf_counter() >= deadline:
            return False


def sampled_rounds(
    label: str,
    runs: dict[str, Callable[[], Any]],
    *,
    warmup: int,
    repeats: int,
    quiet_threshold: float,
    min_quiet: int = 0,
    max_rounds: int | None = None,
    wait_quiet_s: float = 0.0,
) -> dict[str, Any]:
    """Time every variant of ``runs`` once per round, round-robin with a rotating start.

    ``warmup`` untimed rounds, then ``repeats`` timed rounds; with ``min_quiet`` > 0, more rounds follow
    until every variant has that many quiet samples or ``max_rounds`` timed rounds have run. A sample is
    quiet when other processes (and hypervisor steal) used at most ``quiet_threshold`` cores while it ran
    (`other_cores`). With ``wait_quiet_s`` > 0, each sample first waits (up to that many seconds) for a
    quiet moment (`wait_until_quiet`), which on a shared machine raises the share of quiet samples. The
    garbage collector is off while timing.

    Args:
        label: prefix of the progress lines printed per round.
        runs: variant name -> a function that runs one sample of it.
        warmup, repeats: untimed and (at least) timed rounds.
        quiet_threshold: see above.
        min_quiet, max_rounds: see above (``max_rounds`` None: ``repeats``).
        wait_quiet_s: see above (0: start every sample at once).

    Returns:
        Per variant, `variant_stats` of its samples; under ``"_loadavg"`` the load averages before and after.
    """
    max_rounds = repeats if max_rounds is None else max_rounds
    names = tuple(runs)
    wall: dict[str, list[float]] = {n: [] for n in names}
    cpu: dict[str, list[float]] = {n: [] for n in names}
    other: dict[str, list[float | None]] = {n: [] for n in names}

    def quiet_count(n: str) -> int:
        return sum(1 for x in other[n] if x is not None and x <= quiet_threshold)

    load_before = loadavg()
    gc.collect()
    gc.disable()
    try:
        r = 0
        while True:
            timed = r - warmup
            if timed >= repeats and (timed >= max_rounds or all(quiet_count(n) >= min_quiet for n in names)):
                break
            line = []
            for j in range(len(names)):
                name = names[(r + j) % len(names)]
                if wait_quiet_s > 0:
                    wait_until_quiet(quiet_threshold, wait_quiet_s)
                busy0, own0 = system_busy_s(), own_cpu_s()
                c0, t0 = time.process_time(), time.perf_counter()
                runs[name]()
                dt, dc = time.perf_counter() - t0, time.process_time() - c0
                load = other_cores(busy0, own0, system_busy_s(), own_cpu_s(), dt)
                if timed >= 0:
                    wall[name].append(dt)
                    cpu[name].append(dc)
                    other[name].append(load)
                line.append(f"{name} {dt:.3f}" + (f" ({load:.2f})" if load is not None else ""))
            kind = "warm-up" if timed < 0 else f"timed {timed + 1}"
            print(f"  {label} round {r + 1} ({kind}): " + ", ".join(line), flush=True)
            r += 1
    finally:
        gc.enable()
    out: dict[str, Any] = {n: variant_stats(wall[n], cpu[n], other[n], quiet_threshold) for n in names}
    out["_loadavg"] = {"before": load_before, "after": loadavg()}
    return out


# ---- statistics --------------------------------------------------------------------------------
def bootstrap_ci(pairs: list[tuple[float, float]], reps: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95% percentile-bootstrap interval of median(num) / median(den), resampling whole rounds."""
    rng = random.Random(seed)
    n = len(pairs)
    stats = []
    for _ in range(reps):
        sample = [pairs[rng.randrange(n)] for _ in range(n)]
        stats.append(statistics.median(a for a, _ in sample) / statistics.median(b for _, b in sample))
    stats.sort()
    return stats[int(0.025 * (reps - 1))], stats[int(0.975 * (reps - 1))]


def unpaired_ci(num: list[float], den: list[float], reps: int = 2000, seed: int = 0) -> list[float]:
    """95% percentile-bootstrap interval of median(num) / median(den), resampling each side on its own
    (quiet samples of two variants come from different rounds, so they are not paired)."""
    rng = random.Random(seed)
    stats = sorted(
        statistics.median(rng.choices(num, k=len(num))) / statistics.median(rng.choices(den, k=len(den)))
        for _ in range(reps)
    )
    return [stats[int(0.025 * (reps - 1))], stats[int(0.975 * (reps - 1))]]


def ratio_stats(num: dict[str, Any], den: dict[str, Any]) -> dict[str, Any]:
    """Statistics of median(num) / median(den) for two `variant_stats` results of the same rounds.

    Returns:
        ``value`` (ratio of all-sample medians), ``ci95`` (bootstrap over rounds), the
        ``median_of_paired_ratios``, ``quiet_value`` and ``quiet_ci95`` (quiet-sample medians, None
        unless both sides have `MIN_QUIET` quiet samples), ``min_ratio``, ``cpu_time_ratio`` (of median
        CPU times) and ``quiet_n`` ([num, den]).
    """
    pairs = list(zip(num["samples_s"], den["samples_s"], strict=True))
    quiet, quiet_ci = None, None
    if min(num["quiet_n"], den["quiet_n"]) >= MIN_QUIET:
        quiet = num["quiet_median_s"] / den["quiet_median_s"]
        quiet_ci = unpaired_ci(num["quiet_samples_s"], den["quiet_samples_s"])
    return {
        "value": num["median_s"] / den["median_s"],
        "ci95": list(bootstrap_ci(pairs)),
        "median_of_paired_ratios": statistics.median(a / b for a, b in pairs),
        "quiet_value": quiet,
        "quiet_ci95": quiet_ci,
        "min_ratio": num["min_s"] / den["min_s"],
        "cpu_time_ratio": num["cpu_median_s"] / den["cpu_median_s"],
        "quiet_n": [num["quiet_n"], den["quiet_n"]],
    }


# ---- report text -------------------------------------------------------------------------------
def load_text(phase: dict[str, Any]) -> str:
    """The 1-minute load averages before and after a `sampled_rounds` phase, as text."""
    la = phase.get("_loadavg", {})
    b, a = la.get("before"), la.get("after")
    return f"load avg (1 min) {b[0]:.2f} before, {a[0]:.2f} after" if b and a else "load avg unknown"


def other_load_text(phase: dict[str, Any], variants: Sequence[str]) -> str:
    """Median and maximum of other processes' load over every sample of ``variants``, as text."""
    loads = [x for v in variants for x in phase[v]["other_load_cores"] if x is not None]
    if not loads:
        return "other processes' load unknown"
    return f"other processes' load per sample: median {statistics.median(loads):.2f}, max {max(loads):.2f} cores"


# ---- command line and output files -------------------------------------------------------------
def add_quiet_argument(ap: argparse.ArgumentParser) -> None:
    """Add ``--quiet-threshold CORES`` (default 0.1) to ``ap``."""
    ap.add_argument(
        "--quiet-threshold",
        type=float,
        default=0.1,
        metavar="CORES",
        help="a sample is 'quiet' if other processes used at most this many cores meanwhile",
    )


def add_sampling_arguments(ap: argparse.ArgumentParser, *, repeats: int, warmup: int, max_rounds: int) -> None:
    """Add the `sampled_rounds` options to ``ap``: ``--repeats``, ``--warmup``, ``--min-quiet``, ``--max-rounds``,
    ``--wait-quiet`` and ``--quiet-threshold``, with the given defaults (``--min-quiet`` and ``--wait-quiet`` 0)."""
    ap.add_argument("--repeats", type=int, default=repeats, help="timed rounds per variant")
    ap.add_argument("--warmup", type=int, default=warmup, help="untimed rounds per variant")
    ap.add_argument(
        "--min-quiet",
        type=int,
        default=0,
        metavar="N",
        help="after --repeats, keep timing rounds until every variant has N quiet samples (or --max-rounds)",
    )
    ap.add_argument("--max-rounds", type=int, default=max_rounds, help="most timed rounds per phase with --min-quiet")
    ap.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="before each sample, wait up to this long for a moment when other processes are quiet",
    )
    add_quiet_argument(ap)


def sampling_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The `sampled_rounds` keyword arguments from options added by `add_sampling_arguments`."""
    return {
        "warmup": args.warmup,
        "repeats": args.repeats,
        "quiet_threshold": args.quiet_threshold,
        "min_quiet": args.min_quiet,
        "max_rounds": args.max_rounds,
        "wait_quiet_s": args.wait_quiet,
    }


def add_output_arguments(ap: argparse.ArgumentParser, *, markdown: bool = True) -> None:
    """Add ``--json OUT.json`` and (with ``markdown``) ``--markdown OUT.md`` to ``ap``."""
    ap.add_argument("--json", default=None, metavar="OUT.json", help="write all samples and results to this file")
    if markdown:
        ap.add_argument("--markdown", default=None, metavar="OUT.md", help="write a RESULTS.md entry to this file")


def write_outputs(
    results: dict[str, Any],
    json_path: str | None,
    markdown_path: str | None = None,
    markdown: Callable[[dict[str, Any]], str] | None = None,
) -> None:
    """Write ``results`` as JSON to ``json_path`` and ``markdown(results)`` to ``markdown_path`` (each
    when given), printing the paths written."""
    if json_path:
        with open(json_path, "w") as f:
            json.dump(results, f, indent=2)
        print(f"wrote {json_path}")
    if markdown_path and markdown is not None:
        with open(markdown_path, "w") as f:
            f.write(markdown(results) + "\n")
        print(f"wrote {markdown_path}")
