"""Calibrated vs plain seeding on SmolLM2-135M: per-layer mixer error, held-out perplexity, calibration time.

    python benchmarks/calibration.py --out benchmarks/results/calibration.json
    python benchmarks/calibration.py --feature-map relu --threads 1 --eval-windows 8

Both students are seeded alike (seed 0, --transpoints); one is then calibrated as `tm-distill convert
--calibrate` does (windows from the shipped corpus's training split, held-out fraction 0.05, seed 0). Both are
scored with tm_distill.eval.metrics.compare_models on the first --eval-windows held-out windows of
--seq-len tokens (never fitted): perplexity of teacher and students, KL, and each layer's relative mixer error
|S - T| / |T| on rows >= P. Results go to --out as JSON (and a summary to stdout).
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import parser, utc_date, write_json  # noqa: E402
from tm_distill.convert import load_teacher, parse_transpoints, seed_student  # noqa: E402
from tm_distill.convert.calibrate import calibrate_student, calibration_windows  # noqa: E402
from tm_distill.data.loading import load_texts  # noqa: E402
from tm_distill.data.tokens import build_token_dataset  # noqa: E402
from tm_distill.eval.metrics import compare_models  # noqa: E402


def _layer_stats(errors: list[float | None]) -> dict:
    vals = [e for e in errors if e is not None]
    return {"mean": sum(vals) / len(vals), "max": max(vals), "layers": len(vals)}


def main(argv: list[str] | None = None) -> None:
    ap = parser(__doc__)
    ap.add_argument("--transpoints", default="cycle=0,32,64,128,256,512,1024,2048")
    ap.add_argument("--seq-len", type=int, default=2048)
    ap.add_argument("--windows", type=int, default=None, help="calibration windows (default: 4096 tokens)")
    ap.add_argument("--heldout", type=int, default=1, help="held-out windows the calibration reports on")
    ap.add_argument("--eval-windows", type=int, default=8)
    ap.add_argument("--feature-map", default="identity")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    teacher = load_teacher("smollm2-135m")
    tps = parse_transpoints(args.transpoints, teacher.model.config.num_hidden_layers)
    options = {"bc_feature_map": args.feature_map}
    seeded = seed_student(teacher.model, tps, args.transpoints, "smollm2-135m", seed=0, **options)
    calibrated = seed_student(teacher.model, tps, args.transpoints, "smollm2-135m", seed=0, **options)
    start = time.perf_counter()
    windows, held = calibration_windows("shakespeare", teacher.tokenizer, args.seq_len, args.windows, args.heldout)
    prepared = time.perf_counter()
    record = calibrate_student(calibrated, teacher.model, windows, heldout=held, data="shakespeare")
    done = time.perf_counter()
    load = os.getloadavg()
    texts = load_texts("shakespeare")
    heldout = build_token_dataset(texts, teacher.tokenizer, args.seq_len, heldout_fraction=0.05, seed=0).heldout
    metrics = compare_models(teacher.model, {"seeded": seeded, "calibrated": calibrated},
                             heldout[: args.eval_windows], progress=True)
    result = {
        "date": utc_date(), "machine": f"{platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores, torch threads {torch.get_num_threads()}, load average {load[0]:.1f}",
        "args": vars(args), "calibration_seconds": done - start, "windows_seconds": prepared - start,
        "calibration": record.to_dict(),
        "perplexity": {name: metrics[name]["perplexity"] for name in ("teacher", "seeded", "calibrated")},
        "kl_to_teacher": {name: metrics[name]["kl_to_teacher"] for name in ("seeded", "calibrated")},
        "top1_agreement": {name: metrics[name]["top1_agreement"] for name in ("seeded", "calibrated")},
        "heldout_layer_error": {name: metrics[name]["layer_error"] for name in ("seeded", "calibrated")},
        "heldout_layer_error_stats": {name: _layer_stats(metrics[name]["layer_error"])
                                      for name in ("seeded", "calibrated")},
    }
    print(json.dumps({k: result[k] for k in ("machine", "calibration_seconds", "perplexity", "kl_to_teacher",
                                             "heldout_layer_error_stats")}, indent=2))
    if args.out:
        write_json(Path(args.out), result, indent=2)


if __name__ == "__main__":
    main()
