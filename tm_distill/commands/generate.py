"""`tm-distill generate`: continue a prompt (or answer it as a chat turn) with a student or a teacher."""

from __future__ import annotations

import math
from pathlib import Path

import click


def load_any(model: str, device: str):
    """A student folder through ``load_student``; anything else (teacher folder, .gguf, alias) as a teacher.

    On a CPU a student computes in float32, as the teacher does (a bfloat16 checkpoint is upcast: CPUs have few
    bfloat16 kernels, and a batch then decodes exactly as each prompt alone); elsewhere in its saved dtype.
    """
    from ..checkpoint import NotAStudent, load_student  # noqa: PLC0415
    from ..convert.teacher import load_teacher  # noqa: PLC0415

    path = Path(model).expanduser()
    if path.is_dir():
        try:
            return load_student(path, device=device, dtype="float32" if device.split(":")[0] == "cpu" else None)
        except NotAStudent:
            pass
    teacher = load_teacher(model, device=device)
    return teacher.model, teacher.tokenizer


def _finite(ctx, param, value: float) -> float:
    if not math.isfinite(value):  # FloatRange lets nan through (nan < 0 is false), and inf divides to nan
        raise click.BadParameter(f"{value} is not a finite number: give 0 (greedy) or a temperature such as 0.7")
    return value


def _first_stop(model, tokenizer, ids) -> str | None:
    """The stop token a continuation began with (the model ended its turn at once), else None."""
    stops = model.generation_config.eos_token_id if model.generation_config is not None else None
    stops = set(stops if isinstance(stops, list) else [stops]) | {tokenizer.eos_token_id}
    if ids.numel() and int(ids[0]) in stops - {None}:
        return tokenizer.convert_ids_to_tokens(int(ids[0]))
    return None


def _answer(text: str, stop: str | None) -> str:
    return text if stop is None else f"(stopped at once: its first token was {stop}, the end of its turn)"


def _print_one(outputs, lm, tokenizer) -> None:
    for i, (text, ids) in enumerate(outputs):
        if len(outputs) > 1:
            click.echo(f"--- {i}")
        click.echo(text)
        stop = _first_stop(lm, tokenizer, ids)
        if stop is not None:
            click.echo(f"[the model stopped at once: its first token was {stop}, the end of its turn]", err=True)


def _print_side_by_side(prompts, models, answers) -> None:
    """Per prompt, each model's answer on its own line(s), names aligned."""
    width = max(len(m) for m in models)
    for p, prompt in enumerate(prompts):
        click.echo(f"=== {prompt}")
        for m in models:
            lines = answers[m][p].strip().splitlines() or [""]
            click.echo(f"{m:<{width}} | {lines[0]}")
            for line in lines[1:]:
                click.echo(f"{'':<{width}} | {line}")
        click.echo("")


@click.command("generate")
@click.argument("models", metavar="MODEL...", nargs=-1, required=True)
@click.option("--prompt", "prompts", required=True, multiple=True,
              help="The prompt text; repeat it to continue several prompts in one left-padded batch.")
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--chat", is_flag=True, help="Wrap the prompt as a user turn in the tokenizer's chat template.")
@click.option("--temperature", type=click.FloatRange(min=0.0), default=0.0, show_default=True, callback=_finite,
              help="0 decodes greedily; > 0 samples.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for sampling.")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda, cuda:1, ...")
def generate(models, prompts, max_new_tokens, chat, temperature, seed, device):
    """Generate text with MODEL and print the continuation; with several MODELs, their answers side by side.

    MODEL is a student folder (from `tm-distill convert` or `distill`) or, to compare, a teacher source
    (HF folder, .gguf, `smollm2-135m`). Decoding uses the hybrid cache: KV only before each layer's
    TransPoint, SSM state after it; on a GPU every decode step of a student replays a CUDA graph. Several
    --prompt options decode together (left-padded); each continuation is printed after a `--- i` line. A model
    that ends its turn at once (its first token is an end-of-turn token) prints nothing and says so on stderr.
    Several MODELs answer the same prompts, printed per prompt, one line per model.

    \b
    Examples:
      tm-distill generate runs/student --chat --prompt "What is the capital of France?"
      tm-distill generate runs/student --prompt "To be, or not to be" --max-new-tokens 40
      tm-distill generate smollm2-135m --chat --prompt "Hi!" --temperature 0.7 --seed 1
      tm-distill generate runs/student --prompt "Once upon a time" --prompt "The capital of France"
      tm-distill generate smollm2-135m runs/cpu-demo/seed runs/cpu-demo/final --chat --prompt "Hi!"
    """
    from ..errors import UserError  # noqa: PLC0415
    from ..generation import generate_texts  # noqa: PLC0415

    if any(not prompt.strip() for prompt in prompts):
        raise click.BadParameter("the prompt is empty: give the text to continue, e.g. --prompt \"Once upon a time\"",
                                 param_hint="--prompt")
    answers = {}
    for model in models:
        try:
            lm, tokenizer = load_any(model, device)
            outputs = generate_texts(lm, tokenizer, list(prompts), max_new_tokens, chat=chat,
                                     temperature=temperature, seed=seed)
        except UserError as err:
            if len(models) == 1:
                raise
            raise UserError(f"{model}: {err}") from None  # several models: say which one
        if len(models) == 1:
            return _print_one(outputs, lm, tokenizer)
        answers[model] = [_answer(text, _first_stop(lm, tokenizer, ids)) for text, ids in outputs]
        del lm  # one model in memory at a time
    _print_side_by_side(prompts, models, answers)
