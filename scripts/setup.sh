#!/usr/bin/env bash
# Create .venv and install fashiongen with its export and dev extras (idempotent; safe to re-run).
# torch is pinned to the local CPU wheel (2.13.0); clip-anytorch goes in with --no-deps only for the
# real CLIP BPE vocabulary file it ships (its own deps would pull a CUDA torch).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.fashiongen-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e ".[export,serve,retrieval,dev,cpu-fast]"
  .venv/bin/python -m pip install -q --no-deps "clip-anytorch==2.6.0"
  touch "$stamp"
fi
