"""`tm-distill inspect`: a student's TransPoints, added parameters, and inference memory vs its teacher."""

from __future__ import annotations

import click


def _mode(p: int, attention_only: int) -> str:
    return "attn" if p >= attention_only else "ssm" if p == 0 else "hybrid"


def render(path: str, contexts: tuple[int, ...], batch_size: int = 1) -> str:
    """The inspect report for the student at ``path`` as text (one table)."""
    from ..checkpoint import read_metadata, student_config_from  # noqa: PLC0415
    from ..convert.calibrate import calibration_table  # noqa: PLC0415
    from ..convert.transpoints import describe_transpoints  # noqa: PLC0415
    from ..models.configuration import ATTENTION_ONLY  # noqa: PLC0415
    from ..models.memory import added_parameters, config_dtype, format_bytes, layer_memory, memory_totals  # noqa: PLC0415

    cfg = student_config_from(path)
    meta = read_metadata(path)
    added = added_parameters(cfg)
    tables = {n: layer_memory(cfg, n, batch_size) for n in contexts}
    dtype = str(config_dtype(cfg)).removeprefix("torch.")
    lines = [
        f"student:     {path}",
        f"teacher:     {cfg.teacher} ({cfg.teacher_model_type})",
        f"stage:       {meta.get('stage', '?')}",
        f"transpoints: {cfg.transpoint_spec} -> {describe_transpoints(cfg.transpoints)}",
        f"layers {cfg.num_hidden_layers}, heads {cfg.num_attention_heads} q / {cfg.num_key_value_heads} kv, "
        f"head_dim {cfg.head_dim}, dtype {dtype} (KV) / float32 (SSM state), batch {batch_size}",
        f"added parameters: {sum(added):,} ({sum(added) / 1e6:.3f} M)",
        "",
    ]
    header = ["layer", "P", "mode", "+params"]
    for n in contexts:
        header += [f"student@{n}", f"teacher@{n}"]
    rows = []
    for i, p in enumerate(cfg.transpoints):
        row = [str(i), "attn" if p >= ATTENTION_ONLY else str(p), _mode(p, ATTENTION_ONLY), f"{added[i]:,}"]
        for n in contexts:
            r = tables[n][i]
            row += [format_bytes(r.student_bytes), format_bytes(r.teacher_kv_bytes)]
        rows.append(row)
    total = ["total", "", "", f"{sum(added):,}"]
    for n in contexts:
        t = memory_totals(tables[n])
        total += [format_bytes(t["student"]), format_bytes(t["teacher"])]
    rows.append(total)
    widths = [max(len(r[c]) for r in [header, *rows]) for c in range(len(header))]
    fmt = lambda r: "  ".join(v.rjust(w) for v, w in zip(r, widths))  # noqa: E731
    lines += [fmt(header), fmt(["-" * w for w in widths]), *map(fmt, rows[:-1]), fmt(rows[-1]), ""]
    for n in contexts:
        t = memory_totals(tables[n])
        ratio = t["student"] / t["teacher"] if t["teacher"] else float("nan")
        lines.append(
            f"at {n} tokens: student {format_bytes(t['student'])} (KV {format_bytes(t['kv'])} + state "
            f"{format_bytes(t['state'])}) vs teacher KV {format_bytes(t['teacher'])}: {ratio:.2f}x"
        )
    if cfg.calibration:
        when = "" if meta.get("stage") == "seeded" else " (of the seed, before distillation)"
        lines += ["", f"seeded with calibration{when}:", calibration_table(cfg.calibration)]
    return "\n".join(lines)


@click.command("inspect")
@click.argument("model", type=click.Path())
@click.option("--context", "contexts", type=click.IntRange(min=1), multiple=True, default=(1024, 8192),
              show_default=True, help="Token counts to report memory at (repeat the option for several).")
@click.option("--batch-size", type=click.IntRange(min=1), default=1, show_default=True)
def inspect_cmd(model, contexts, batch_size):
    """Show a student's per-layer TransPoints, added parameters, and KV + SSM-state memory vs its teacher.

    A layer holds KV for its tokens while the context is shorter than its TransPoint; past it, the prefix
    lives in a constant-size SSM state and the layer holds no KV. Reads config.json only (fast).

    \b
    Examples:
      tm-distill inspect runs/student
      tm-distill inspect runs/student --context 4096 --context 32768 --context 131072
    """
    click.echo(render(model, tuple(contexts), batch_size))
