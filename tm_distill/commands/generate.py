"""`tm-distill generate`: continue a prompt (or answer it as a chat turn) with a student or a teacher."""

from __future__ import annotations

import math
from pathlib import Path

import click

from .convert import USER_ERRORS


def load_any(model: str, device: str):
    """A student folder through ``load_student``; anything else (teacher folder, .gguf, alias) as a teacher."""
    from ..checkpoint import NotAStudent, load_student  # noqa: PLC0415
    from ..convert.teacher import load_teacher  # noqa: PLC0415

    path = Path(model).expanduser()
    if path.is_dir():
        try:
            return load_student(path, device=device)
        except NotAStudent:
            pass
    teacher = load_teacher(model, device=device)
    return teacher.model, teacher.tokenizer


def _finite(ctx, param, value: float) -> float:
    if not math.isfinite(value):  # FloatRange lets nan through (nan < 0 is false), and inf divides to nan
        raise click.BadParameter(f"{value} is not a finite number: give 0 (greedy) or a temperature such as 0.7")
    return value


@click.command("generate")
@click.argument("model")
@click.option("--prompt", "prompts", required=True, multiple=True,
              help="The prompt text; repeat it to continue several prompts in one left-padded batch.")
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--chat", is_flag=True, help="Wrap the prompt as a user turn in the tokenizer's chat template.")
@click.option("--temperature", type=click.FloatRange(min=0.0), default=0.0, show_default=True, callback=_finite,
              help="0 decodes greedily; > 0 samples.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for sampling.")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda, cuda:1, ...")
def generate(model, prompts, max_new_tokens, chat, temperature, seed, device):
    """Generate text with MODEL and print the continuation.

    MODEL is a student folder (from `tm-distill convert` or `distill`) or, to compare, a teacher source
    (HF folder, .gguf, `smollm2-135m`). Decoding uses the hybrid cache: KV only before each layer's
    TransPoint, SSM state after it; on a GPU every decode step of a student replays a CUDA graph. Several
    --prompt options decode together (left-padded); each continuation is printed after a `--- i` line.

    \b
    Examples:
      tm-distill generate runs/student --chat --prompt "What is the capital of France?"
      tm-distill generate runs/student --prompt "To be, or not to be" --max-new-tokens 40
      tm-distill generate smollm2-135m --chat --prompt "Hi!" --temperature 0.7 --seed 1
      tm-distill generate runs/student --prompt "Once upon a time" --prompt "The capital of France"
    """
    from ..generation import generate_texts  # noqa: PLC0415

    if any(not prompt.strip() for prompt in prompts):
        raise click.BadParameter("the prompt is empty: give the text to continue, e.g. --prompt \"Once upon a time\"",
                                 param_hint="--prompt")
    try:
        lm, tokenizer = load_any(model, device)
        outputs = generate_texts(lm, tokenizer, list(prompts), max_new_tokens, chat=chat, temperature=temperature,
                                 seed=seed)
    except USER_ERRORS as err:
        raise click.ClickException(str(err)) from err
    for i, (text, _) in enumerate(outputs):
        if len(outputs) > 1:
            click.echo(f"--- {i}")
        click.echo(text)
