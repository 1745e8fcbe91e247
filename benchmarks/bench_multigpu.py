"""Several GPUs against one: the logits stage of a real teacher on 1 GPU (grad_accum 2) and on 2 GPUs
with DDP and with FSDP at the same global batch, through ``accelerate launch``. Reports each run's loss curve
against the one-GPU run (max |difference|) and its steady tokens/s (scaling efficiency = 2-GPU / (2 x 1-GPU)).

    python benchmarks/bench_multigpu.py --teacher SmolLM2-135M-Instruct.Q4_1.gguf --out results/multigpu

Writes OUT/multigpu.json and OUT/multigpu.md. NVLink multicast (NVLS) stays off (NCCL_NVLS_ENABLE=0).
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.common import command_line, device_name, md_table, parser, utc_date, write_json  # noqa: E402
RUNS = [("1 GPU", 1, "ddp"), ("2 GPUs, DDP", 2, "ddp"), ("2 GPUs, FSDP", 2, "fsdp")]


def recipe(args, out: Path, processes: int, strategy: str) -> dict:
    """SmolLM2's cycle schedule at 2048, a logits stage only; the global batch is 2 x batch_size rows."""
    return {"name": f"multigpu-{processes}-{strategy}", "teacher": args.teacher,
            "transpoints": "cycle=0,32,64,128,256,512,1024,2048", "output_dir": str(out), "seed": 0, "device": "cuda",
            "data": {"source": "shakespeare", "seq_len": args.seq_len, "heldout_fraction": 0.05, "heldout_windows": 4},
            "distributed": {"strategy": strategy},
            "stages": [{"name": "logits", "steps": args.steps, "batch_size": args.batch_size,
                        "grad_accum": 2 // processes, "trainable": "all", "precision": "bf16", "lr": args.lr,
                        "schedule": {"kind": "constant", "warmup_steps": 0},
                        "loss": {"kind": "forward_kl", "chunk_size": 1024}}]}


def launch(raw: dict, work: Path, processes: int) -> float:
    path = work / f"{raw['name']}.yaml"
    path.write_text(yaml.safe_dump(raw))
    cli = ["-m", "tm_distill.cli", "distill", str(path)]
    if processes == 1:
        cmd = [sys.executable, *cli]
    else:
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", *cli]
    env = {**os.environ, "NCCL_NVLS_ENABLE": "0", "PYTHONPATH": f"{os.environ.get('PYTHONPATH', '')}:{ROOT}"}
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, cwd=ROOT)
    return time.perf_counter() - t0


def curve(out: Path) -> dict[int, dict]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r for r in rows if "loss" in r}


def steady_tokens_per_s(rows: dict[int, dict], skip: int) -> float:
    """tokens/s between step ``skip`` and the last, from the loop's running average (tokens_per_s since step 0)."""
    last = max(rows)
    t_last = rows[last]["stage_tokens"] / rows[last]["tokens_per_s"]
    t_skip = rows[skip]["stage_tokens"] / rows[skip]["tokens_per_s"]
    return (rows[last]["stage_tokens"] - rows[skip]["stage_tokens"]) / (t_last - t_skip)


def main(argv: list[str] | None = None) -> dict:
    ap = parser(__doc__)
    ap.add_argument("--teacher", required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batch-size", type=int, default=8, help="rows per GPU per step (global: 2x)")
    ap.add_argument("--seq-len", type=int, default=2048)
    ap.add_argument("--lr", type=float, default=3.0e-4)
    ap.add_argument("--skip", type=int, default=5, help="warm-up steps left out of tokens/s")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path("/tmp/bench-multigpu")
    work.mkdir(parents=True, exist_ok=True)
    results = []
    for label, processes, strategy in RUNS:
        out = work / f"{processes}-{strategy}"
        seconds = launch(recipe(args, out, processes, strategy), work, processes)
        results.append({"run": label, "processes": processes, "strategy": strategy, "wall_s": seconds,
                        "curve": curve(out)})
    base = results[0]["curve"]
    for r in results:
        r["max_abs_loss_diff"] = max(abs(r["curve"][s]["loss"] - base[s]["loss"]) for s in base)
        r["tokens_per_s"] = steady_tokens_per_s(r["curve"], args.skip)
        r["scaling_efficiency"] = r["tokens_per_s"] / (r["processes"] * results[0]["tokens_per_s"])
        r["losses"] = [r["curve"][s]["loss"] for s in sorted(r["curve"])]
        del r["curve"]
    import torch  # noqa: PLC0415

    report = {"command": command_line(__file__, argv), "date": utc_date(), "gpu": device_name("cuda"),
              "gpus": torch.cuda.device_count(), "host": platform.node(), "torch": torch.__version__,
              "global_batch_rows": 2 * args.batch_size, "seq_len": args.seq_len, "steps": args.steps, "lr": args.lr, "runs": results}
    write_json(args.out / "multigpu.json", report, indent=2)
    (args.out / "multigpu.md").write_text(markdown(report))
    print(markdown(report))
    return report


def markdown(report: dict) -> str:
    lines = [f"`{report['command']}` on {report['gpus']}x {report['gpu']}, {report['date']}, torch {report['torch']}; "
             f"logits stage, bf16, {report['global_batch_rows']} x {report['seq_len']} tokens per step, "
             f"{report['steps']} steps, lr {report['lr']:g}.", "", *md_table(
                 ["run", "max abs loss difference vs 1 GPU", "tokens/s (steady)", "scaling efficiency", "wall s"],
                 ([r["run"], f"{r['max_abs_loss_diff']:.2e}", f"{r['tokens_per_s']:,.0f}",
                   f"{r['scaling_efficiency']:.2f}", f"{r['wall_s']:.0f}"] for r in report["runs"]))]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
