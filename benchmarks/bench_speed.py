"""Student vs teacher in one run: prefill latency, decode tokens/s, peak memory (bf16, random weights, CUDA).

    python benchmarks/bench_speed.py --shapes 1b,8b --out results/speed.json

Teacher = transformers' LlamaForCausalLM (SDPA); student = tm_distill.convert.seed_student(teacher, ...).
Prefill: one sequence of `context` tokens with the cache kept (use_cache, logits_to_keep=1).
Decode: one token per step on a cache that already holds `context` tokens. The cache is filled with random
values instead of a prefill (decode cost does not depend on cache values; this lets batch 16 at long
contexts be measured without a batch-16 prefill). Teacher: transformers' StaticCache, CUDA-graph captured
when capture works (else eager; the mode is recorded). Student: ops.graphs.DecodeGraph when every layer is
past its TransPoint, else eager. Timing: CUDA events, warm-up, median of repeats. Results are written to the
JSON file after every measurement, so a run cut short keeps what it measured.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM, StaticCache

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tm_distill.convert import map_teacher_key, parse_transpoints, seed_student  # noqa: E402
from tm_distill.models import TransMambaCache  # noqa: E402
from tm_distill.ops.graphs import DecodeGraph, capturable_reason  # noqa: E402

SHAPES = {
    "1b": dict(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
               num_attention_heads=32, num_key_value_heads=8, head_dim=64, tie_word_embeddings=True),
    "8b": dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
               num_attention_heads=32, num_key_value_heads=8, head_dim=128, tie_word_embeddings=False),
    "tiny": dict(vocab_size=4096, hidden_size=256, intermediate_size=512, num_hidden_layers=8,
                 num_attention_heads=4, num_key_value_heads=2, head_dim=64, tie_word_embeddings=True),
}
SCHEDULES = {
    "attn25": lambda n: "attn=" + ",".join(str(i) for i in range(0, n, 4)) + ";ssm=rest",
    "cycle": lambda n: "cycle=0,128,256,512,1024,2048,4096,8192",
    "all2048": lambda n: "all=2048",
}


def timed(fn, warmup: int, reps: int) -> float:
    """Median milliseconds of fn() over reps, after warmup calls (CUDA events)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def param_bytes(model) -> int:
    seen, total = set(), 0
    for p in model.parameters():
        if p.data_ptr() not in seen:
            seen.add(p.data_ptr())
            total += p.numel() * p.element_size()
    return total


class Recorder:
    def __init__(self, path: Path, meta: dict):
        self.path, self.data = path, {"meta": meta, "results": []}
        path.parent.mkdir(parents=True, exist_ok=True)

    def add(self, **row):
        self.data["results"].append(row)
        self.path.write_text(json.dumps(self.data, indent=1))
        print(json.dumps(row), flush=True)


def build(shape: str, device):
    cfg = LlamaConfig(**SHAPES[shape], max_position_embeddings=262144, rope_theta=500000.0)
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(0)
    prev = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(device):
            teacher = LlamaForCausalLM(cfg).eval()
    finally:
        torch.set_default_dtype(prev)
    return teacher


def share_weights(student, teacher):
    """Point the student's seeded parameters at the teacher's (identical values), so that the teacher and
    three students fit on one GPU at the 8B shape; each model's weights are still counted in full."""
    for key, tensor in teacher.state_dict().items():
        if "rotary_emb" in key:
            continue
        target = student.get_parameter(map_teacher_key(key))
        assert torch.equal(target, tensor), key
        target.data = tensor
    torch.cuda.empty_cache()


def prefill(rec, shape, teacher, students, contexts, args):
    L = teacher.config.num_hidden_layers
    kv_per_tok = 2 * L * teacher.config.num_key_value_heads * teacher.config.head_dim * 2
    for T in contexts:
        ids = torch.randint(0, teacher.config.vocab_size, (1, T), device="cuda")
        warm, reps = (1, 2) if T >= 16384 else (1, 3) if T >= 8192 else (2, 5)
        models = [("teacher", "-", teacher)] + [("student", s, m) for s, m in students.items()]
        for who, sched, model in models:
            if time.time() > args.deadline:
                return
            torch.cuda.empty_cache()
            base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            out = {}

            def run():
                cache = TransMambaCache(L) if who == "student" else None
                with torch.no_grad():
                    o = model(ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
                out["cache"] = o.past_key_values

            try:
                ms = timed(run, warm, reps)
            except torch.cuda.OutOfMemoryError:
                out.clear()
                torch.cuda.empty_cache()
                rec.add(kind="prefill", shape=shape, model=who, schedule=sched, context=T, batch=1, status="oom")
                continue
            peak = torch.cuda.max_memory_allocated() - base
            cache_bytes = (out["cache"].memory_bytes()["kv"] + out["cache"].memory_bytes()["state"]
                           if who == "student" else kv_per_tok * T)
            out.clear()
            rec.add(kind="prefill", shape=shape, model=who, schedule=sched, context=T, batch=1, ms=ms,
                    tokens_per_s=T / ms * 1e3, weights_bytes=param_bytes(model), cache_bytes=cache_bytes,
                    peak_extra_bytes=peak, status="ok")
        del ids


def teacher_decode(teacher, T, batch, steps, graph: bool):
    """Milliseconds per decode step of the teacher with a StaticCache holding T tokens."""
    cfg = teacher.config
    cache = StaticCache(config=cfg, max_cache_len=T + 1)
    ids = torch.randint(0, cfg.vocab_size, (batch, 1), device="cuda")
    cp = torch.tensor([T - 1], device="cuda")
    pos = torch.full((batch, 1), T - 1, device="cuda")

    def step():
        return teacher(input_ids=ids, past_key_values=cache, cache_position=cp, position_ids=pos,
                       use_cache=True, logits_to_keep=1).logits

    with torch.no_grad():
        step()  # allocates the static cache
        for layer in cache.layers:
            layer.keys.normal_()
            layer.values.normal_()
        cp.fill_(T)
        pos.fill_(T)
        cache_bytes = sum(t.numel() * t.element_size() for l in cache.layers for t in (l.keys, l.values))
        fn, mode = step, "eager"
        if graph:
            try:
                s = torch.cuda.Stream()
                s.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(s):
                    step(), step()
                torch.cuda.current_stream().wait_stream(s)
                g = torch.cuda.CUDAGraph()
                with torch.cuda.graph(g):
                    step()
                fn, mode = g.replay, "cuda_graph"
            except Exception as err:  # noqa: BLE001 - any capture failure falls back to eager, recorded
                mode = f"eager (graph capture failed: {type(err).__name__})"
                torch.cuda.synchronize()
        ms = timed(lambda: [fn() for _ in range(steps)], 1, 3) / steps
    del cache
    return ms, cache_bytes, mode


def student_cache(model, T, batch):
    """A TransMambaCache that has seen T tokens, with random contents of the right sizes."""
    cfg = model.config
    cache = TransMambaCache(cfg.num_hidden_layers)
    h, d, kv = cfg.num_attention_heads, cfg.head_dim, cfg.num_key_value_heads
    for i, p in enumerate(cfg.transpoints):
        st = cache.states[i]
        if p > T:  # still in its attention phase: KV of all T tokens
            st.keys = torch.randn(batch, kv, T, d, device="cuda", dtype=torch.bfloat16)
            st.values = torch.randn_like(st.keys)
        if cfg.switches(i):
            st.ssm_state = torch.randn(batch, h, d, d, device="cuda") * 0.1
    cache.seen_tokens = T
    return cache


def student_decode(model, T, batch, steps, graph: bool):
    cache = student_cache(model, T, batch)
    ids = torch.randint(0, model.config.vocab_size, (batch, 1), device="cuda")
    mem = cache.memory_bytes()
    with torch.no_grad():
        if graph and capturable_reason(model, cache) is None:
            dg = DecodeGraph(model, cache)
            fn, mode = (lambda: dg(ids)), "cuda_graph"
        else:
            fn, mode = (lambda: model(input_ids=ids, past_key_values=cache, use_cache=True, logits_to_keep=1)), "eager"
        ms = timed(lambda: [fn() for _ in range(steps)], 1, 3) / steps
    return ms, mem["kv"] + mem["state"], mode


def decode(rec, shape, teacher, students, contexts, batches, args):
    cfg = teacher.config
    kv_per_tok = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * cfg.head_dim * 2
    for T in contexts:
        for b in batches:
            steps = args.decode_steps
            fits = kv_per_tok * (T + 1) * b < 0.85 * torch.cuda.mem_get_info()[0]
            runs = [("teacher", "-", teacher)] + [("student", s, m) for s, m in students.items()]
            for who, sched, model in runs:
                if time.time() > args.deadline:
                    return
                if who == "teacher" and not fits:
                    rec.add(kind="decode", shape=shape, model=who, schedule=sched, context=T, batch=b,
                            status="does not fit")
                    continue
                torch.cuda.empty_cache()
                try:
                    modes = [True, False] if (args.eager_too and b == 1) else [True]
                    for g in modes:
                        fn = teacher_decode if who == "teacher" else student_decode
                        ms, cache_bytes, mode = fn(model, T, b, steps, graph=g)
                        rec.add(kind="decode", shape=shape, model=who, schedule=sched, context=T, batch=b,
                                ms_per_step=ms, tokens_per_s=b / ms * 1e3, weights_bytes=param_bytes(model),
                                cache_bytes=cache_bytes, mode=mode, status="ok")
                except torch.cuda.OutOfMemoryError:
                    torch.cuda.empty_cache()
                    rec.add(kind="decode", shape=shape, model=who, schedule=sched, context=T, batch=b, status="oom")


def max_batch_decode(rec, shape, teacher, students, T, student_batch, args):
    """Throughput at the largest batch each model fits at context T (teacher: from free memory)."""
    cfg = teacher.config
    kv_seq = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * cfg.head_dim * 2 * (T + 1)
    torch.cuda.empty_cache()
    tb = int(0.8 * torch.cuda.mem_get_info()[0] // kv_seq)
    tb = 2 ** int(math.log2(tb)) if tb >= 1 else 0
    if tb and time.time() < args.deadline:
        try:
            ms, cb, mode = teacher_decode(teacher, T, tb, 5, graph=True)
            rec.add(kind="decode_maxbatch", shape=shape, model="teacher", schedule="-", context=T, batch=tb,
                    ms_per_step=ms, tokens_per_s=tb / ms * 1e3, cache_bytes=cb, mode=mode, status="ok")
        except torch.cuda.OutOfMemoryError:
            rec.add(kind="decode_maxbatch", shape=shape, model="teacher", context=T, batch=tb, status="oom")
    for sched, model in students.items():
        if sched == "attn25" or time.time() > args.deadline:
            continue
        torch.cuda.empty_cache()
        ms, cb, mode = student_decode(model, T, student_batch, 10, graph=True)
        rec.add(kind="decode_maxbatch", shape=shape, model="student", schedule=sched, context=T,
                batch=student_batch, ms_per_step=ms, tokens_per_s=student_batch / ms * 1e3, cache_bytes=cb,
                mode=mode, status="ok")


def ceilings() -> dict:
    """Measured HBM copy bandwidth (bytes read + written) and bf16 matmul rate on this device."""
    a = torch.empty(2**30, dtype=torch.uint8, device="cuda").random_()
    b = torch.empty_like(a)
    ms = timed(lambda: b.copy_(a), 3, 10)
    bw = 2 * a.numel() / ms * 1e3
    del a, b
    x = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    y = torch.randn_like(x)
    ms = timed(lambda: x @ y, 3, 10)
    return {"copy_bytes_per_s": bw, "bf16_matmul_flops": 2 * 8192**3 / ms * 1e3}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default="1b,8b")
    ap.add_argument("--schedules", default="attn25,cycle,all2048")
    ap.add_argument("--contexts", default="2048,8192,32768,131072")
    ap.add_argument("--batches", default="1,16")
    ap.add_argument("--parts", default="prefill,decode,maxbatch")
    ap.add_argument("--decode-steps", type=int, default=10)
    ap.add_argument("--maxbatch-context", type=int, default=131072)
    ap.add_argument("--student-maxbatch", type=int, default=256)
    ap.add_argument("--eager-too", action="store_true", help="also time eager decode at batch 1")
    ap.add_argument("--budget-s", type=float, default=540, help="start no measurement after this many seconds")
    ap.add_argument("--out", default="speed.json")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("bench_speed.py needs a CUDA device")
    args.deadline = time.time() + args.budget_s
    meta = {"command": "python " + " ".join(sys.argv), "device": torch.cuda.get_device_name(),
            "torch": torch.__version__, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "host": platform.node(), **ceilings()}
    rec = Recorder(Path(args.out), meta)
    print(json.dumps(meta), flush=True)
    contexts = [int(c) for c in args.contexts.split(",")]
    parts = args.parts.split(",")
    for shape in args.shapes.split(","):
        teacher = build(shape, "cuda")
        L = teacher.config.num_hidden_layers
        students = {}
        for s in args.schedules.split(","):
            spec = SCHEDULES[s](L)
            student = seed_student(teacher, parse_transpoints(spec, L), spec, shape, seed=0,
                                   dtype=torch.bfloat16, ssm_backend="auto")
            share_weights(student, teacher)
            students[s] = student
        for T in contexts:  # context by context, so a run cut short by its budget still covers the first ones
            if "prefill" in parts:
                prefill(rec, shape, teacher, students, [T], args)
            if "decode" in parts:
                decode(rec, shape, teacher, students, [T], [int(b) for b in args.batches.split(",")], args)
        if "maxbatch" in parts and shape == "1b":
            max_batch_decode(rec, shape, teacher, students, args.maxbatch_context, args.student_maxbatch, args)
        del teacher, students
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
