"""`tm-distill serve`: a student behind transformers' OpenAI-compatible server (chat and text completions)."""

from __future__ import annotations

import click

SERVE_MISSING = ("tm-distill serve needs transformers' serving stack (FastAPI, Uvicorn, openai, transformers >= "
                 "5.25): pip install 'tm-distill[serve]'")


@click.command("serve")
@click.argument("student", type=click.Path(file_okay=False))
@click.option("--host", default="localhost", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(1, 65535), default=8000, show_default=True)
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:1, ...")
@click.option("--dtype", default="auto", show_default=True, help="auto (the checkpoint's), float32, bfloat16, ...")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="info",
              show_default=True)
def serve(student, host, port, device, dtype, log_level):
    """Serve STUDENT at http://HOST:PORT/v1 with transformers' own server, until Ctrl+C.

    The endpoints, requests and responses are `transformers serve`'s (POST /v1/chat/completions, streamed or
    not, /v1/completions, /v1/responses; GET /v1/models, /health), so any OpenAI client works. `transformers
    serve` itself cannot load a student: it looks the model class up in the transformers module, where a class
    shipped beside the weights is not (docs/serving.md).

    \b
    Examples:
      tm-distill serve runs/cpu-demo/final --port 8000
      curl localhost:8000/v1/chat/completions -H 'Content-Type: application/json' \\
        -d '{"model": "runs/cpu-demo/final", "messages": [{"role": "user", "content": "Hi!"}]}'
    """
    from ..checkpoint import student_config_from  # noqa: PLC0415

    student_config_from(student)  # a folder that is not a student: one line, before the server starts
    from transformers.utils.import_utils import is_serve_available  # noqa: PLC0415

    try:
        from ..serving import serve as run_server  # noqa: PLC0415
    except ImportError as err:
        raise click.ClickException(f"{SERVE_MISSING} ({err})") from err
    if not is_serve_available():
        raise click.ClickException(SERVE_MISSING)
    run_server(student, host=host, port=port, device=device, dtype=dtype, log_level=log_level)
