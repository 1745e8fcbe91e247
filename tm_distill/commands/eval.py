"""`tm-distill eval`: the student-vs-teacher report (held-out metrics, retrieval, lm-eval, speed)."""

from __future__ import annotations

import click

from ..runtime import DTYPES
from ..eval.api import CPU_DEFAULTS, EvalOptions

DEFAULTS = EvalOptions()  # the option defaults are the library's (sized for a GPU); CPU_DEFAULTS on a CPU


def _csv(values) -> str:
    return ",".join(str(v) for v in values)


def _ints(ctx, param, value):
    if value is None:
        return None  # not given: the device's default
    if value.strip().lower() in ("", "none"):
        return []
    try:
        out = [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a comma-separated list of integers, e.g. 1024,2048") from None
    if any(v <= 0 for v in out):
        raise click.BadParameter(f"{value!r}: lengths must be positive")
    return out


def _floats(ctx, param, value):
    try:
        return [float(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a comma-separated list of numbers, e.g. 0.1,0.5,0.9") from None


def _names(ctx, param, value):
    if value is None:
        return None
    names = [v.strip() for v in value.split(",") if v.strip()]
    return names or None


def _sized(device: str, **given) -> dict:
    """The retrieval and speed options a user left out, sized for ``device`` (CPU_DEFAULTS on a CPU)."""
    cpu = device.split(":")[0] == "cpu"
    library = {"passkey_lengths": DEFAULTS.retrieval_lengths, "trials": DEFAULTS.trials,
               "speed_lengths": DEFAULTS.speed_lengths}
    small = {"passkey_lengths": CPU_DEFAULTS["retrieval_lengths"], "trials": CPU_DEFAULTS["trials"],
             "speed_lengths": CPU_DEFAULTS["speed_lengths"]}
    return {k: v if v is not None else (small if cpu else library)[k] for k, v in given.items()}


def _check_out(out_dir: str, force: bool) -> None:
    """A report already in ``out_dir`` (e.g. the demo's) is replaced only when asked, before any work."""
    from pathlib import Path  # noqa: PLC0415

    if not force and any((Path(out_dir) / name).exists() for name in ("report.json", "report.md")):
        raise click.ClickException(f"{out_dir} already holds a report: give another --out, or pass --force to "
                                   "replace it")


@click.command("eval")
@click.argument("students", nargs=-1, required=True)
@click.option("--teacher", required=True, help="Teacher: HF folder, .gguf file, hub id, or smollm2-135m.")
@click.option("--data", default="shakespeare", show_default=True,
              help="Text: a corpus name, .txt/.jsonl/.json/.parquet file, folder, glob, or hub dataset.")
@click.option("--text-field", default=DEFAULTS.text_field, show_default=True, help="Text column of JSON/parquet data.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Report folder.")
@click.option("--seq-len", type=click.IntRange(min=2), default=DEFAULTS.seq_len, show_default=True,
              help="Window length.")
@click.option("--windows", type=click.IntRange(min=1), default=DEFAULTS.windows, show_default=True,
              help="Held-out windows.")
@click.option("--heldout-fraction", type=float, default=DEFAULTS.heldout_fraction, show_default=True,
              help="Documents held out (use the distillation's value and seed).")
@click.option("--data-seed", type=int, default=DEFAULTS.data_seed, show_default=True, help="Seed of the held-out document split.")
@click.option("--transpoints", default=None, help="Override every student's TransPoints (e.g. all=128).")
@click.option("--passkey-lengths", callback=_ints, default=None,
              help="Retrieval context lengths (passkey and phonebook); 'none' skips retrieval "
                   f"[default: {_csv(DEFAULTS.retrieval_lengths)} on a GPU, {_csv(CPU_DEFAULTS['retrieval_lengths'])} "
                   "on a CPU].")
@click.option("--depths", callback=_floats, default=_csv(DEFAULTS.depths), show_default=True,
              help="Needle depths in [0,1].")
@click.option("--trials", type=click.IntRange(min=1), default=None,
              help=f"Prompts per length/depth [default: {DEFAULTS.trials} on a GPU, {CPU_DEFAULTS['trials']} on a CPU].")
@click.option("--retrieval-tasks", callback=_names, default=_csv(DEFAULTS.retrieval_tasks), show_default=True)
@click.option("--tasks", callback=_names, default=None, help="lm-eval tasks, e.g. arc_easy,hellaswag (needs lm-eval).")
@click.option("--task-dir", type=click.Path(exists=True, file_okay=False), default=None,
              help="Folder of local lm-eval task YAMLs.")
@click.option("--limit", "lm_eval_limit", type=float, default=None, help="lm-eval: examples per task (or fraction).")
@click.option("--num-fewshot", type=int, default=None, help="lm-eval: few-shot examples.")
@click.option("--speed-lengths", callback=_ints, default=None,
              help=f"Prompt lengths to time [default: {_csv(DEFAULTS.speed_lengths)} on a GPU, "
                   f"{_csv(CPU_DEFAULTS['speed_lengths'])} on a CPU].")
@click.option("--decode-tokens", type=click.IntRange(min=2), default=DEFAULTS.decode_tokens, show_default=True)
@click.option("--no-speed", is_flag=True, help="Skip the speed and memory section.")
@click.option("--no-layer-error", is_flag=True, help="Skip the per-layer hidden-state error.")
@click.option("--no-plots", is_flag=True, help="Write report.json and report.md only (plots need matplotlib: "
                                              "pip install 'tm-distill[plots]').")
@click.option("--seed", type=int, default=DEFAULTS.seed, show_default=True, help="Seed of the retrieval prompts.")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda, cuda:1, ...")
@click.option("--dtype", type=click.Choice(list(DTYPES)), default="float32", show_default=True)
@click.option("--force", is_flag=True, help="Replace the report already in --out.")
def eval_cmd(students, teacher, data, text_field, out_dir, seq_len, windows, heldout_fraction, data_seed,
             transpoints, passkey_lengths, depths, trials, retrieval_tasks, tasks, task_dir, lm_eval_limit,
             num_fewshot, speed_lengths, decode_tokens, no_speed, no_layer_error, no_plots, seed, device, dtype,
             force):
    """Compare STUDENTS (one or more student folders) with the teacher and write a report to --out.

    The report has perplexity, KL to the teacher and top-1 agreement on held-out text, overall and by
    position relative to each student's TransPoints; the per-layer hidden-state error; passkey and
    phonebook retrieval; optional lm-evaluation-harness tasks; and prefill/decode speed and memory.
    Files: report.json, report.md and PNG plots. See docs/eval.md for how to read them. The first line says
    what will run; on a CPU the retrieval and speed defaults are smaller than a GPU's (see --help's defaults).
    A report already in --out is kept unless --force.

    \b
    Examples:
      tm-distill eval runs/cpu-demo/final --teacher smollm2-135m --out runs/cpu-demo/eval-full
      tm-distill eval runs/cpu-demo/seed runs/cpu-demo/final --teacher smollm2-135m --data shakespeare \\
          --seq-len 512 --windows 16 --passkey-lengths 1024,2048 --out runs/compare
      tm-distill eval runs/cpu-demo/final --teacher smollm2-135m --transpoints all=128 --out runs/robust
      tm-distill eval runs/cpu-demo/final --teacher smollm2-135m --tasks arc_easy --limit 100 --out runs/arc
      tm-distill eval runs/s --teacher smollm2-135m --tasks my_task --task-dir tasks/ --no-speed --out r
    """
    from ..eval.api import cost_line, run_eval  # noqa: PLC0415
    from ..eval.lmeval import INSTALL_HINT, lm_eval_available  # noqa: PLC0415
    from ..runtime import parse_dtype  # noqa: PLC0415
    from ..extras import require  # noqa: PLC0415

    if tasks and not lm_eval_available():
        raise click.ClickException(f"--tasks needs lm-evaluation-harness, which is not installed: {INSTALL_HINT}")
    if not no_plots:
        require("matplotlib", "the report's plots (--no-plots skips them)")
    _check_out(out_dir, force)
    sized = _sized(device, passkey_lengths=passkey_lengths, trials=trials, speed_lengths=speed_lengths)
    options = EvalOptions(
        seq_len=seq_len, windows=windows, heldout_fraction=heldout_fraction, data_seed=data_seed,
        text_field=text_field, transpoints=transpoints, layer_error=not no_layer_error,
        retrieval_tasks=retrieval_tasks or [], retrieval_lengths=sized["passkey_lengths"] if retrieval_tasks else [],
        depths=depths, trials=sized["trials"], seed=seed, tasks=tasks, task_dir=task_dir,
        lm_eval_limit=lm_eval_limit, num_fewshot=num_fewshot, speed=not no_speed and bool(sized["speed_lengths"]),
        speed_lengths=sized["speed_lengths"], decode_tokens=decode_tokens,
    )
    click.echo(cost_line(options, len(students), device), err=True)
    report = run_eval(list(students), teacher, data, out_dir, options, device=device, dtype=parse_dtype(dtype),
                      plots=not no_plots)
    for name, m in report["models"].items():
        ppl = "–" if m["perplexity"] is None else f"{m['perplexity']:.3f}"
        click.echo(f"{name}: perplexity {ppl}, KL {m['kl_to_teacher']:.4f}, top-1 {m['top1_agreement']:.3f}")
    click.echo(f"report: {out_dir}/report.md ({', '.join(['report.json', *report['plots']])})")
