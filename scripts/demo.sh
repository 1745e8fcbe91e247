#!/usr/bin/env bash
# The main job on the shipped teacher (SmolLM2-135M-Instruct) and shipped text (Shakespeare), on the CPU:
# convert -> generate -> inspect -> distill (calibrated seed, then matrix -> hidden -> logits) -> eval report
# -> the teacher's, the seed's and the distilled student's answers to the same chat prompts.
# Everything lands in runs/ (override with RUNS=...); students are saved in bfloat16 (the teacher's dtype):
#   $RUNS/seeded             a plain converted student (the convert/generate/inspect tour), ~270 MB
#   $RUNS/cpu-demo/seed      the calibrated seed distillation starts from, ~270 MB
#   $RUNS/cpu-demo/final     the distilled student (hard-linked with $RUNS/cpu-demo/2-logits/final), ~270 MB
#   $RUNS/cpu-demo/eval      report.md, report.json and plots: the distilled student vs its own seed
#   $RUNS/cpu-demo/summary.json, metrics.jsonl, calibration.json, recipe.yaml
# The teacher's de-quantized copy (~560 MB) and tokenized text are cached in ~/.cache/tm-distill.
# About 10 minutes on 2 idle CPU cores.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh   # the virtualenv setup.sh installed into, if it made one
# The package setup.sh installed into this python3, whatever `tm-distill` on PATH is (pyenv only finds a new
# console script after `pyenv rehash`; pip's --user fallback puts it in ~/.local/bin, often not on PATH).
tm-distill() { python3 -m tm_distill.cli "$@"; }
runs=${RUNS:-runs}
spec="cycle=0,16,32,64,128,attn"   # the demo recipe's schedule: layer l gets P[l mod 6]
prompts=(--prompt "What is the capital of France?" --prompt "Give me three colors."
         --prompt "Name a fruit that is yellow.")

tm-distill convert smollm2-135m "$runs/seeded" --transpoints "$spec" --force
tm-distill generate "$runs/seeded" --chat --prompt "What is the capital of France?" --max-new-tokens 24
tm-distill inspect "$runs/seeded" --context 2048 --context 32768

rm -rf "$runs/cpu-demo"   # the demo starts over; `tm-distill distill ... --resume` continues a run instead
tm-distill distill recipes/smollm2-135m/cpu-demo.yaml output_dir="$runs/cpu-demo"

# Like with like: the distilled student against the calibrated seed it started from.
tm-distill eval "$runs/cpu-demo/seed" "$runs/cpu-demo/final" --teacher smollm2-135m --data shakespeare \
    --seq-len 256 --windows 8 --passkey-lengths 512 --trials 1 --speed-lengths 256 --out "$runs/cpu-demo/eval"
echo "report: $runs/cpu-demo/eval/report.md"

echo "answers to the same chat prompts (greedy): the teacher, the calibrated seed, the distilled student"
tm-distill generate smollm2-135m "$runs/cpu-demo/seed" "$runs/cpu-demo/final" --chat "${prompts[@]}" \
    --max-new-tokens 32
