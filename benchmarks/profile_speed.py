"""Where the time of a prefill and of a decode step goes: torch.profiler on the teacher and the students (bf16).

    python benchmarks/profile_speed.py --shapes 1b --out $OUT/profile_1b.json     # ~2 min on one H100/H200
    python benchmarks/profile_speed.py --smoke --out /tmp/profile_smoke.json      # tiny, CPU, seconds (CI)

The models are bench_speed.py's (same shapes, schedules, weights). For each model, context and batch:
- ``wall_ms``: the call timed with CUDA events (median of repeats);
- ``issue_ms``: host time until the call returns, before synchronizing (≈ wall_ms: the host is the bottleneck);
- ``gpu_busy_ms``: the sum of the kernels' durations per call, ``kernels``: kernels per call, with the top
  kernels by time (and the share of GEMMs, attention, SSM-scan kernels);
- ``host_syncs``: device-to-host copies and synchronizations per call (each one stalls the host queue);
- ``top_host_ops``: the operators with the most host (self CPU) time per call.
Prefill rows are one sequence into the cache generation uses; decode rows are one step, eager (the kernels the
graph replays) and, where captured, the CUDA-graph replay itself. ``--liger-teacher`` adds the teacher with
Liger-Kernel's RMSNorm/RoPE/SwiGLU patched in (``apply_liger_kernel_to_llama``), the kernels the student's
inference path uses: how much of a difference is the student's and how much Liger's. It is measured last
(the patch changes transformers' Llama module for the rest of the process). The JSON's rows and a text report
are written.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.bench_speed import (build, model_args, prefill_fn, student_cache, students_of,  # noqa: E402
                                    teacher_step)
from benchmarks.common import ResultFile, capture_graph, ints, parser, run_meta, smoke_or_cuda  # noqa: E402
from tm_distill.models.graphs import DecodeGraph, capturable_reason  # noqa: E402

_SYNC_OPS = ("aten::_local_scalar_dense", "cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize")
_GROUPS = {"gemm": ("gemm", "gemv", "cutlass", "sm90_xmma", "nvjet", "splitk"),
           "attention": ("flash", "fmha", "attention", "softmax"),
           "ssm": ("_chunk", "_state_passing", "_bmm_chunk", "_ssd_update")}


def _group(name: str) -> str:
    low = name.lower()
    for group, keys in _GROUPS.items():
        if any(k in low for k in keys):
            return group
    return "other"


def profiled(fn, calls: int, device) -> dict:
    """Per-call kernel count, GPU busy time, host syncs and top host ops of fn() (after one warm-up call)."""
    fn()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(calls):
            fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
    kernels: dict[str, list[float]] = defaultdict(list)
    host: dict[str, float] = defaultdict(float)
    syncs = 0
    for e in prof.events():
        if e.device_type == torch.autograd.DeviceType.CUDA:
            kernels[e.name].append(e.time_range.end - e.time_range.start)
        else:
            host[e.name] += e.self_cpu_time_total
            if e.name in _SYNC_OPS or (e.name == "cudaMemcpyAsync" and "DtoH" in str(e.input_shapes)):
                syncs += 1
    busy = sum(sum(v) for v in kernels.values()) / calls / 1e3
    groups: dict[str, float] = defaultdict(float)
    for name, times in kernels.items():
        groups[_group(name)] += sum(times) / calls / 1e3
    top = sorted(kernels.items(), key=lambda kv: -sum(kv[1]))[:12]
    return {
        "kernels": sum(len(v) for v in kernels.values()) / calls,
        "gpu_busy_ms": busy,
        "gpu_ms_by_group": dict(groups),
        "top_kernels": [{"name": n[:90], "per_call": len(t) / calls, "ms_per_call": sum(t) / calls / 1e3}
                        for n, t in top],
        "host_syncs": syncs / calls,
        "top_host_ops": [{"name": n[:60], "ms_per_call": v / calls / 1e3}
                         for n, v in sorted(host.items(), key=lambda kv: -kv[1])[:12]],
    }


def timing(fn, reps: int, device) -> dict:
    """Median wall ms (CUDA events) and median host issue ms (until fn returns, before the sync)."""
    fn()
    walls, issues = [], []
    for _ in range(reps):
        if device.type == "cuda":
            torch.cuda.synchronize()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
        t0 = time.perf_counter()
        fn()
        issues.append((time.perf_counter() - t0) * 1e3)
        if device.type == "cuda":
            end.record()
            end.synchronize()
            walls.append(start.elapsed_time(end))
        else:
            walls.append(issues[-1])
    return {"wall_ms": statistics.median(walls), "issue_ms": statistics.median(issues)}


def teacher_step_fn(teacher, T, batch):
    """One teacher decode step on a StaticCache holding T tokens: bench_speed's, without gradients."""
    step, _ = teacher_step(teacher, T, batch)

    def no_grad_step():
        with torch.no_grad():
            step()
    return no_grad_step


def student_step_fns(model, T, batch):
    """(eager step, graph replay step or None) of a student on a static cache that has seen T tokens."""
    cache = student_cache(model, T, batch, 4)
    ids = torch.randint(0, model.config.vocab_size, (batch, 1), device=model.device)

    def eager():
        cache.seen_tokens = T
        with torch.no_grad():
            model(input_ids=ids, cache=cache, use_cache=True, logits_to_keep=1)

    graph = None
    if capturable_reason(model, cache) is None:
        dg = DecodeGraph(model, cache)

        def graph():
            cache.seen_tokens = T
            with torch.no_grad():
                dg(ids)
    return eager, graph


def report(rows: list[dict]) -> str:
    out = []
    for r in rows:
        head = (f"{r['kind']} {r['shape']} {r['who']} T={r['context']} b={r['batch']} {r.get('mode', '')}: "
                f"wall {r['wall_ms']:.3f} ms, issue {r['issue_ms']:.3f} ms, GPU busy {r['gpu_busy_ms']:.3f} ms, "
                f"{r['kernels']:.0f} kernels, {r['host_syncs']:.1f} host syncs")
        out.append(head)
        out.append("  GPU ms by group: " + ", ".join(f"{k} {v:.3f}" for k, v in sorted(r["gpu_ms_by_group"].items())))
        out += [f"  {k['ms_per_call']:8.3f} ms {k['per_call']:5.1f}×  {k['name']}" for k in r["top_kernels"][:8]]
        out.append("  host: " + ", ".join(f"{h['name']} {h['ms_per_call']:.2f}" for h in r["top_host_ops"][:8]))
    return "\n".join(out)


def main(argv=None):
    ap = parser(__doc__)
    model_args(ap, "1b", "512,2048", "2048", "1")
    ap.add_argument("--calls", type=int, default=5, help="profiled calls per row")
    ap.add_argument("--liger-teacher", action="store_true", help="also the teacher with Liger's kernels patched in")
    ap.add_argument("--smoke", action="store_true", help="the tiny shape on the CPU in fp32 (CI)")
    ap.add_argument("--out", default="profile.json")
    args = ap.parse_args(argv)
    if args.smoke:
        args.shapes, args.prefill_contexts, args.decode_contexts, args.calls = "tiny", "64", "96", 1
    device, dtype = smoke_or_cuda("profile_speed.py", args.smoke)
    rec = ResultFile(args.out, run_meta(__file__, argv, device), rows="rows", echo=lambda row: report([row]))
    for shape in args.shapes.split(","):
        run_shape(shape, args, device, dtype, rec.add)
    rec.path.with_suffix(".txt").write_text(report(rec.data["rows"]) + "\n")
    return rec.data["rows"]


def run_shape(shape, args, device, dtype, add):
    """Every row of one shape: the teacher and each student, then (``--liger-teacher``) the patched teacher."""
    teacher = build(shape, device, dtype)
    students = students_of(teacher, [s for s in args.schedules.split(",") if s], shape, dtype)
    measure([("teacher", teacher), *students.items()], shape, args, device, add)
    if args.liger_teacher:
        from liger_kernel.transformers import apply_liger_kernel_to_llama  # noqa: PLC0415  (GPU extra)

        apply_liger_kernel_to_llama(rope=True, rms_norm=True, swiglu=True, cross_entropy=False,
                                    fused_linear_cross_entropy=False, model=teacher)
        measure([("teacher+liger", teacher)], shape, args, device, add)


def measure(models, shape, args, device, add):
    """Prefill rows, then decode rows (eager and graph) of each (name, model)."""
    for T in ints(args.prefill_contexts):
        ids = torch.randint(0, models[0][1].config.vocab_size, (1, T), device=device)
        for who, model in models:
            fn = prefill_fn(model, "teacher" if who.startswith("teacher") else "student", T, args.max_new, ids)
            add(kind="prefill", shape=shape, who=who, context=T, batch=1, **timing(fn, 5, device),
                **profiled(fn, args.calls, device))
    for T in ints(args.decode_contexts):
        for b in ints(args.batches):
            for who, model in models:
                if who.startswith("teacher"):
                    step = teacher_step_fn(model, T, b)
                    fns = [("eager", step)] + ([("graph", capture_graph(step, device).replay)]
                                               if device.type == "cuda" else [])
                else:
                    eager, graph = student_step_fns(model, T, b)
                    fns = [("eager", eager)] + ([("graph", graph)] if graph else [])
                for mode, fn in fns:
                    add(kind="decode", shape=shape, who=who, context=T, batch=b, mode=mode,
                        **timing(fn, 10, device), **profiled(fn, args.calls, device))


if __name__ == "__main__":
    main()
