#!/usr/bin/env bash
# The main job on the shipped teacher (SmolLM2-135M-Instruct) and shipped text (Shakespeare), on the CPU:
# convert -> generate -> inspect -> staged distillation (matrix -> hidden -> logits) -> eval report.
# Everything lands in runs/ (override with RUNS=...). Takes several minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${RUNS:-runs}
spec="cycle=0,16,32,64,128,attn"   # the demo recipe's schedule: layer l gets P[l mod 6]

tm-distill convert smollm2-135m "$runs/seeded" --transpoints "$spec" --force
tm-distill generate "$runs/seeded" --chat --prompt "What is the capital of France?" --max-new-tokens 24
tm-distill inspect "$runs/seeded" --context 2048 --context 32768

rm -rf "$runs/cpu-demo"   # the demo starts over; `tm-distill distill ... --resume` continues a run instead
tm-distill distill recipes/smollm2-135m/cpu-demo.yaml output_dir="$runs/cpu-demo"
tm-distill generate "$runs/cpu-demo/final" --chat --prompt "What is the capital of France?" --max-new-tokens 24

tm-distill eval "$runs/seeded" "$runs/cpu-demo/final" --teacher smollm2-135m --data shakespeare \
    --seq-len 256 --windows 8 --passkey-lengths 512 --trials 1 --out "$runs/cpu-demo/eval"
echo "report: $runs/cpu-demo/eval/report.md"
