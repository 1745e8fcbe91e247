"""Student vs teacher in one run: prefill latency, decode tokens/s, the weight-read bound, memory (bf16).

    python benchmarks/bench_speed.py --shapes 1b --out $OUT/speed_1b.json     # < 9 min on one H100/H200
    python benchmarks/bench_speed.py --shapes 8b --out $OUT/speed_8b.json
    python benchmarks/bench_speed.py --smoke --out /tmp/speed_smoke.json      # tiny, CPU, seconds (CI)

What the speed targets (docs/benchmarks.md) need, by default: prefill at 512, 2k, 8k and 128k tokens (batch 1);
decode at 2k, 8k and 32k tokens of context, batch 1 and 16; the teacher and the attn25, cycle and all=2048
students, each shape in one process. Teacher = transformers' LlamaForCausalLM (SDPA); student = tm_distill.convert.seed_student(teacher).
Prefill: one sequence of `context` tokens into the cache generation uses (static for the student, with room for
`--max-new` more tokens: a layer whose TransPoint lies beyond runs no Memory Converter), logits of the last token
only. Decode: one token per step on a cache that already holds `context` tokens, filled with random
values (decode cost does not depend on cache values; batch 16 at long contexts needs no batch-16 prefill).
Teacher: transformers' StaticCache, CUDA-graph captured (mode recorded). Student: the static TransMambaCache and
models.graphs.DecodeGraph at every context (a fallback to eager would be recorded as the mode). Each timed repeat
decodes `--decode-steps` tokens from the same starting position. The weight-read bound of a batch-1 step is the
bytes of weights one step must read (every parameter once, except an untied input embedding, of which a step
reads one row) over the device-to-device copy bandwidth measured in the same run. Timing: CUDA events,
warm-up, median of repeats. Results are written to the JSON file after every measurement (a run cut short by
--budget-s keeps what it measured), and a markdown table is printed at the end.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

import torch
from transformers import LlamaConfig, StaticCache

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import (ResultFile, capture_graph, ceilings, ints, md_table, parser,  # noqa: E402
                               random_llama, run_meta, smoke_or_cuda, timed)
from tm_distill.convert import map_teacher_key, parse_transpoints, seed_student  # noqa: E402
from tm_distill.eval.speed import parameter_bytes, read_bytes_per_step  # noqa: E402
from tm_distill.models import TransMambaCache  # noqa: E402
from tm_distill.models.cache import CACHE_KWARG, output_cache  # noqa: E402
from tm_distill.models.graphs import DecodeGraph, capturable_reason  # noqa: E402

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


def build(shape: str, device, dtype):
    """The teacher of a shape: a Llama with random weights (seed 0), SDPA attention."""
    cfg = LlamaConfig(**SHAPES[shape], max_position_embeddings=262144, rope_theta=500000.0)
    cfg._attn_implementation = "sdpa"
    return random_llama(cfg, device, dtype)


def share_weights(student, teacher):
    """Point the student's seeded parameters at the teacher's (identical values), so that the teacher and
    three students fit on one GPU at the 8B shape; each model's weights are still counted in full."""
    for key, tensor in teacher.state_dict().items():
        if "rotary_emb" in key:
            continue
        target = student.get_parameter(map_teacher_key(key))
        assert torch.equal(target, tensor), key
        target.data = tensor
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def models_of(teacher, students):
    return [("teacher", "-", teacher)] + [("student", s, m) for s, m in students.items()]


def prefill_fn(model, who: str, T: int, max_new: int, ids, keep: dict | None = None):
    """One prefill of ids (1, T) into the cache generation uses (the student's static one, room for max_new
    more tokens), logits of the last token only; ``keep["cache"]`` then holds the filled cache."""
    L = model.config.num_hidden_layers

    def run():
        cache = TransMambaCache(L, max_length=T + max_new) if who == "student" else None
        with torch.no_grad():
            o = model(ids, **{CACHE_KWARG: cache}, use_cache=True, logits_to_keep=1)
        if keep is not None:
            keep["cache"] = output_cache(o)
    return run


def prefill(rec, shape, teacher, students, T, args):
    """Prefill latency of every model at T tokens. The repeats alternate between the models (teacher, student,
    ..., teacher, ...), so a drift of the host's speed during the run (short prefills are host-bound) reaches
    them alike; the peak memory of each comes from one more call of its own."""
    device = teacher.device
    on_cuda = device.type == "cuda"
    L = teacher.config.num_hidden_layers
    kv_per_tok = 2 * L * teacher.config.num_key_value_heads * teacher.config.head_dim * teacher.dtype.itemsize
    ids = torch.randint(0, teacher.config.vocab_size, (1, T), device=device)
    warm, reps = args.reps_for(T)
    if time.time() > args.deadline:
        return
    out = {}
    entries = [(who, sched, model, prefill_fn(model, who, T, args.max_new, ids, keep=out))
               for who, sched, model in models_of(teacher, students)]
    times: dict[str, list[float]] = {sched: [] for _, sched, _, _ in entries}
    failed = set()
    for rep in range(warm + reps):
        for who, sched, _, run in entries:
            if sched in failed:
                continue
            try:
                ms = timed(run, 0, 1, device)
            except torch.cuda.OutOfMemoryError:
                failed.add(sched)
                out.clear()
                torch.cuda.empty_cache()
                continue
            if rep >= warm:
                times[sched].append(ms)
    for who, sched, model, run in entries:
        if sched in failed:
            rec.add(kind="prefill", shape=shape, model=who, schedule=sched, context=T, batch=1, status="oom")
            continue
        out.clear()
        if on_cuda:
            torch.cuda.empty_cache()
            base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
        run()
        peak = torch.cuda.max_memory_allocated() - base if on_cuda else None
        mem = out["cache"].memory_bytes() if who == "student" else None
        cache_bytes = mem["kv"] + mem["state"] if mem else kv_per_tok * T
        out.clear()
        ms = statistics.median(times[sched])
        rec.add(kind="prefill", shape=shape, model=who, schedule=sched, context=T, batch=1, ms=ms,
                tokens_per_s=T / ms * 1e3, weights_bytes=parameter_bytes(model), cache_bytes=cache_bytes,
                peak_extra_bytes=peak, status="ok")


def teacher_step(teacher, T, batch):
    """(step, cache bytes): one teacher decode step on a StaticCache holding T tokens of random values.

    step() returns the logits; call it without gradients (``teacher_decode`` and ``profile_speed.py`` do).
    """
    cfg, device = teacher.config, teacher.device
    cache = StaticCache(config=cfg, max_cache_len=T + 1)
    ids = torch.randint(0, cfg.vocab_size, (batch, 1), device=device)
    cp = torch.tensor([T - 1], device=device)
    pos = torch.full((batch, 1), T - 1, device=device)

    counters = []  # transformers >= 5 writes a StaticCache at a device-side counter: reset it every step

    def step():
        for c in counters:
            c.fill_(T)
        return teacher(input_ids=ids, **{CACHE_KWARG: cache}, cache_position=cp, position_ids=pos,
                       use_cache=True, logits_to_keep=1).logits

    with torch.no_grad():
        step()  # allocates the static cache
        for layer in cache.layers:
            layer.keys.normal_()
            layer.values.normal_()
            if isinstance(getattr(layer, "cumulative_length", None), torch.Tensor):
                counters.append(layer.cumulative_length)
    cp.fill_(T)
    pos.fill_(T)
    cache_bytes = sum(t.numel() * t.element_size() for l in cache.layers for t in (l.keys, l.values))
    return step, cache_bytes


def teacher_decode(teacher, T, batch, steps, graph: bool):
    """Milliseconds per decode step of the teacher with a StaticCache holding T tokens."""
    device = teacher.device
    step, cache_bytes = teacher_step(teacher, T, batch)
    with torch.no_grad():
        fn, mode = step, "eager"
        if graph and device.type == "cuda":
            try:
                fn, mode = capture_graph(step, device).replay, "cuda_graph"
            except Exception as err:  # noqa: BLE001 - any capture failure falls back to eager, recorded
                mode = f"eager (graph capture failed: {type(err).__name__})"
                torch.cuda.synchronize()
        ms = timed(lambda: [fn() for _ in range(steps)], 1, 3, device) / steps
    return ms, cache_bytes, mode


def student_cache(model, T, batch, steps):
    """A static TransMambaCache that has seen T tokens, random contents of the sizes decoding would have:
    K/V buffers for layers still before their TransPoint, SSM states for every switching layer."""
    cfg, device = model.config, model.device
    cache = TransMambaCache(cfg.num_hidden_layers, max_length=T + steps + 1)
    h, d, kv = cfg.num_attention_heads, cfg.head_dim, cfg.num_key_value_heads
    for i, p in enumerate(cfg.transpoints):
        st = cache.states[i]
        if p > T:  # still in its attention phase: a buffer of its capacity
            cap = min(p, cache.max_length)
            st.keys = torch.randn(batch, kv, cap, d, device=device, dtype=model.dtype)
            st.values = torch.randn_like(st.keys)
        if cfg.switches(i) and cache.reaches(p):
            st.ssm_state = torch.randn(batch, h, d, d, device=device) * 0.1
    cache.seen_tokens = T
    return cache


def student_decode(model, T, batch, steps, graph: bool):
    cache = student_cache(model, T, batch, steps)
    ids = torch.randint(0, model.config.vocab_size, (batch, 1), device=model.device)
    mem = cache.memory_bytes()
    reason = capturable_reason(model, cache) if graph else "eager asked"
    with torch.no_grad():
        if reason is None:
            dg = DecodeGraph(model, cache)

            def fn():
                cache.seen_tokens = T  # every repeat decodes from T: the same phase, no re-capture
                for _ in range(steps):
                    dg(ids)

            mode = "cuda_graph"
        else:
            def fn():
                cache.seen_tokens = T
                for _ in range(steps):
                    model(input_ids=ids, cache=cache, use_cache=True, logits_to_keep=1)

            mode = "eager" if not graph or model.device.type != "cuda" else f"eager ({reason})"
        ms = timed(fn, 1, 3, model.device) / steps
    return ms, mem["kv"] + mem["state"], mode


def decode(rec, shape, teacher, students, T, batches, args):
    cfg, device = teacher.config, teacher.device
    kv_per_tok = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * cfg.head_dim * teacher.dtype.itemsize
    for b in batches:
        free = torch.cuda.mem_get_info()[0] if device.type == "cuda" else float("inf")
        fits = kv_per_tok * (T + 1) * b < 0.85 * free
        for who, sched, model in models_of(teacher, students):
            if time.time() > args.deadline:
                return
            if who == "teacher" and not fits:
                rec.add(kind="decode", shape=shape, model=who, schedule=sched, context=T, batch=b,
                        status="does not fit")
                continue
            if device.type == "cuda":
                torch.cuda.empty_cache()
            try:
                fn = teacher_decode if who == "teacher" else student_decode
                ms, cache_bytes, mode = fn(model, T, b, args.decode_steps, graph=not args.eager)
                row = dict(kind="decode", shape=shape, model=who, schedule=sched, context=T, batch=b,
                           ms_per_step=ms, tokens_per_s=b / ms * 1e3, weights_bytes=parameter_bytes(model),
                           cache_bytes=cache_bytes, mode=mode, status="ok")
                if b == 1 and args.bandwidth:
                    bound = read_bytes_per_step(model) / args.bandwidth * 1e3
                    row.update(weight_read_bytes=read_bytes_per_step(model), bound_ms=bound, x_bound=ms / bound)
                rec.add(**row)
            except torch.cuda.OutOfMemoryError:
                torch.cuda.empty_cache()
                rec.add(kind="decode", shape=shape, model=who, schedule=sched, context=T, batch=b, status="oom")


def ratio_table(rows: list[dict], kind: str, scheds: list[str]) -> list[str]:
    """One shape's prefill ms or decode tok/s per (context, batch): teacher, then each schedule (× teacher)."""
    key, unit = {"prefill": ("ms", "ms"), "decode": ("tokens_per_s", "tok/s")}[kind]
    sel = {(r["context"], r["batch"], r["schedule"]): r for r in rows if r["kind"] == kind}
    lines = []
    for T, b in sorted({(k[0], k[1]) for k in sel}):
        t = sel.get((T, b, "-"))
        cells = []
        for s in scheds:
            r = sel.get((T, b, s))
            if r is None:
                cells.append("–")
                continue
            speed = (t[key] / r[key] if key == "ms" else r[key] / t[key]) if t else None
            mode = "" if kind == "prefill" or r["mode"] == "cuda_graph" else f" [{r['mode']}]"
            cells.append(f"{r[key]:.1f}{mode}" + (f" ({speed:.2f}×)" if speed else ""))
        lines.append([T, b, f"{t[key]:.1f}" if t else "–", *cells])
    header = ["context", "batch", f"teacher {unit}", *(f"{s} {unit} (× teacher)" for s in scheds)]
    return md_table(header, lines) if lines else []


def bound_table(rows: list[dict]) -> list[str]:
    """Batch-1 decode rows against the weight-read bound (the rows that have one)."""
    bound = [r for r in rows if "x_bound" in r]
    return md_table(["model", "context", "ms/step", "bound ms", "× bound"], (
        [r["model"] if r["model"] == "teacher" else r["schedule"], r["context"], f"{r['ms_per_step']:.3f}",
         f"{r['bound_ms']:.3f}", f"{r['x_bound']:.2f}"] for r in bound)) if bound else []


def markdown(data: dict) -> str:
    """Tables of a result file: prefill ms and decode tok/s per schedule against the teacher, the bound."""
    rows = [r for r in data["results"] if r.get("status") == "ok"]
    out = [f"Device: {data['meta']['device']}; command: `{data['meta']['command']}`", ""]
    for shape in dict.fromkeys(r["shape"] for r in rows):
        mine = [r for r in rows if r["shape"] == shape]
        scheds = list(dict.fromkeys(r["schedule"] for r in mine if r["model"] != "teacher"))
        for kind in ("prefill", "decode"):
            if table := ratio_table(mine, kind, scheds):
                out += [f"### {kind}, {shape} shape", "", *table, ""]
        if table := bound_table(mine):
            out += [f"### batch-1 decode vs the weight-read bound, {shape} shape", "", *table, ""]
    return "\n".join(out)


def students_of(teacher, schedules: list[str], shape: str, dtype) -> dict:
    """{schedule: student} seeded from the teacher, each sharing the teacher's tensors (see share_weights)."""
    L = teacher.config.num_hidden_layers
    students = {}
    for s in schedules:
        spec = SCHEDULES[s](L)
        student = seed_student(teacher, parse_transpoints(spec, L), spec, shape, seed=0, dtype=dtype,
                               ssm_backend="auto")
        share_weights(student, teacher)
        students[s] = student.eval()
    return students


def model_args(ap, shapes: str, prefill: str, decode: str, batches: str):
    """The arguments this script and profile_speed.py share: which models, contexts and batches."""
    ap.add_argument("--shapes", default=shapes, help="comma list of " + ", ".join(SHAPES))
    ap.add_argument("--schedules", default=",".join(SCHEDULES))
    ap.add_argument("--prefill-contexts", default=prefill)
    ap.add_argument("--decode-contexts", default=decode)
    ap.add_argument("--batches", default=batches)
    ap.add_argument("--max-new", type=int, default=128, help="room for new tokens in the prefill's static cache")


def parse(argv):
    ap = parser(__doc__)
    model_args(ap, "1b,8b", "512,2048,8192,131072", "2048,8192,32768", "1,16")
    ap.add_argument("--parts", default="prefill,decode")
    ap.add_argument("--decode-steps", type=int, default=8)
    ap.add_argument("--eager", action="store_true", help="time decode without CUDA graphs")
    ap.add_argument("--budget-s", type=float, default=500, help="start no measurement after this many seconds")
    ap.add_argument("--smoke", action="store_true", help="the tiny shape on the CPU in fp32, a few seconds (CI)")
    ap.add_argument("--out", default="speed.json")
    args = ap.parse_args(argv)
    if args.smoke:
        args.shapes, args.prefill_contexts, args.decode_contexts, args.batches = "tiny", "64,160", "96,160", "1,2"
        args.decode_steps = 2
    args.deadline = time.time() + args.budget_s
    args.reps_for = (lambda T: (1, 1)) if args.smoke else (
        lambda T: (1, 2) if T >= 16384 else (1, 3) if T >= 8192 else (5, 15))
    return args


def main(argv=None):
    args = parse(argv)
    device, dtype = smoke_or_cuda("bench_speed.py", args.smoke)
    meta = {**run_meta(__file__, argv, device), **(ceilings() if device.type == "cuda" else {})}
    args.bandwidth = meta.get("copy_bytes_per_s")
    rec = ResultFile(args.out, meta)
    print(json.dumps(meta), flush=True)
    parts = args.parts.split(",")
    for shape in args.shapes.split(","):
        teacher = build(shape, device, dtype)
        students = students_of(teacher, args.schedules.split(","), shape, dtype)
        # short contexts first, so a run cut short by its budget keeps them
        for T in sorted(set(ints(args.prefill_contexts)) | set(ints(args.decode_contexts))):
            if "prefill" in parts and T in ints(args.prefill_contexts):
                prefill(rec, shape, teacher, students, T, args)
            if "decode" in parts and T in ints(args.decode_contexts):
                decode(rec, shape, teacher, students, T, ints(args.batches), args)
        del teacher, students
        if device.type == "cuda":
            torch.cuda.empty_cache()
    print(markdown(rec.data), flush=True)
    return rec.data


if __name__ == "__main__":
    main()
