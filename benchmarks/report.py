"""Render docs/benchmarks.md's generated section and docs/bench_*.png from a folder of benchmark JSON results.

    python benchmarks/report.py benchmarks/results/2026-11-23-h200
    python benchmarks/report.py benchmarks/results/2026-11-26-h200 --doc /tmp/benchmarks.md

Reads speed_*.json (bench_speed.py: prefill, decode, memory and, where the file has them, batch-1 decode against
the weight-read bound), kernels*.json (bench_kernels.py) and distill_*.json (bench_distill.py, as its
``--markdown`` renders it) from the folder and replaces the text between the GENERATED markers of --doc;
hand-written notes outside the markers stay. (``bench_speed.py`` and ``bench_distill.py --markdown`` print
one result file's tables; this script renders a whole folder.)
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks import bench_distill, bench_speed  # noqa: E402
from benchmarks.common import md_table, parser  # noqa: E402

START, END = "<!-- GENERATED:START (benchmarks/report.py) -->", "<!-- GENERATED:END -->"
SCHEDS = ["attn25", "cycle", "all2048"]
GB = 1e9


def load(folder: Path):
    """(speed rows, kernel rows, distill result files, every file's meta) of a results folder."""
    speed, kernels, distill, metas = [], [], [], []
    for f in sorted(folder.glob("speed_*.json")):
        d = json.loads(f.read_text())
        metas.append(d["meta"])
        speed += d["results"]
    for f in sorted(folder.glob("kernels*.json")):
        d = json.loads(f.read_text())
        metas.append(d["meta"])
        kernels += [dict(r, _cmd=d["meta"]["command"]) for r in d["results"]]
    for f in sorted(folder.glob("distill_*.json")):
        distill.append(json.loads(f.read_text()))
        metas.append(distill[-1]["meta"])
    return speed, kernels, distill, metas


def ctx(t: int) -> str:
    return f"{t // 1024}k" if t >= 1024 else str(t)


def index(rows, kind):
    out = {}
    for r in rows:
        if r["kind"] == kind:
            out[(r["shape"], r["model"], r["schedule"], r["context"], r["batch"])] = r
    return out


def prefill_table(rows, shape):
    idx = index(rows, "prefill")
    lines = []
    for T in sorted({k[3] for k in idx if k[0] == shape}):
        t = idx.get((shape, "teacher", "-", T, 1))
        cells = []
        for s in SCHEDS:
            r = idx.get((shape, "student", s, T, 1))
            if r is None or r["status"] != "ok":
                cells.append("not measured" if r is None else r["status"])
            elif t and t["status"] == "ok":
                cells.append(f"{r['ms']:.1f} ({t['ms'] / r['ms']:.2f}×)")
            else:
                cells.append(f"{r['ms']:.1f}")
        lines.append([ctx(T), f"{t['ms']:.1f}" if t and t["status"] == "ok" else "not measured", *cells])
    return "\n".join(md_table(["context", "teacher ms", *(f"{s} ms (speed-up)" for s in SCHEDS)], lines))


def decode_table(rows, shape):
    idx = index(rows, "decode")
    lines = []
    for T, b in sorted({(k[3], k[4]) for k in idx if k[0] == shape}):
        t = idx.get((shape, "teacher", "-", T, b))
        tok = t["tokens_per_s"] if t and t["status"] == "ok" else None
        cells = []
        for s in SCHEDS:
            r = idx.get((shape, "student", s, T, b))
            if r is None or r["status"] != "ok":
                cells.append("not measured" if r is None else r["status"])
                continue
            mode = "graph" if r["mode"] == "cuda_graph" else "eager"
            cells.append(f"{r['tokens_per_s']:.0f} [{mode}]" + (f" ({r['tokens_per_s'] / tok:.2f}×)" if tok else ""))
        tcell = f"{tok:.0f} [{'graph' if t['mode'] == 'cuda_graph' else t['mode']}]" if tok else (
            t["status"] if t else "not measured")
        lines.append([ctx(T), b, tcell, *cells])
    return "\n".join(md_table(["context", "batch", "teacher tok/s", *(f"{s} tok/s (×teacher)" for s in SCHEDS)],
                              lines))


def memory_table(rows, shape):
    pre, dec = index(rows, "prefill"), index(rows, "decode")
    lines = []
    for T in sorted({k[3] for k in pre if k[0] == shape}):
        t = pre.get((shape, "teacher", "-", T, 1))
        for who, s in [("teacher", "-")] + [("student", s) for s in SCHEDS]:
            r = pre.get((shape, who, s, T, 1)) or dec.get((shape, who, s, T, 1))
            if r is None or r["status"] != "ok":
                continue
            ratio = f"1/{t['cache_bytes'] / r['cache_bytes']:.0f}" if t and who == "student" else "1"
            peak = f"{r['peak_extra_bytes'] / GB:.2f}" if r.get("peak_extra_bytes") is not None else "–"
            lines.append([ctx(T), who if who == "teacher" else s, f"{r['weights_bytes'] / GB:.2f}",
                          f"{r['cache_bytes'] / GB:.4f}", ratio, peak])
    return "\n".join(md_table(["context", "model", "weights GB", "cache GB (batch 1)", "cache / teacher KV",
                               "prefill peak extra GB"], lines))


def kernel_tables(kernels):
    fb = {(r["head_dim"], r["context"]): r for r in kernels if r["kind"] == "scan_fwd_bwd"}
    scan = []
    for r in sorted((r for r in kernels if r["kind"] == "scan_fwd"), key=lambda r: (r["head_dim"], r["context"])):
        b = fb.get((r["head_dim"], r["context"]))
        scan.append([r["head_dim"], ctx(r["context"]), f"{r['ms']:.2f}", f"{r['sdpa_ms']:.2f}",
                     f"{r['attn_over_scan']:.2f}", f"{r['bytes_per_s'] / 1e9:.0f} ({100 * r['frac_bw']:.1f}%)",
                     f"{r['flops_per_s'] / 1e12:.1f} ({100 * r['frac_flops']:.1f}%)",
                     *([f"{b['ms']:.2f}", f"{b['sdpa_ms']:.2f}"] if b else ["–", "–"])])
    step = []
    for r in kernels:
        if r["kind"] != "decode_step":
            continue
        if r.get("status") != "ok":
            step.append([r["variant"], r.get("mode", ""), r.get("batch", ""), r.get("head_dim", ""), r["status"], ""])
        else:
            step.append([r["variant"], r["mode"], r["batch"], r["head_dim"], f"{r['us']:.1f}",
                         f"{r['bytes_per_s'] / 1e9:.0f}"])
    return ("\n".join(md_table(["head dim", "context", "scan fwd ms", "SDPA fwd ms", "SDPA/scan",
                                "GB/s (of copy peak)", "TFLOP/s (of matmul peak)", "fwd+bwd scan ms",
                                "fwd+bwd SDPA ms"], scan)),
            "\n".join(md_table(["variant", "launch", "batch", "head dim", "µs per call",
                                "state GB/s (read+write)"], step)))


def plots(rows, out_dir: Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made = []
    for kind, key, ylabel, fname in [("prefill", "ms", "prefill latency, ms (log)", "bench_prefill.png"),
                                     ("decode", "tokens_per_s", "decode tokens/s, batch 1 (log)", "bench_decode.png")]:
        shapes = sorted({r["shape"] for r in rows})
        fig, axes = plt.subplots(1, len(shapes), figsize=(5 * len(shapes), 3.6), squeeze=False)
        for ax, shape in zip(axes[0], shapes):
            series = defaultdict(list)
            for r in rows:
                if r["kind"] == kind and r["shape"] == shape and r["batch"] == 1 and r["status"] == "ok":
                    series[r["model"] if r["model"] == "teacher" else r["schedule"]].append((r["context"], r[key]))
            for name, pts in sorted(series.items()):
                pts.sort()
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=name,
                        linewidth=2.5 if name == "teacher" else 1.5)
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_title(f"{shape} shape, bf16")
            ax.set_xlabel("context tokens")
            ax.set_ylabel(ylabel)
            ax.legend(fontsize=8)
            ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(out_dir / fname, dpi=110)
        plt.close(fig)
        made.append(fname)
    return made


def header(folder: Path, metas: list[dict]) -> list[str]:
    """The machine, the measured ceilings and the commands as the result files record them."""
    m = metas[0]
    ceil = next((x for x in metas if "copy_bytes_per_s" in x), None)
    machine = " (the device tool's `nvidia-h200` kind: one H200, 139 GiB)" if "H200" in m["device"] else ""
    dates = ", ".join(sorted({x["date"] for x in metas}))
    where = str(folder.relative_to(ROOT)) if folder.is_relative_to(ROOT) else str(folder)
    parts = [f"Machine: {m['device']}{machine}, torch {m['torch']}; runs on {dates}." + (
             f" Measured ceilings in the same runs: device-to-device copy {ceil['copy_bytes_per_s'] / 1e12:.2f} TB/s "
             f"(read + write), bf16 8192³ matmul {ceil['bf16_matmul_flops'] / 1e12:.0f} TFLOP/s." if ceil else ""),
             "", "Commands as the result files record them (`meta.command`: the scripts of that day, run with `python` "
             "on the device from the repository root, results copied to `" + where + "`; a "
             "script's flags may have changed since, see its `--help`):", ""]
    return parts + [f"    {x['command'].replace('/root/out/', '$OUT/').removeprefix('python ')}" for x in metas]


def speed_sections(speed: list[dict]) -> list[str]:
    parts = []
    for shape in sorted({r["shape"] for r in speed}):
        parts += ["", f"### Prefill latency, {shape} shape (batch 1, bf16; median of CUDA-event timings)", "",
                  prefill_table(speed, shape), "",
                  f"### Decode tokens/s, {shape} shape (cache filled with random values; [graph] = CUDA-graph replay)",
                  "", decode_table(speed, shape), "", f"### Memory, {shape} shape", "", memory_table(speed, shape)]
        bound = bench_speed.bound_table([r for r in speed if r["shape"] == shape and r.get("status") == "ok"])
        if bound:
            parts += ["", f"### Batch-1 decode against the weight-read bound, {shape} shape", "", *bound]
    mb = [r for r in speed if r["kind"] == "decode_maxbatch" and r["status"] == "ok"]
    if mb:
        parts += ["", "### Decode at the largest batch (1b shape)", "", *md_table(
            ["model", "context", "batch", "tok/s", "cache GB"],
            ([r["model"] if r["model"] == "teacher" else r["schedule"], ctx(r["context"]), r["batch"],
              f"{r['tokens_per_s']:.0f}", f"{r['cache_bytes'] / GB:.2f}"] for r in mb))]
    return parts


def render(folder: Path, doc: Path):
    speed, kernels, distill, metas = load(folder)
    if not metas:
        raise SystemExit(f"report.py: {folder} holds no speed_*.json, kernels*.json or distill_*.json; "
                         "give a folder of bench_speed.py, bench_kernels.py or bench_distill.py results")
    parts = header(folder, metas) + speed_sections(speed)
    if kernels:
        scan, step = kernel_tables(kernels)
        parts += ["", "### The scan alone (one mixer: 32 heads, 8 KV groups, bf16, batch 1, chunk 64)", "", scan, "",
                  "### One decode state update (32 heads, state head_dim × head_dim fp32), and SDPA decode for scale",
                  "", step]
    for data in distill:
        parts += ["", bench_distill.markdown(data).rstrip("\n")]
    for f in plots(speed, doc.parent) if speed else []:
        parts += ["", f"![{f}]({f})"]
    text = doc.read_text() if doc.exists() else f"# Benchmarks\n\n{START}\n{END}\n"
    head, rest = text.split(START)
    _, tail = rest.split(END)
    doc.write_text(head + START + "\n" + "\n".join(parts) + "\n" + END + tail)


def main(argv=None):
    ap = parser(__doc__)
    ap.add_argument("folder", type=Path)
    ap.add_argument("--doc", type=Path, default=ROOT / "docs" / "benchmarks.md")
    args = ap.parse_args(argv)
    render(args.folder.resolve(), args.doc)


if __name__ == "__main__":
    main()
