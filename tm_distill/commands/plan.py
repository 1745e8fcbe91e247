"""`tm-distill plan TEACHER --budget kv=25%`: choose `auto` TransPoints from calibration text, no training."""

from __future__ import annotations

import click

from ..plan import PLAN_SEQ_LEN, PLAN_WINDOWS


def _auto_spec(budget: str, context: int | None, method: str = "sensitivity") -> str:
    key, sep, value = budget.partition("=")
    if not sep or key.strip() != "kv" or not value.strip():
        raise click.BadParameter(f"{budget!r}: write kv=PERCENT, e.g. kv=25%", param_hint="--budget")
    spec = f"auto:kv_budget={value.strip()}"
    return spec + (f",context={context}" if context is not None else "") + (
        f",method={method}" if method != "sensitivity" else "")


def _a_number(ctx, param, value: float) -> float:
    if value != value:  # FloatRange lets nan through (nan < 1 is false); the clock never stays under nan: no training
        raise click.BadParameter("nan is not a number of seconds: give e.g. 45")
    return value


@click.command()
@click.argument("teacher")
@click.option("--budget", required=True, help="Memory budget: kv=25% keeps at most 25% of the teacher's KV cache.")
@click.option("--context", type=int, default=None, help="Tokens at which the budget holds (default: --seq-len).")
@click.option("--calib", default="shakespeare", show_default=True,
              help="Calibration text: a corpus name, or a .txt/.jsonl/.parquet file or folder (planned on its "
                   "training split: 5% of the documents, seed 0, are held out as eval holds them out).")
@click.option("--windows", type=int, default=PLAN_WINDOWS, show_default=True, help="Calibration windows.")
@click.option("--seq-len", type=int, default=PLAN_SEQ_LEN, show_default=True, help="Tokens per calibration window.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the SSM init the layers are measured with.")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda, cuda:1, ...")
@click.option("--method", type=click.Choice(["sensitivity", "importance"]), default="sensitivity", show_default=True,
              help="sensitivity: each seeded layer alone; importance: rank the layers of a briefly distilled all-SSM "
                   "student by the KL and recall drops when a layer keeps attention (or a TransPoint).")
@click.option("--train-seconds", type=click.FloatRange(min=1), default=45.0, show_default=True, callback=_a_number,
              help="importance: time for the brief distillation.")
def plan(teacher: str, budget: str, context: int | None, calib: str, windows: int, seq_len: int, seed: int,
         device: str, method: str, train_seconds: float) -> None:
    """Measure each layer's sensitivity to switching to the SSM and print the schedule that meets BUDGET.

    Sensitivity is the KL(teacher || student) when only that layer switches at P = 0, t/8, t/4, t/2 of the
    calibration window (other layers attention, seeded SSM). The last line is an explicit TransPoint spec to
    paste into a recipe or `tm-distill convert --transpoints`.

    \b
    Examples:
      tm-distill plan smollm2-135m --budget kv=25%
      tm-distill plan smollm2-135m --budget kv=10% --context 8192 --windows 8 --seq-len 256
      tm-distill plan smollm2-135m --budget kv=25% --context 4096 --method importance --device cuda
    """
    from ..convert import TransPointSpecError, load_teacher  # noqa: PLC0415
    from ..data.windows import load_documents  # noqa: PLC0415
    from ..plan import resolve_transpoints  # noqa: PLC0415

    spec = _auto_spec(budget, context, method)
    try:
        resolve_transpoints(spec, None)  # the spec's grammar, before the teacher loads
    except TransPointSpecError as err:
        raise click.BadParameter(str(err), param_hint="--budget/--context") from None
    if windows < 1 or seq_len < 2:
        raise click.BadParameter("need --windows >= 1 and --seq-len >= 2", param_hint="--windows/--seq-len")
    loaded = load_teacher(teacher, device=device)
    _, explanation = resolve_transpoints(  # planned on the calibration text's training split
        spec, loaded.model.config.num_hidden_layers, teacher=loaded, seq_len=seq_len, windows=windows, seed=seed,
        texts=lambda: load_documents(calib, loaded.tokenizer, whole_if_one=True),
        importance={"train_seconds": train_seconds})
    click.echo(explanation)
