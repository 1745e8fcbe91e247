"""Distillation throughput per stage, with the loop's own training step (``tm_distill.training.loop.train_step``).

    python benchmarks/bench_distill.py --model smollm2-135m --teacher /path/SmolLM2-135M-Instruct.Q4_1.gguf \
        --out benchmarks/results/DATE/distill_135m.json
    python benchmarks/bench_distill.py --model llama-3.2-1b --out .../distill_1b.json      # random weights
    python benchmarks/bench_distill.py --smoke --out /tmp/smoke.json                       # CPU, tiny model

For each stage (matrix, hidden, logits = full fine-tune, logits-lora, logits-sampled = sampled TransPoints)
and a baseline ("finetune": the teacher architecture fine-tuned on next-token CE with HF's own loss, plus the
teacher's forward, i.e. what plain fine-tuning of the same model costs), it reports: the time to the first
finished step (stage construction, compile/autotune, data), steady-state tokens/s (CUDA-synchronised wall
time over the timed steps, after warm-up), MFU = counted FLOP/s over the device's dense bf16 peak, with the
FLOP count written out per term, peak GPU memory, and the top ops by CUDA time from ``torch.profiler``.

Text: the shipped corpus's training windows when it is in the cache (``TM_DISTILL_CACHE``), else random
tokens (throughput does not depend on the text). Results are written after every stage, so a run cut short
keeps what it measured. ``--markdown`` renders a JSON file as the section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import (ResultFile, command_line, device_name, md_row, md_table, parser,  # noqa: E402
                               random_llama, sync, utc_date, wall_seconds)
from tm_distill.convert import load_teacher, parse_transpoints, seed_student  # noqa: E402
from tm_distill.recipe import StageConfig, from_dict  # noqa: E402
from tm_distill.stages import get_stage_class  # noqa: E402
from tm_distill.training.distributed import Replicated  # noqa: E402
from tm_distill.training.loop import StageRun, set_param_dtypes, step_transpoints, train_step  # noqa: E402

SHAPES = {  # Llama shapes with random weights (when no --teacher file is given)
    "smollm2-135m": dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                         num_attention_heads=9, num_key_value_heads=3, head_dim=64, tie_word_embeddings=True,
                         rope_theta=100000.0, max_position_embeddings=8192),
    "llama-3.2-1b": dict(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                         num_attention_heads=32, num_key_value_heads=8, head_dim=64, tie_word_embeddings=True,
                         rope_theta=500000.0, max_position_embeddings=131072),
    "tiny": dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                 num_attention_heads=4, num_key_value_heads=2, head_dim=16, tie_word_embeddings=True,
                 max_position_embeddings=512),
}
CYCLE = "cycle=0,32,64,128,256,512,1024,2048"  # the paper's cycle scaled to 2048 (the compare recipes)
PEAK_BF16 = {"H100": 989e12, "H200": 989e12}  # dense bf16 tensor-core peak, vendor datasheets (SXM)
STAGES = ("matrix", "hidden", "logits", "logits-lora", "logits-sampled", "finetune")


def stage_config(name: str, batch_size: int) -> StageConfig:
    base = {"steps": 1000, "batch_size": batch_size, "precision": "bf16", "lr": 1e-5}
    cfg = {"matrix": {"name": "matrix", "trainable": "ssm"}, "hidden": {"name": "hidden", "trainable": "ssm"},
           "logits": {"name": "logits", "trainable": "all"},
           "logits-lora": {"name": "logits", "trainable": "lora"},
           "logits-sampled": {"name": "logits", "trainable": "all", "transpoint_schedule": "sampled", "jitter": 0.5},
           "finetune": {"name": "logits", "trainable": "all"}}[name]
    return from_dict(StageConfig, {**base, **cfg})


# ------------------------------------------------------------------------------------------------- FLOPs
def flop_terms(stage: str, cfg: dict, tps: list[int], t: int) -> dict[str, float]:
    """FLOPs per token of one training step, by term (multiply-add = 2 FLOPs).

    proj: q/k/v/o + MLP matmuls per layer; head: the lm_head; attention: QK^T and PV over each token's
    causal context (the student only before its TransPoint); scan: the SSD chunked scan, per head about
    2*Q*(N + P) + 4*N*P for chunk Q, state N, head dim P; matrix: the (rows >= P) x t mixing matrices of the
    matrix stage (~2N + 16 FLOPs per element for student and teacher, x3 with checkpoint recompute and
    backward). Backward = 2x forward for trained weights (weight + input grads), 1x where only input grads
    flow (frozen weights under trainable LoRA/SSM).
    """
    H, inter, L, V = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"], cfg["vocab_size"]
    nq, nkv, d = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]
    proj = 2 * (H * (nq + 2 * nkv) * d + nq * d * H + 3 * H * inter)  # per layer per token
    head = 2 * H * V
    full_attn = 2 * 2 * d * nq * (t + 1) / 2  # per layer per token, causal
    student_attn = sum(2 * 2 * d * nq * min(p, t) * (min(p, t) + 1) / 2 / t for p in tps)  # all layers
    scan = sum(nq * (2 * 64 * (d + d) + 4 * d * d) for p in tps if p < t)  # whole-sequence scan per SSM layer
    teacher = L * (proj + full_attn) + head
    if stage == "finetune":
        return {"teacher_forward": teacher, "model_forward": teacher, "model_backward": 2 * teacher}
    student_fwd = L * proj + head + student_attn + scan
    if stage in ("matrix", "hidden"):
        active = [p for p in tps if p < t]
        last = max((i for i, p in enumerate(tps) if p < t), default=-1) + 1
        terms = {"teacher_forward_to_last_layer": last * (proj + full_attn)}
        mixer = 2 * H * (nq + 2 * nkv) * d + 2 * nq * d * H
        if stage == "hidden":
            terms["mixer_forward"] = len(active) * mixer + scan
            terms["mixer_backward"] = len(active) * mixer + 2 * scan
        else:
            rows = sum((t - p) / t for p in active)  # fraction of rows per layer that count, summed
            terms["matrix_blocks"] = 3 * rows * nq * t * (2 * 2 * d + 32)
            terms["projections"] = 3 * len(active) * 2 * H * (nq + 2 * nkv) * d
        return terms
    backward = 2 * student_fwd if stage in ("logits", "logits-sampled") else student_fwd
    return {"teacher_forward": teacher, "student_forward": student_fwd, "student_backward": backward}


# -------------------------------------------------------------------------------------------------- models
def build_teacher(model: str, teacher_path: str | None, device: str, dtype: torch.dtype):
    if teacher_path:
        t = load_teacher(teacher_path, dtype=dtype, device=device)
        return t.model, t.tokenizer
    return random_llama(LlamaConfig(**SHAPES[model]), device, dtype), None


def token_windows(tokenizer, vocab: int, seq_len: int, n: int) -> tuple[torch.Tensor, str]:
    if tokenizer is not None:
        try:
            from tm_distill.data.loading import load_texts  # noqa: PLC0415
            from tm_distill.data.tokens import build_token_dataset  # noqa: PLC0415

            data = build_token_dataset(load_texts("shakespeare"), tokenizer, seq_len, seed=0, heldout_fraction=0.02)
            if data.train.shape[0] >= n:
                return data.train[:n], "shakespeare training windows"
        except Exception as err:  # noqa: BLE001  (the corpus is optional here)
            print(f"corpus unavailable ({err}); using random tokens", file=sys.stderr)
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, vocab, (n, seq_len), generator=g), "random tokens"


class _FineTune:
    """The baseline step: HF's own CE loss on a trainable copy of the teacher, plus the frozen teacher's forward."""

    def __init__(self, teacher):
        self.teacher = teacher
        self.student = LlamaForCausalLM(teacher.config).to(teacher.device)
        self.student.load_state_dict(teacher.state_dict())

    def trainable_parameters(self):
        return [(n, p.requires_grad_(True)) for n, p in self.student.named_parameters()]

    def loss(self, input_ids, position_ids=None):
        with torch.no_grad():
            self.teacher.model(input_ids=input_ids, use_cache=False)
        return self.student(input_ids=input_ids, labels=input_ids, use_cache=False).loss, {}


class _Accel:
    """The parts of accelerate's Accelerator that train_step uses, for one process."""

    num_processes, process_index, is_main_process = 1, 0, True

    def __init__(self, device):
        self.device = torch.device(device)

    @staticmethod
    def backward(loss):
        loss.backward()


# ---------------------------------------------------------------------------------------------- measuring
def bench_stage(name: str, teacher, windows, spec: str, args, device: str) -> dict:
    """Build the stage, time its first step, then steady steps; optional profile. Returns the row."""
    t0 = time.perf_counter()
    cfg = stage_config(name, args.batch_size)
    tps = parse_transpoints(spec, teacher.config.num_hidden_layers)
    if name == "finetune":
        stage = _FineTune(teacher)
    else:
        student = seed_student(teacher, tps, spec, seed=0, dtype=torch.float32)
        stage = get_stage_class(cfg.name)(cfg, student, teacher)
    params = [p for _, p in stage.trainable_parameters()]
    if name != "finetune":
        set_param_dtypes(stage.student, next(teacher.parameters()).dtype)
    optimizer = torch.optim.AdamW(params, lr=1e-5)
    run = StageRun(0, cfg, windows, tps, 0, "/tmp/bench-distill")
    par = Replicated(stage, _Accel(device))
    seq_len = windows.shape[1]
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()

    def step(i: int) -> None:
        rows = windows[(i * args.batch_size) % len(windows):][: args.batch_size]
        if rows.shape[0] < args.batch_size:
            rows = windows[: args.batch_size]
        optimizer.zero_grad(set_to_none=True)
        if name == "finetune":  # train_step's work without TransPoints: autocast, backward, clip, one sync
            with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=cfg.precision == "bf16"):
                loss, _ = stage.loss(rows.to(device))
            loss.backward()
            torch.stack([loss.detach(), torch.nn.utils.clip_grad_norm_(params, 1.0)]).tolist()
        else:
            train_step(par, run, rows.to(device), None, step_transpoints(run, i, seq_len), _Accel(device), params,
                       i)
        optimizer.step()

    step(0)
    sync(device)
    first = time.perf_counter() - t0
    wall_seconds(lambda: [step(i) for i in range(1, 1 + args.warmup)], device)
    seconds = wall_seconds(lambda: [step(100 + i) for i in range(args.steps)], device) / args.steps
    tokens = args.batch_size * seq_len
    terms = flop_terms(name, teacher.config.to_dict(), tps, seq_len)
    flops = sum(terms.values())
    row = {"stage": name, "transpoints": spec, "batch_size": args.batch_size, "seq_len": seq_len,
           "trainable": "all (baseline)" if name == "finetune" else cfg.trainable,
           "first_step_s": round(first, 2), "step_s": round(seconds, 4), "tokens_per_s": round(tokens / seconds),
           "flops_per_token": {k: round(v) for k, v in terms.items()}, "flops_per_token_total": round(flops),
           "achieved_tflops": round(flops * tokens / seconds / 1e12, 1)}
    if device == "cuda":
        row["peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        peak = next((v for k, v in PEAK_BF16.items() if k in torch.cuda.get_device_name()), None)
        row["mfu"] = round(flops * tokens / seconds / peak, 4) if peak else None
    if args.profile:
        row["top_ops"] = profile_ops(step, device)
    del stage, optimizer, params
    if device == "cuda":
        torch.cuda.empty_cache()
    return row


def profile_ops(step, device: str, n: int = 10) -> list[dict]:
    from torch.profiler import ProfilerActivity, profile  # noqa: PLC0415

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    with profile(activities=activities) as prof:
        for i in range(2):
            step(200 + i)
        sync(device)
    key = "device_time_total" if device == "cuda" else "cpu_time_total"
    events = sorted(prof.key_averages(), key=lambda e: getattr(e, key, 0.0), reverse=True)
    total = sum(getattr(e, "self_" + key, 0.0) for e in prof.key_averages()) or 1.0
    out = []
    for e in events:
        if e.key.startswith("ProfilerStep") or len(out) >= n:
            continue
        out.append({"op": e.key[:90], "total_ms_per_step": round(getattr(e, key) / 1000 / 2, 2),
                    "self_ms_per_step": round(getattr(e, "self_" + key) / 1000 / 2, 2),
                    "self_share": round(getattr(e, "self_" + key) / total, 3), "calls_per_step": e.count // 2})
    return out


# ------------------------------------------------------------------------------------------------ report
def markdown(data: dict) -> str:
    """The docs/benchmarks.md section for one JSON result file."""
    m = data["meta"]
    lines = [f"### {m['model']} ({m['weights']}), seq_len {m['seq_len']}, {m['device']}, {m['date']}", "",
             f"Command: `{m['command']}`", f"Text: {m['text']}. Peak for MFU: {m.get('peak', 'n/a')}. "
             f"Triton autotune cache: {m.get('triton_autotune_cache')}, {m.get('triton_cache_files_at_start')} cached "
             "files at start (0 = a fresh machine: the first step includes mamba-ssm's autotuning).", "",
             *md_table(["stage", "trainable", "batch", "first step (s)", "tokens/s", "MFU", "TFLOP/s", "peak GiB"], [])]
    for r in data["results"]:
        if "error" in r:
            lines.append(md_row([r["stage"], f"error: {r['error'][:80]}", *[""] * 6]))
            continue
        mfu = f"{100 * r['mfu']:.1f}%" if r.get("mfu") else "n/a"
        lines.append(md_row([r["stage"], r["trainable"], r["batch_size"], r["first_step_s"], f"{r['tokens_per_s']:,}",
                             mfu, r["achieved_tflops"], r.get("peak_memory_gib", "n/a")]))
    for r in data["results"]:
        if r.get("top_ops"):
            lines += ["", f"Top ops by CUDA time, {r['stage']} (ms per step, self share):", ""]
            lines += [f"- `{o['op']}`: {o['total_ms_per_step']} total, {o['self_ms_per_step']} self "
                      f"({100 * o['self_share']:.0f}%), {o['calls_per_step']} calls" for o in r["top_ops"]]
    lines += ["", "FLOPs per token by term (first row of each stage): " + "; ".join(
        f"{r['stage']}: " + ", ".join(f"{k} {v / 1e6:.0f}M" for k, v in r["flops_per_token"].items())
        for r in data["results"] if "flops_per_token" in r)]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    ap = parser(__doc__)
    ap.add_argument("--model", choices=sorted(SHAPES), default="smollm2-135m")
    ap.add_argument("--teacher", help="a teacher to load (GGUF, HF folder, alias) instead of random weights")
    ap.add_argument("--stages", default=",".join(STAGES))
    ap.add_argument("--transpoints", default=CYCLE)
    ap.add_argument("--seq-len", type=int, default=2048)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--layer-batch-size", type=int, default=16, help="batch of the matrix and hidden stages")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--dtype", choices=["auto", "bfloat16", "float32"], default="auto",
                    help="teacher / frozen-weight dtype (auto: bfloat16 on CUDA, float32 on CPU)")
    ap.add_argument("--smoke", action="store_true", help="tiny random model on CPU, 1 warm-up + 2 steps")
    ap.add_argument("--out", required=True)
    ap.add_argument("--markdown", action="store_true", help="print the markdown section of --out and exit")
    args = ap.parse_args(argv)
    if args.markdown:
        text = markdown(json.loads(Path(args.out).read_text()))
        print(text)
        return {}
    if args.smoke:
        args.model, args.teacher, args.seq_len, args.batch_size, args.layer_batch_size = "tiny", None, 64, 2, 2
        args.warmup, args.steps, args.transpoints = 1, 2, "cycle=0,8,16,attn"
    device = "cuda" if torch.cuda.is_available() and not args.smoke else "cpu"
    dtype = {"auto": torch.bfloat16 if device == "cuda" else torch.float32, "bfloat16": torch.bfloat16,
             "float32": torch.float32}[args.dtype]
    teacher, tokenizer = build_teacher(args.model, args.teacher, device, dtype)
    batch = max(args.batch_size, args.layer_batch_size)
    windows, text = token_windows(tokenizer, teacher.config.vocab_size, args.seq_len, 64 * batch)
    name = device_name(device)
    peak = next((f"{k} {v / 1e12:.0f} TFLOP/s" for k, v in PEAK_BF16.items() if k in name), None)
    meta = {"model": args.model, "weights": "real teacher" if args.teacher else "random weights",
            "seq_len": args.seq_len, "device": name, "date": utc_date(), "text": text,
            "command": command_line(__file__, argv), "torch": torch.__version__, "peak": peak,
            "triton_autotune_cache": os.environ.get("TRITON_CACHE_AUTOTUNING", "0"),
            "triton_cache_files_at_start": sum(1 for _ in (Path.home() / ".triton" / "cache").glob("**/*"))
            if (Path.home() / ".triton" / "cache").exists() else 0}
    rec = ResultFile(args.out, meta, echo=lambda row: json.dumps({k: v for k, v in row.items() if k != "top_ops"}))
    for stage in args.stages.split(","):
        layer_parallel = stage in ("matrix", "hidden")
        sub = argparse.Namespace(**{**vars(args), "batch_size": args.layer_batch_size if layer_parallel else
                                    args.batch_size})
        try:
            row = bench_stage(stage, teacher, windows, args.transpoints, sub, device)
        except Exception as err:  # noqa: BLE001  (record it and go on to the next stage)
            traceback.print_exc()
            row = {"stage": stage, "error": f"{type(err).__name__}: {str(err)[:300]}"}
            if device == "cuda":
                torch.cuda.empty_cache()
        rec.add(**row)
    return rec.data


if __name__ == "__main__":
    main()
