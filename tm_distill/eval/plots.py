"""PNG plots of a report: KL and top-1 agreement by position (TransPoints marked), retrieval accuracy by
length and depth, per-layer hidden-state error. Matplotlib's Agg backend, small files (dpi 100)."""

from __future__ import annotations

from pathlib import Path

from ..atomic import atomic_write_file
from ..extras import require
from ..models.configuration import ATTENTION_ONLY

_DPI = 100


def _pyplot():
    require("matplotlib", "the report's plots (`tm-distill eval --no-plots` skips them)")
    import matplotlib  # noqa: PLC0415  (import late: only the report needs it)

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt  # noqa: PLC0415

    return plt


def _save(fig, path: Path) -> Path:
    """Write the figure atomically (temp file in the same folder + os.replace)."""
    return atomic_write_file(path, lambda tmp: fig.savefig(tmp, dpi=_DPI, format="png", bbox_inches="tight"))


def _smooth(values: list[float], width: int) -> list[float]:
    if width <= 1:
        return values
    out, acc = [], 0.0
    for i, v in enumerate(values):
        acc += v
        if i >= width:
            acc -= values[i - width]
        out.append(acc / min(i + 1, width))
    return out


def plot_by_position(report: dict, path: Path) -> Path | None:
    """KL to the teacher (top) and top-1 agreement (bottom) per position, one line per student, with
    dashed lines at each student's distinct finite TransPoints."""
    students = {n: m for n, m in report["models"].items() if m.get("kind") == "student" and m.get("by_token")}
    if not students:
        return None
    plt = _pyplot()
    fig, (ax_kl, ax_ag) = plt.subplots(2, 1, figsize=(8, 5.5), sharex=True)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    seq_len = report["data"]["seq_len"]
    width = max(1, seq_len // 64)
    for k, (name, m) in enumerate(students.items()):
        color = colors[k % len(colors)]
        kl, ag = m["by_token"]["kl_to_teacher"], m["by_token"]["top1_agreement"]
        ax_kl.plot(range(len(kl)), _smooth(kl, width), color=color, label=name, lw=1.4)
        ax_ag.plot(range(len(ag)), _smooth(ag, width), color=color, label=name, lw=1.4)
        marks = sorted({p for p in (m.get("transpoints") or []) if p < min(ATTENTION_ONLY, seq_len)})
        for i, p in enumerate(marks):
            for ax in (ax_kl, ax_ag):
                ax.axvline(p, color=color, ls="--", lw=0.8, alpha=0.6,
                           label=f"{name} TransPoints" if (i == 0 and ax is ax_kl) else None)
    ax_kl.set_ylabel("KL(teacher || student), nats")
    ax_kl.set_yscale("symlog", linthresh=1e-3)
    ax_kl.set_ylim(bottom=0)
    ax_ag.set_ylabel("top-1 agreement")
    ax_ag.set_ylim(-0.03, 1.03)
    ax_ag.set_xlabel("position in window (token index)")
    ax_ag.set_xlim(0, seq_len - 1)
    smooth_note = f", moving average over {width} positions" if width > 1 else ""
    ax_kl.set_title(f"Student vs teacher by position ({report['data']['windows']} held-out windows{smooth_note})",
                    fontsize=10)
    ax_kl.legend(fontsize=8, loc="best")
    for ax in (ax_kl, ax_ag):
        ax.grid(alpha=0.3)
    out = _save(fig, path)
    plt.close(fig)
    return out


def plot_retrieval(report: dict, path: Path) -> Path | None:
    """One heatmap per (task, model): accuracy by context length (x) and needle depth (y)."""
    retrieval = report.get("retrieval") or {}
    tasks = retrieval.get("tasks") or {}
    if not tasks:
        return None
    lengths, depths = retrieval["lengths"], retrieval["depths"]
    models = list(next(iter(tasks.values())).keys())
    plt = _pyplot()
    fig, axes = plt.subplots(len(tasks), len(models), figsize=(2.4 * len(models) + 1.4, 2.4 * len(tasks) + 0.4),
                             squeeze=False, constrained_layout=True)
    image = None
    for r, (task, per_model) in enumerate(tasks.items()):
        for c, name in enumerate(models):
            ax = axes[r][c]
            grid = [[float("nan")] * len(lengths) for _ in depths]
            for cell in per_model[name]["cells"]:
                grid[depths.index(cell["depth"])][lengths.index(cell["length"])] = cell["accuracy"]
            image = ax.imshow(grid, vmin=0, vmax=1, cmap="RdYlGn", aspect="auto", origin="upper")
            for i in range(len(depths)):
                for j in range(len(lengths)):
                    ax.text(j, i, f"{grid[i][j]:.2f}", ha="center", va="center", fontsize=8)
            ax.set_xticks(range(len(lengths)), [str(n) for n in lengths], fontsize=8)
            ax.set_yticks(range(len(depths)), [f"{d:.0%}" for d in depths], fontsize=8)
            ax.set_title(f"{task}: {name}\n(acc {per_model[name]['accuracy']:.2f})", fontsize=9)
            if r == len(tasks) - 1:
                ax.set_xlabel("context length (tokens)", fontsize=8)
            if c == 0:
                ax.set_ylabel("needle depth", fontsize=8)
    fig.colorbar(image, ax=axes, shrink=0.8, label="accuracy")
    fig.suptitle(f"Retrieval accuracy by context length and depth ({retrieval['trials']} trial(s) per cell)",
                 fontsize=10)
    out = _save(fig, path)
    plt.close(fig)
    return out


def plot_layer_error(report: dict, path: Path) -> Path | None:
    """Relative L2 error of each student's mixer on the teacher's inputs, per layer (log scale)."""
    students = {n: m["layer_error"] for n, m in report["models"].items() if m.get("layer_error")}
    students = {n: e for n, e in students.items() if any(v is not None for v in e)}
    if not students:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 3.2))
    n = len(next(iter(students.values())))
    width = 0.8 / len(students)
    for k, (name, errs) in enumerate(students.items()):
        xs = [i + (k - (len(students) - 1) / 2) * width for i in range(n) if errs[i] is not None]
        ys = [max(v, 1e-8) for v in errs if v is not None]
        ax.bar(xs, ys, width=width, label=name)
    ax.set_yscale("log")
    ax.set_xlabel("layer (layers without SSM positions in the window are left out)")
    ax.set_ylabel("relative L2 error")
    ax.set_title("Mixer output vs teacher attention output on the teacher's inputs (positions >= P)", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    out = _save(fig, path)
    plt.close(fig)
    return out


PLOTS = {"by_position.png": plot_by_position, "retrieval.png": plot_retrieval, "layer_error.png": plot_layer_error}


def write_plots(report: dict, out_dir: Path) -> list[str]:
    """All plots the report has data for; returns the file names written. A plot an earlier report left in
    ``out_dir`` that this one has no data for is removed, so the folder never mixes two reports."""
    out_dir = Path(out_dir)
    written = [name for name, plot in PLOTS.items() if plot(report, out_dir / name) is not None]
    for name in set(PLOTS) - set(written):
        (out_dir / name).unlink(missing_ok=True)
    return written


__all__ = ["PLOTS", "plot_by_position", "plot_layer_error", "plot_retrieval", "write_plots"]
