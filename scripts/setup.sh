#!/usr/bin/env bash
# Create/refresh the project's virtual environment in .venv (idempotent, fast when up to date).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

VENV=.venv
PY="$VENV/bin/python"
PIP="$VENV/bin/pip"
MARKER="$VENV/.adapterkit-installed"
did=()

if [ ! -x "$PY" ]; then
    python3 -m venv "$VENV"
    did+=("created $VENV")
fi

if ! "$PY" -c "import torch" >/dev/null 2>&1; then
    # Install torch on its own, first: this takes the CPU build where one is provided
    # by the machine's wheel directory (pip's find-links). On other machines, point pip
    # at PyTorch's CPU wheel index beforehand to avoid pulling the large CUDA packages.
    "$PIP" install -q torch==2.13.0
    did+=("installed torch")
fi

if [ ! -f "$MARKER" ] || [ pyproject.toml -nt "$MARKER" ]; then
    "$PIP" install -q -e ".[demo,test,train]"
    touch "$MARKER"
    did+=("installed adapterkit[demo,test,train] (editable)")
fi

if [ ${#did[@]} -eq 0 ]; then
    echo "setup.sh: $VENV already up to date, nothing to do"
else
    msg=$(printf '%s; ' "${did[@]}")
    echo "setup.sh: ${msg%; }"
fi
