"""What every benchmark script shares: timing, the description of a run, result files, markdown tables and
argument boilerplate. Each script keeps only what it measures.

Timing is in milliseconds with CUDA events on a CUDA device (the device's own clock, no host round trip) and
with the wall clock elsewhere; a result file is rewritten after every row, so a run cut short keeps what it
measured.
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------------- timing
def sync(device) -> None:
    """Wait for the device's queued work (a no-op off CUDA). ``device``: a torch.device or its name."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def time_ms(fn, device) -> float:
    """Milliseconds of one call of fn(): CUDA events on a CUDA device, the wall clock elsewhere."""
    if torch.device(device).type != "cuda":
        t0 = time.perf_counter()
        fn()
        return (time.perf_counter() - t0) * 1e3
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end)


def timed(fn, warmup: int, reps: int, device=torch.device("cuda")) -> float:
    """Median milliseconds of fn() over reps, after warmup calls (CUDA events; wall clock off CUDA)."""
    for _ in range(warmup):
        fn()
    return statistics.median(time_ms(fn, device) for _ in range(reps))


def wall_seconds(fn, device) -> float:
    """Wall seconds of fn() with the device's queue drained before and after (work of many steps at once)."""
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


def capture_graph(fn, device=None, warmup: int = 2) -> torch.cuda.CUDAGraph:
    """A CUDA graph replaying fn(), after ``warmup`` calls on a side stream (capture needs warmed-up kernels)."""
    s = torch.cuda.Stream(device)
    s.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(s):
        for _ in range(warmup):
            fn()
    torch.cuda.current_stream(device).wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn()
    return g


# ---------------------------------------------------------------------------------- the run's description
def ceilings() -> dict:
    """Measured HBM copy bandwidth (bytes read + written) and bf16 matmul rate on this (CUDA) device."""
    from tm_distill.eval.speed import copy_bandwidth  # noqa: PLC0415

    bw = copy_bandwidth(torch.device("cuda"))
    x = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    y = torch.randn_like(x)
    ms = timed(lambda: x @ y, 3, 10)
    return {"copy_bytes_per_s": bw, "bf16_matmul_flops": 2 * 8192**3 / ms * 1e3}


def device_name(device) -> str:
    """The GPU's name (``torch.cuda.get_device_name``) on a CUDA device, else "cpu"."""
    return torch.cuda.get_device_name(device) if torch.device(device).type == "cuda" else "cpu"


def utc_minute() -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())


def utc_date() -> str:
    return time.strftime("%Y-%m-%d", time.gmtime())


def command_line(script: str, argv: list[str] | None = None) -> str:
    """The command that reruns this one from the repository root: ``python benchmarks/<script> <argv>``
    (``argv``: the arguments given to main, or the process's own when None)."""
    args = sys.argv[1:] if argv is None else argv
    return " ".join(["python", f"benchmarks/{Path(script).name}", *([shlex.join(args)] if args else [])])


def git_commit() -> str:
    """The checkout's short commit hash, "" outside a git checkout."""
    proc = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT)
    return proc.stdout.strip()


def run_meta(script: str, argv: list[str] | None, device) -> dict:
    """The "meta" of a result file: command, device, torch version, date (UTC, to the minute) and host."""
    return {"command": command_line(script, argv), "device": device_name(device), "torch": torch.__version__,
            "date": utc_minute(), "host": platform.node()}


# ------------------------------------------------------------------------------------------- result files
def write_json(path: Path, data, indent: int = 1) -> Path:
    """Write ``data`` as JSON at ``path`` (folders made as needed); values JSON lacks are written as text."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=indent, default=str) + "\n")
    return path


class ResultFile:
    """A result file ``{"meta": meta, rows: [row, ...], part: ...}``, rewritten after every row or part.

    rows: the key of the row list (None: no list, parts only); echo: row -> the line printed for it (default:
    the row as JSON; False: nothing printed).
    """

    def __init__(self, path: Path, meta: dict, rows: str | None = "results", echo=None, indent: int = 1):
        self.path, self.rows, self.indent = Path(path), rows, indent
        self.echo = (lambda row: json.dumps(row, default=str)) if echo is None else echo
        self.data = {"meta": meta, **({rows: []} if rows else {})}
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def add(self, **row) -> None:
        self.data[self.rows].append(row)
        write_json(self.path, self.data, self.indent)
        if self.echo:
            print(self.echo(row), flush=True)

    def set(self, **parts) -> None:
        self.data.update(parts)
        write_json(self.path, self.data, self.indent)


# ------------------------------------------------------------------------------------------------- tables
def md_row(cells) -> str:
    """"| a | b |"; an empty cell is "| |"."""
    return "|" + "|".join(f" {c} " if str(c) else " " for c in cells) + "|"


def md_table(header, rows) -> list[str]:
    """A markdown table's lines: the header, the rule, one line per row of cells."""
    return [md_row(header), md_row("---" for _ in header), *(md_row(r) for r in rows)]


# ---------------------------------------------------------------------------------------------- arguments
def parser(doc: str) -> argparse.ArgumentParser:
    """A parser whose --help shows the script's docstring as written (its commands, line by line)."""
    return argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)


def ints(text: str) -> list[int]:
    """"512,2048" -> [512, 2048]."""
    return [int(x) for x in text.split(",") if x]


def smoke_or_cuda(script: str, smoke: bool) -> tuple[torch.device, torch.dtype]:
    """(device, dtype) of a GPU benchmark: the CPU in float32 for --smoke, else CUDA in bfloat16."""
    if smoke:
        return torch.device("cpu"), torch.float32
    if not torch.cuda.is_available():
        raise SystemExit(f"{script} needs a CUDA device (or --smoke for the CPU check)")
    return torch.device("cuda"), torch.bfloat16


# ------------------------------------------------------------------------------------------------- models
def random_llama(config, device, dtype):
    """A Llama with random weights (seed 0) built on ``device`` in ``dtype`` (no float32 copy on the way)."""
    from transformers import LlamaForCausalLM  # noqa: PLC0415

    torch.manual_seed(0)
    prev = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            return LlamaForCausalLM(config).eval()
    finally:
        torch.set_default_dtype(prev)
