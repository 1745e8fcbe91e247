"""`tm-distill distill RECIPE [key=value ...]` and `tm-distill validate RECIPE [key=value ...]`."""

from __future__ import annotations

import click

_OVERRIDES_HELP = """\b
Overrides are key=value with dotted paths; list items by index or stage name;
values are YAML:  seed=1  data.seq_len=128  stages.logits.steps=50  stages.0.optimizer.lr=3e-4
(stage-level `lr` is shorthand for `optimizer.lr`)."""


@click.command(epilog=_OVERRIDES_HELP)
@click.argument("recipe_path", metavar="RECIPE", type=click.Path(dir_okay=False))
@click.argument("overrides", nargs=-1)
def validate(recipe_path: str, overrides: tuple[str, ...]) -> None:
    """Check RECIPE (schema, teacher, sequence lengths, TransPoints, this machine) and print the resolved plan.

    A hub-id teacher that is not cached is not downloaded: only the schema is checked then. A recipe this machine
    cannot run (device: cuda without a GPU) is reported as valid but not runnable here, and exits 1.

    \b
    Example:
      tm-distill validate recipes/smollm2-135m/cpu-demo.yaml stages.logits.steps=50
    """
    from ..recipe import load_recipe, recipe_file  # noqa: PLC0415
    from ..training.resolve import check_data, resolve_plan, teacher_config  # noqa: PLC0415

    with recipe_file(recipe_path):  # a RecipeError says "bad recipe RECIPE: key: ..."
        recipe = load_recipe(recipe_path, overrides)
        plan = resolve_plan(recipe, teacher_config(recipe.teacher))
        data_lines = check_data(recipe)
    for line in plan.lines() + data_lines:
        click.echo(line)
    gaps = _machine_gaps(recipe)
    if gaps:
        raise click.ClickException("recipe is valid, but this machine cannot run it: " + "; ".join(gaps))
    click.echo("recipe is valid")


def _machine_gaps(recipe) -> list[str]:
    """What this machine lacks for ``recipe`` (what distill would refuse after loading everything)."""
    import torch  # noqa: PLC0415

    if recipe.device == "cuda" and not torch.cuda.is_available():
        return [f"device: cuda is asked for and torch {torch.__version__} sees no CUDA device; run it on a machine "
                "with an NVIDIA GPU (pip install 'tm-distill[gpu]' there), or override device=cpu to try it here "
                "(far slower)"]
    return []


@click.command(epilog=_OVERRIDES_HELP)
@click.argument("recipe_path", metavar="RECIPE", type=click.Path(dir_okay=False))
@click.argument("overrides", nargs=-1)
@click.option("--resume", is_flag=True, help="Continue from the newest complete checkpoint in output_dir.")
@click.option("--force", is_flag=True, help="Delete the run already in output_dir (checkpoints, final/, metrics) "
                                            "and start afresh; without it such a folder is refused.")
@click.option("--max-time", metavar="DURATION", default=None,
              help="Stop cleanly after this long (e.g. 8m, 1h30m): checkpoint, and final/ when in the last stage. "
                   "Overrides the recipe's max_time. SIGTERM/Ctrl-C stop the same way.")
def distill(recipe_path: str, overrides: tuple[str, ...], resume: bool, force: bool, max_time: str | None) -> None:
    """Distill a TransMamba student from the teacher, stage by stage, as RECIPE says.

    Writes OUTPUT/final/ (a student that loads with AutoModelForCausalLM after `import tm_distill`), OUTPUT/seed/
    (the calibrated seed it started from, when the recipe calibrates), metrics.jsonl, summary.json and
    recipe.yaml, and prints the held-out KL of the seed and of the distilled student (and, when calibrating,
    of the plain converted seed: what calibration gave and what training gave). Students are saved in the
    teacher's dtype (recipe key save_dtype); checkpoints under OUTPUT/<idx>-<stage>/ stay while --resume needs them. --resume continues the
    same recipe: changed keys are refused, except the safe ones in docs/recipes.md (e.g. a lower lr for the
    stage in progress). An output_dir that holds a run is refused unless --resume or --force, and one run at a
    time holds it. Several GPUs: `accelerate launch -m tm_distill.cli distill RECIPE`.

    \b
    Examples:
      tm-distill distill recipes/smollm2-135m/cpu-demo.yaml
      tm-distill distill recipes/smollm2-135m/cpu-demo.yaml output_dir=runs/demo2 stages.logits.steps=40
      tm-distill distill recipes/smollm2-135m/cpu-demo.yaml --resume
      tm-distill distill recipes/smollm2-135m/cpu-demo.yaml stages.logits.lr=1e-3 --resume
    """
    from ..recipe import load_recipe, parse_duration, recipe_file  # noqa: PLC0415
    from ..training import TrainingStopped, kl_line, run_recipe  # noqa: PLC0415
    from ..training.resolve import resolve_plan, teacher_config  # noqa: PLC0415

    if resume and force:
        raise click.UsageError("--resume continues the run in output_dir and --force deletes it: give one of them")
    with recipe_file(recipe_path):
        recipe = load_recipe(recipe_path, overrides)
    try:
        seconds = parse_duration(max_time)
    except ValueError as err:
        raise click.BadParameter(str(err), param_hint="--max-time") from None
    try:
        with recipe_file(recipe_path):  # a RecipeError says "bad recipe RECIPE: key: ..."
            plan = resolve_plan(recipe, teacher_config(recipe.teacher, allow_download=True))
            for line in plan.lines():
                click.echo(line)
            summary = run_recipe(recipe, resume=resume, force=force, max_time=seconds)
    except TrainingStopped as err:  # not an error: a clean stop, continued by the same command line + --resume
        final = f"; the student so far is in {recipe.output_dir}/final" if err.stage_idx == len(recipe.stages) - 1 else ""
        again = " ".join(["tm-distill distill", recipe_path, *overrides, "--resume"])
        raise click.ClickException(f"{err}{final}. Continue with: {again}") from None
    calibration = summary.get("calibration")
    if calibration:
        m = calibration["means"]
        held = "" if m["heldout_after"] is None else f" (held-out {m['heldout_before']:.3f} -> {m['heldout_after']:.3f})"
        click.echo(f"calibrated seed: mean mixer error {m['error_before']:.3f} -> {m['error_after']:.3f}{held}, "
                   f"{calibration['seconds']:.0f} s; per layer in {recipe.output_dir}/calibration.json")
    click.echo(kl_line(summary))
    if summary.get("seed"):
        click.echo(f"seed student:      {summary['seed']}   (compare: tm-distill eval {summary['seed']} "
                   f"{summary['final']} --teacher {recipe.teacher} ...)")
    click.echo(f"distilled student: {summary['final']}")
