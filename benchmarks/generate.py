"""Generation benchmark: tokens/s of ``generate()`` with LoRA (unmerged, merged) and ``seq_bn`` vs the base model.

Model: a tiny Llama-style decoder built in code, ``LlamaForCausalLM(LlamaConfig(...))`` with random weights
(seeded; by default hidden 512, 8 layers, 8 query heads sharing 2 key/value heads (GQA), SwiGLU MLP 1408,
vocab 32000, untied output layer), given the adapter API with ``adapterkit.init(model)``. Each variant is
its own instance with the same base weights, in eval mode:

- ``hf``: plain transformers ``LlamaForCausalLM``, no ``adapterkit.init`` (shows what ``init`` itself costs);
- ``base``: ``adapterkit.init`` and no adapter: the baseline of every ratio (the same class as the
  adapter variants, without adapters);
- ``lora``: LoRA on q and v (the ``"lora"`` config: r=8, alpha=8), unmerged; ``lora_B`` is drawn from
  N(0, ``--lora-b-std``) so the update is not zero;
- ``lora_merged``: the same adapter weights folded into the base weights with ``merge_adapter``;
- ``seq_bn``: a sequential bottleneck adapter (the ``"seq_bn"`` config, reduction factor 16);
- ``lora_all``, ``lora_all_merged`` (only with ``--variants``): LoRA r=8 on q, k, v and both MLP projections.

Workload: greedy ``generate()`` (``do_sample=False``, one beam, KV cache) of a fixed random prompt batch
(``--prompt-len`` tokens, mask all ones) with ``min_new_tokens = max_new_tokens = --new-tokens``, so every
variant produces exactly the same number of tokens; ``torch.inference_mode()``, ``torch.set_num_threads(2)``
by default, once per batch size in ``--batches``. Tokens/s = batch x new tokens / wall time of the whole
``generate()`` call (prefill included).

Before timing, per batch size, the script checks that ``hf`` and ``base`` give the same next-token logits
(``init`` without adapters must not change the model) and so do ``lora`` and ``lora_merged`` (within
``--tolerance``), and reports whether merged and unmerged LoRA generate the same tokens and how many
generated tokens of each variant differ from ``base``'s.

Variants run round-robin with a rotating start (`_timing.sampled_rounds`): ``--warmup`` untimed rounds,
then ``--repeats`` timed ones, more with ``--min-quiet`` until every variant has that many quiet samples
(other processes used at most ``--quiet-threshold`` cores meanwhile). Reported per batch size: median
seconds per call and tokens/s; ratios ``tokens/s of variant / tokens/s of base`` (= base median time /
variant median time) of all samples and of quiet samples, with bootstrap 95% intervals. No targets.

Usage::

    PYTHONPATH=src python benchmarks/generate.py [--repeats N] [--min-quiet N] [--json out.json] [--markdown out.md]
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _timing import (  # noqa: E402  (the folder's shared timing, statistics and environment helpers)
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

VARIANTS = ("hf", "base", "lora", "lora_merged", "seq_bn", "lora_all", "lora_all_merged")
DEFAULT_VARIANTS = ("hf", "base", "lora", "lora_merged", "seq_bn")
BASELINE = "base"
ADAPTER = "a"
# merged variant -> the unmerged variant with the same adapter weights
MERGED_PAIRS = {"lora_merged": "lora", "lora_all_merged": "lora_all"}
DESCRIPTIONS = {
    "hf": "plain transformers LlamaForCausalLM (no adapterkit.init)",
    "base": "adapterkit.init, no adapter (the baseline)",
    "lora": "LoRA q,v r=8 alpha=8, unmerged",
    "lora_merged": "the same LoRA, merge_adapter",
    "seq_bn": "seq_bn (reduction factor 16)",
    "lora_all": "LoRA q,k,v + MLP in/out r=8 alpha=8, unmerged",
    "lora_all_merged": "the same LoRA, merge_adapter",
}


# ---- set-up ------------------------------------------------------------------------------------
def llama_config(args):
    """The tiny Llama-style ``LlamaConfig`` of the command line's sizes."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        intermediate_size=args.intermediate,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.kv_heads,
        max_position_embeddings=max(256, args.prompt_len + args.new_tokens),
        tie_word_embeddings=False,
    )


def adapter_config(variant: str):
    """The adapter config of ``variant`` (None for the variants without adapter)."""
    from adapterkit import LoRAConfig, SeqBnConfig

    if variant in ("lora", "lora_merged"):
        return LoRAConfig()
    if variant in ("lora_all", "lora_all_merged"):
        return LoRAConfig(attn_matrices=["q", "k", "v"], intermediate_lora=True, output_lora=True)
    if variant == "seq_bn":
        return SeqBnConfig()
    return None


def build(variant: str, config, args):
    """One eval-mode model of ``variant``: the same base weights (seed ``args.seed``) for every variant,
    the same adapter weights (seed ``args.seed + 1``) for a merged variant and its unmerged twin."""
    from transformers import LlamaForCausalLM

    import adapterkit

    torch.manual_seed(args.seed)
    model = LlamaForCausalLM(config)
    if variant != "hf":
        adapterkit.init(model)
    adapter = adapter_config(variant)
    if adapter is not None:
        torch.manual_seed(args.seed + 1)
        model.add_adapter(ADAPTER, config=adapter)
        if variant.startswith("lora"):
            # LoRA's B starts at zero: without values the adapter would be the identity
            g = torch.Generator().manual_seed(args.seed + 2)
            with torch.no_grad():
                for name, p in model.named_parameters():
                    if "lora_B" in name:
                        p.copy_(torch.randn(p.shape, generator=g) * args.lora_b_std)
        model.set_active_adapters(ADAPTER)
        if variant in MERGED_PAIRS:
            model.merge_adapter(ADAPTER)
    return model.eval()


def prompt(config, batch: int, length: int, seed: int) -> dict[str, torch.Tensor]:
    """A random prompt batch (token ids above the special ids 0-2), mask all ones."""
    g = torch.Generator().manual_seed(seed + batch)
    ids = torch.randint(3, config.vocab_size, (batch, length), generator=g)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def generate(model, inputs: dict[str, torch.Tensor], new_tokens: int) -> torch.Tensor:
    """Greedy ``generate()`` of exactly ``new_tokens`` tokens per row; returns the generated tokens only."""
    with torch.inference_mode():
        out = model.generate(
            **inputs,
            do_sample=False,
            num_beams=1,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            pad_token_id=model.config.eos_token_id,
        )
    return out[:, inputs["input_ids"].shape[1] :]


def next_token_logits(model, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """The logits of the token after the prompt (one forward)."""
    with torch.inference_mode():
        return model(**inputs).logits[:, -1]


# ---- correctness checks ------------------------------------------------------------------------
def check(models: dict[str, Any], inputs: dict[str, torch.Tensor], new_tokens: int, tolerance: float) -> dict[str, Any]:
    """Logit and token comparisons for one prompt batch.

    Returns:
        ``logit_diffs`` (max |difference| of next-token logits: ``hf`` vs ``base``, merged vs unmerged),
        ``merged_tokens_equal`` (per merged variant: generated tokens identical to the unmerged twin's),
        ``merged_first_mismatch`` (position of the first differing token, or None),
        ``tokens_differing_from_base`` (per variant: share of generated tokens unlike ``base``'s),
        ``logit_diff_from_base`` (per variant: max |difference| of its next-token logits from ``base``'s,
        i.e. how much the adapter changes the output),
        ``generated_shape``.

    Raises:
        SystemExit: when a logit difference exceeds ``tolerance`` or a variant generates another number
            of tokens than asked.
    """
    tokens = {v: generate(m, inputs, new_tokens) for v, m in models.items()}
    logits = {v: next_token_logits(m, inputs) for v, m in models.items()}
    expected = (inputs["input_ids"].shape[0], new_tokens)
    for v, t in tokens.items():
        if tuple(t.shape) != expected:
            raise SystemExit(f"variant {v!r} generated tokens of shape {tuple(t.shape)}, expected {expected}")
    pairs = [(m, u) for m, u in MERGED_PAIRS.items() if m in models and u in models]
    if "hf" in models and BASELINE in models:
        pairs.append(("hf", BASELINE))
    diffs = {f"{a} vs {b}": (logits[a] - logits[b]).abs().max().item() for a, b in pairs}
    for name, diff in diffs.items():
        if diff > tolerance:
            raise SystemExit(f"next-token logits {name} differ by {diff:.2e} (> --tolerance {tolerance:.0e})")
    equal, first = {}, {}
    for merged, unmerged in MERGED_PAIRS.items():
        if merged in tokens and unmerged in tokens:
            same = tokens[merged] == tokens[unmerged]
            equal[merged] = bool(same.all())
            cols = (~same).any(dim=0).nonzero()
            first[merged] = int(cols[0]) if len(cols) else None
    differing, moved = {}, {}
    if BASELINE in tokens:
        differing = {v: (t != tokens[BASELINE]).float().mean().item() for v, t in tokens.items()}
        moved = {v: (x - logits[BASELINE]).abs().max().item() for v, x in logits.items()}
    return {
        "logit_diffs": diffs,
        "merged_tokens_equal": equal,
        "merged_first_mismatch": first,
        "tokens_differing_from_base": differing,
        "logit_diff_from_base": moved,
        "generated_shape": list(expected),
    }


# ---- phases ------------------------------------------------------------------------------------
def run_batch(models: dict[str, Any], config, batch: int, args) -> dict[str, Any]:
    """Checks, then timed rounds of every variant for one batch size; per variant also tokens/s."""
    inputs = prompt(config, batch, args.prompt_len, args.seed)
    checks = check(models, inputs, args.new_tokens, args.tolerance)
    print(
        f"  batch {batch} checks: logits max |diff| "
        + ", ".join(f"{k} {v:.1e}" for k, v in checks["logit_diffs"].items())
        + "; merged == unmerged tokens: "
        + (", ".join(f"{k} {v}" for k, v in checks["merged_tokens_equal"].items()) or "-"),
        flush=True,
    )

    def runner(model) -> Callable[[], Any]:
        return lambda: generate(model, inputs, args.new_tokens)

    timings = sampled_rounds(f"batch {batch}", {v: runner(m) for v, m in models.items()}, **sampling_settings(args))
    tokens = batch * args.new_tokens
    for v in models:
        t = timings[v]
        t["tokens_per_s"] = tokens / t["median_s"]
        t["quiet_tokens_per_s"] = tokens / t["quiet_median_s"] if t["quiet_n"] else None
    return {"timings": timings, "checks": checks}


def compute_ratios(phase: dict[str, Any], variants: Sequence[str]) -> list[dict[str, Any]]:
    """tokens/s of each variant / tokens/s of ``base`` (= base median time / variant median time)."""
    t = phase["timings"]
    # a tokens/s ratio is the inverse time ratio: ratio_stats(base, variant) = base time / variant time
    return [
        {"name": f"{v} / {BASELINE}", "variant": v} | ratio_stats(t[BASELINE], t[v]) for v in variants if v != BASELINE
    ]


# ---- report ------------------------------------------------------------------------------------
def _ci(ci: list[float] | None) -> str:
    return f"{ci[0]:.3f}-{ci[1]:.3f}" if ci else "-"


def _opt(x: float | None, fmt: str = ".3f") -> str:
    return "-" if x is None else format(x, fmt)


def _merged_text(checks: dict[str, Any]) -> str:
    """Per merged variant: whether it generated the same tokens as its unmerged twin."""
    return ", ".join(
        f"{k} identical" if ok else f"{k} differ from generated token {checks['merged_first_mismatch'][k]}"
        for k, ok in checks["merged_tokens_equal"].items()
    )


def _vs_base(checks: dict[str, Any], variant: str) -> str:
    """Share of ``variant``'s generated tokens unlike ``base``'s, and its next-token logits' max |diff|."""
    share, diff = checks["tokens_differing_from_base"].get(variant), checks["logit_diff_from_base"].get(variant)
    return "-" if share is None else f"{100 * share:.1f}% / {diff:.1e}"


def report(results: dict[str, Any]) -> str:
    """The run as plain text: settings, per batch size the checks, timings and ratios."""
    m, s = results["machine"], results["settings"]
    lines = [
        *environment_lines(m, s["threads"]),
        f"Model: {s['model']}; prompt {s['prompt_len']} tokens, {s['new_tokens']} new tokens (greedy)",
        f"{s['warmup']} warm-up rounds, then timed rounds (at least {s['repeats']}; --min-quiet {s['min_quiet']}), "
        "variants round-robin with a rotating start"
        + (f"; each sample waits up to {s['wait_quiet']:g} s for a quiet moment" if s["wait_quiet"] else ""),
        "",
    ]
    for batch in s["batches"]:
        phase = results["batches"][str(batch)]
        t, c = phase["timings"], phase["checks"]
        variants = s["variants"]
        lines.append(
            f"Batch {batch}: {t[variants[0]]['n']} timed rounds; {load_text(t)}; {other_load_text(t, variants)}"
        )
        lines.append(
            f"{'variant':<17}{'median s':>9}{'min s':>7}{'tokens/s':>9}{'quiet med s (n)':>17}{'quiet tok/s':>12}"
            f"{'CPU s':>7}  tokens unlike base / logit diff"
        )
        for v in variants:
            x = t[v]
            quiet = f"{x['quiet_median_s']:.3f} ({x['quiet_n']})" if x["quiet_n"] else f"- ({x['quiet_n']})"
            lines.append(
                f"{v:<17}{x['median_s']:>9.3f}{x['min_s']:>7.3f}{x['tokens_per_s']:>9.1f}{quiet:>17}"
                f"{_opt(x['quiet_tokens_per_s'], '.1f'):>12}{x['cpu_median_s']:>7.3f}  {_vs_base(c, v)}"
            )
        lines.append(
            "  checks: next-token logits max |diff| "
            + ", ".join(f"{k} {v:.1e}" for k, v in c["logit_diffs"].items())
            + f"; merged vs unmerged LoRA tokens: {_merged_text(c) or '-'}"
        )
        lines.append(f"{'tokens/s ratio':<22}{'all':>7}{'95% CI':>13}{'quiet':>7}{'95% CI':>13}{'CPU':>7}")
        for r in phase["ratios"]:
            lines.append(
                f"{r['name']:<22}{r['value']:>7.3f}{_ci(r['ci95']):>13}{_opt(r['quiet_value']):>7}"
                f"{_ci(r['quiet_ci95']):>13}{r['cpu_time_ratio']:>7.3f}"
            )
        lines.append("")
    lines.append(
        "ratio = tokens/s of variant / tokens/s of baseline = baseline median time / variant median time "
        "(all samples; quiet: quiet-sample medians, >= 3 each); 95% CI: bootstrap (paired by round; quiet: "
        "per side); CPU: of median process CPU times"
    )
    return "\n".join(lines)


def markdown(results: dict[str, Any]) -> str:
    """The run as a RESULTS.md entry (heading, settings, one table per batch size); notes are for the author."""
    m, s = results["machine"], results["settings"]
    lines = [
        f"## generate.py, {m['date_utc'][:16]} UTC",
        "",
        f"`PYTHONPATH=src python benchmarks/generate.py{' ' + s['argv'] if s['argv'] else ''}`",
        "",
        *environment_lines(m, s["threads"], markdown=True),
        f"- {s['model']}; greedy `generate()`, prompt {s['prompt_len']} random tokens (mask all ones), "
        f"`min_new_tokens = max_new_tokens = {s['new_tokens']}`, `torch.inference_mode()`. Variants interleaved "
        f"round-robin after {s['warmup']} warm-up rounds"
        + (f", each sample after waiting up to {s['wait_quiet']:g} s for a quiet moment" if s["wait_quiet"] else "")
        + f". Whole script: {results['wall_s']:.0f} s.",
        "- Variants: " + "; ".join(f"`{v}` = {DESCRIPTIONS[v]}" for v in s["variants"]) + ".",
    ]
    for batch in s["batches"]:
        phase = results["batches"][str(batch)]
        t, c = phase["timings"], phase["checks"]
        merged = _merged_text(c)
        lines += [
            "",
            f"**Batch {batch}** ({batch * s['new_tokens']} tokens per call; {t[s['variants'][0]]['n']} timed rounds; "
            f"{load_text(t)}; {other_load_text(t, s['variants'])}). Checks: next-token logits max |diff| "
            + ", ".join(f"{k} {v:.1e}" for k, v in c["logit_diffs"].items())
            + (f"; merged vs unmerged LoRA tokens: {merged}" if merged else "")
            + ".",
            "",
            "| variant | median s | tokens/s | quiet median s (n) | quiet tokens/s | tokens/s ratio (all) | 95% CI "
            "| ratio (quiet) | 95% CI | tokens unlike base / logit diff |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        ratios = {r["variant"]: r for r in phase["ratios"]}
        for v in s["variants"]:
            x, r = t[v], ratios.get(v)
            quiet = f"{x['quiet_median_s']:.3f} ({x['quiet_n']})" if x["quiet_n"] else f"- ({x['quiet_n']})"
            ratio = (
                f"{r['value']:.3f} | {_ci(r['ci95'])} | {_opt(r['quiet_value'])} | {_ci(r['quiet_ci95'])}"
                if r
                else "1 (baseline) | - | - | -"
            )
            lines.append(
                f"| {v} | {x['median_s']:.3f} | {x['tokens_per_s']:.1f} | {quiet} | "
                f"{_opt(x['quiet_tokens_per_s'], '.1f')} | {ratio} | {_vs_base(c, v)} |"
            )
    return "\n".join(lines)


# ---- command line ------------------------------------------------------------------------------
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line (``argv`` None: ``sys.argv[1:]``)."""
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_sampling_arguments(ap, repeats=10, warmup=2, max_rounds=40)
    ap.add_argument("--batches", default="1,8", help="comma-separated prompt batch sizes")
    ap.add_argument("--prompt-len", type=int, default=32, help="prompt tokens per row")
    ap.add_argument("--new-tokens", type=int, default=64, help="tokens generated per row (min = max)")
    ap.add_argument(
        "--variants",
        default=",".join(DEFAULT_VARIANTS),
        help=f"comma-separated, from {', '.join(VARIANTS)} ('{BASELINE}' is always included)",
    )
    ap.add_argument("--hidden", type=int, default=512, help="model hidden size")
    ap.add_argument("--intermediate", type=int, default=1408, help="MLP intermediate size")
    ap.add_argument("--layers", type=int, default=8, help="decoder layers")
    ap.add_argument("--heads", type=int, default=8, help="attention (query) heads")
    ap.add_argument("--kv-heads", type=int, default=2, help="key/value heads (GQA)")
    ap.add_argument("--vocab", type=int, default=32000, help="vocabulary size")
    ap.add_argument("--lora-b-std", type=float, default=0.02, help="std of the random lora_B values")
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    ap.add_argument("--tolerance", type=float, default=1e-3, help="max next-token logit |diff| the checks accept")
    ap.add_argument("--seed", type=int, default=0)
    add_output_arguments(ap)
    args = ap.parse_args(argv)
    try:
        args.batches = [int(b) for b in args.batches.split(",")]
    except ValueError:
        ap.error(f"--batches {args.batches!r}: expected comma-separated positive integers, e.g. 1,8")
    wanted = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in wanted if v not in VARIANTS]
    if unknown:
        ap.error(f"--variants: unknown {unknown}; allowed: {', '.join(VARIANTS)}")
    args.variants = [v for v in VARIANTS if v in wanted or v == BASELINE]  # canonical order
    if min(args.batches) < 1 or args.repeats < 1 or args.new_tokens < 1 or args.prompt_len < 1:
        ap.error("need --batches, --repeats, --new-tokens and --prompt-len >= 1")
    if args.max_rounds < args.repeats:
        ap.error(f"--max-rounds ({args.max_rounds}) must be >= --repeats ({args.repeats})")
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; print the report, write ``--json`` / ``--markdown``; return the results."""
    from transformers.utils import logging as hf_logging

    args = parse_args(argv)
    hf_logging.set_verbosity_error()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    config = llama_config(args)
    model_text = (
        f"LlamaForCausalLM, random weights (seed {args.seed}): hidden {args.hidden}, {args.layers} layers, "
        f"{args.heads} heads / {args.kv_heads} KV heads, MLP {args.intermediate}, vocab {args.vocab}"
    )
    settings = {
        k: getattr(args, k)
        for k in (
            "repeats",
            "warmup",
            "min_quiet",
            "max_rounds",
            "wait_quiet",
            "batches",
            "prompt_len",
            "new_tokens",
            "variants",
            "hidden",
            "intermediate",
            "layers",
            "heads",
            "kv_heads",
            "vocab",
            "lora_b_std",
            "threads",
            "tolerance",
            "quiet_threshold",
            "seed",
        )
    } | {"model": model_text, "argv": " ".join(sys.argv[1:] if argv is None else argv)}
    results: dict[str, Any] = {"machine": machine_info(), "settings": settings, "batches": {}}
    models = {v: build(v, config, args) for v in args.variants}
    print(f"{model_text}; {sum(p.numel() for p in models[BASELINE].parameters()) / 1e6:.1f}M parameters", flush=True)
    for batch in args.batches:
        print(f"Batch {batch}: {batch} x {args.prompt_len} prompt tokens, {args.new_tokens} new tokens", flush=True)
        phase = run_batch(models, config, batch, args)
        phase["ratios"] = compute_ratios(phase, args.variants)
        results["batches"][str(batch)] = phase
        gc.collect()
    results["wall_s"] = time.perf_counter() - start
    print()
    print(report(results))
    print(f"\nwall time {results['wall_s']:.0f} s")
    write_outputs(results, args.json, args.markdown, markdown)
    return results


if __name__ == "__main__":
    main()
