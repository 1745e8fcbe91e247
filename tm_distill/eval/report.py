"""The eval report on disk: report.json (stable keys), report.md (tables) and the PNG plots.

Every file is written atomically (a temp file in the same folder, then ``os.replace``), so a reader never
sees a half-written report. See docs/eval.md for how to read it.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..atomic import atomic_write_file
from ..convert.transpoints import describe_transpoints, is_auto_spec
from .metrics import BUCKETS
from .speed import speed_ratios

SCHEMA_VERSION = 1


def write_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` via a temp file in the same folder and ``os.replace``."""
    return atomic_write_file(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def _f(value, digits: int = 4) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        if value != 0 and (abs(value) >= 1e5 or abs(value) < 10 ** -digits):
            return f"{value:.3g}"
        return f"{value:.{digits}f}"
    return str(value)


def _table(header: list[str], rows: list[list]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines + [""]


_SCHEDULE_WIDTH = 40


def _schedule(model: dict) -> str:
    """The TransPoints column: the spec the student was made with when it is short (cycle=..., all=N), else the
    per-layer list cut after a whole entry, with the layer count."""
    tps = model.get("transpoints")
    if not tps:
        return "teacher (attention)"
    spec = model.get("transpoint_spec") or ""
    if spec and not is_auto_spec(spec) and len(spec) <= _SCHEDULE_WIDTH:
        return spec
    text = describe_transpoints(tps)
    if len(text) <= _SCHEDULE_WIDTH:
        return text
    return text[:_SCHEDULE_WIDTH].rsplit(",", 1)[0] + f",... ({len(tps)} layers)"


def _metrics_section(report: dict) -> list[str]:
    models = report["models"]
    rows = [[f"`{n}`", _schedule(m), _f(m["perplexity"], 3), _f(m["kl_to_teacher"]), _f(m["top1_agreement"])]
            for n, m in models.items()]
    lines = ["## Held-out text", "",
             f"{report['data']['windows']} windows of {report['data']['seq_len']} tokens from "
             f"`{report['data']['source']}` ({report['data']['split']}).", ""]
    lines += _table(["model", "TransPoints", "perplexity", "KL to teacher", "top-1 agreement"], rows)
    lines += ["### By position relative to each student's TransPoints", "",
              "before = t < min P (exact by construction), between = min P <= t < max finite P, "
              "after = t >= max finite P.", ""]
    rows = []
    for n, m in models.items():
        if m["kind"] != "student":
            continue
        for b in BUCKETS:
            v = m["by_position"][b]
            if v["tokens"] == 0:
                continue
            rows.append([f"`{n}`", b, f"[{v['positions'][0]}, {v['positions'][1]})", v["tokens"],
                         _f(v["perplexity"], 3), _f(v["teacher_perplexity"], 3), _f(v["kl_to_teacher"]),
                         _f(v["top1_agreement"])])
    if rows:
        lines += _table(["model", "bucket", "positions", "tokens", "perplexity", "teacher perplexity",
                         "KL to teacher", "top-1 agreement"], rows)
    return lines


def _layer_section(report: dict) -> list[str]:
    students = {n: m for n, m in report["models"].items() if m.get("layer_error")}
    if not students:
        return []
    names = list(students)
    lines = ["## Per-layer hidden-state error", "",
             "Relative L2 error of each student layer's mixer output vs the teacher's attention output, both on "
             "the teacher's own layer inputs, at positions >= that layer's TransPoint (– = no such position).", ""]
    rows = []
    n_layers = len(students[names[0]]["layer_error"])
    for i in range(n_layers):
        row = [i]
        for n in names:
            tps = students[n].get("transpoints") or []
            row += [describe_transpoints([tps[i]]) if i < len(tps) else "–", _f(students[n]["layer_error"][i])]
        rows.append(row)
    header = ["layer"] + [h for n in names for h in (f"P `{n}`", f"error `{n}`")]
    return lines + _table(header, rows)


def _retrieval_section(report: dict) -> list[str]:
    r = report.get("retrieval")
    if not r or not r.get("tasks"):
        return []
    filler = r.get("filler", "data")
    lines = ["## Retrieval", "",
             f"Greedy decoding; {r['trials']} trial(s) per length and depth (depths {r['depths']}), seed {r['seed']}; "
             f"passkey filler from {'the held-out data' if filler == 'data' else f'the {filler} corpus'}. "
             "Accuracy per context length (mean over depths):", ""]
    if r.get("skipped"):
        lines[-2] += " Skipped (too little filler text): " + ", ".join(sorted(r["skipped"])) + "."
    rows = []
    for task, per_model in r["tasks"].items():
        for name, e in per_model.items():
            by_len = []
            for length in r["lengths"]:
                cells = [c["accuracy"] for c in e["cells"] if c["length"] == length]
                by_len.append(_f(sum(cells) / len(cells), 2) if cells else "–")
            rows.append([task, f"`{name}`", *by_len, _f(e["accuracy"], 2)])
    return lines + _table(["task", "model", *[str(n) for n in r["lengths"]], "overall"], rows)


def _lm_eval_section(report: dict) -> list[str]:
    r = report.get("lm_eval")
    if not r:
        return []
    lines = ["## lm-evaluation-harness", "",
             f"Tasks {', '.join(r['tasks'])}; limit {r['limit']}; few-shot {r['num_fewshot']}.", ""]
    rows = []
    for name, per_task in r["results"].items():
        for task, metrics in per_task.items():
            shown = ", ".join(f"{k.split(',')[0]} {_f(v)}" for k, v in metrics.items()
                              if isinstance(v, float) and "stderr" not in k)
            rows.append([f"`{name}`", task, shown or "–"])
    return lines + _table(["model", "task", "scores"], rows)


def _speed_section(report: dict) -> list[str]:
    s = report.get("speed")
    if not s:
        return []
    lines = ["## Speed and memory", "",
             f"Device: {s['device']}; {s['decode_tokens']} greedy tokens after a random prompt. Peak memory: "
             f"{s['memory_method']}.", ""]
    if s.get("load_average") is not None:  # a CPU: the timings are the machine's, under its load at the time
        lines[-2] += (f" On a CPU the timings depend on what else runs on it (load average {s['load_average']:.1f} on "
                      f"{s['cpu_count']} cores while timing): compare rows of this table with each other, not with "
                      "other runs; docs/benchmarks.md measures speed on a GPU.")
    ratios = speed_ratios(s)
    rows = []
    for name, per_len in s["results"].items():
        for row, ratio in zip(per_len, ratios[name]):
            rows.append([f"`{name}`", row["length"], _f(row["prefill_tokens_per_s"], 1),
                         _f(ratio["prefill_x_teacher"], 2), _f(row["decode_tokens_per_s"], 1),
                         _f(ratio["decode_x_teacher"], 2), _f(row.get("x_bound"), 2),
                         _f(row["peak_memory_bytes"] / 2**20, 1), _f(row["cache_bytes"] / 2**20, 2)])
    lines += ["× teacher: tokens/s over the teacher's at the same length, timed in this run (> 1: faster)."]
    if s.get("copy_bytes_per_s"):
        lines[-1] += (" × bound: the batch-1 decode step over the time to read its weights once at the copy "
                      f"bandwidth measured here ({s['copy_bytes_per_s'] / 1e9:.0f} GB/s read + written); 1.0 is "
                      "the floor.")
    else:
        lines[-1] += " × bound (the decode step over the weight-read bound) is measured on CUDA only."
    lines.append("")
    return lines + _table(["model", "prompt length", "prefill tok/s", "prefill × teacher", "decode tok/s",
                           "decode × teacher", "× bound", "peak memory MiB", "cache MiB"], rows)


def render_markdown(report: dict) -> str:
    """The human-readable report (tables and plot links) from the report dict."""
    lines = ["# tm-distill eval report", "",
             f"- teacher: `{report['teacher']['source']}`",
             f"- students: {', '.join(f'`{n}`' for n, m in report['models'].items() if m['kind'] == 'student')}",
             f"- device {report['device']}, dtype {report['dtype']}, created {report['created']}"]
    if report.get("transpoints_override"):
        lines.append(f"- TransPoints overridden for every student: `{report['transpoints_override']}`")
    lines += ["", "How to read this report: docs/eval.md in the tm-distill repository.", ""]
    lines += _metrics_section(report)
    lines += _layer_section(report)
    lines += _retrieval_section(report)
    lines += _lm_eval_section(report)
    lines += _speed_section(report)
    if report.get("plots"):
        lines += ["## Plots", ""] + [f"![{p}]({p})" for p in report["plots"]] + [""]
    return "\n".join(lines)


def write_report(report: dict, out_dir: str | Path, plots: bool = True) -> Path:
    """Write the plots, report.json and report.md into ``out_dir`` (atomically); returns the folder."""
    from .plots import PLOTS, write_plots  # noqa: PLC0415  (matplotlib only when writing)

    out = Path(out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    if plots:
        report["plots"] = write_plots(report, out)
    else:  # no plots this time: none of an earlier report's may stay beside it
        report["plots"] = []
        for name in PLOTS:
            (out / name).unlink(missing_ok=True)
    write_atomic(out / "report.json", json.dumps(report, indent=1, allow_nan=False) + "\n")
    write_atomic(out / "report.md", render_markdown(report))
    return out


__all__ = ["SCHEMA_VERSION", "render_markdown", "write_atomic", "write_report"]
