"""The `tm-distill` command line: parses and dispatches; the work lives in the library.

Each command lives in ``tm_distill/commands/<name>.py`` and is imported only when it runs, so
``tm-distill --help`` stays fast and importing the CLI needs no GPU.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os

import click

# command name -> "module:attribute" (a click.Command)
COMMANDS = {
    "convert": "tm_distill.commands.convert:convert",
    "generate": "tm_distill.commands.generate:generate",
    "inspect": "tm_distill.commands.inspect:inspect_cmd",
    "distill": "tm_distill.commands.distill:distill",
    "validate": "tm_distill.commands.distill:validate",
    "plan": "tm_distill.commands.plan:plan",
    "eval": "tm_distill.commands.eval:eval_cmd",
    "serve": "tm_distill.commands.serve:serve",
    "fetch-data": "tm_distill.commands.data:fetch_data",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx):
        return sorted(name for name in COMMANDS if self._importable(name))

    @staticmethod
    def _importable(name):
        module = COMMANDS[name].split(":")[0]
        return importlib.util.find_spec(module) is not None

    def get_command(self, ctx, name):
        if name not in COMMANDS or not self._importable(name):
            return None
        module, attr = COMMANDS[name].split(":")
        return getattr(importlib.import_module(module), attr)

    def invoke(self, ctx):
        """Run the command; a ``UserError`` anywhere below becomes its one-line message and exit status 1."""
        from .errors import UserError  # noqa: PLC0415

        try:
            return super().invoke(ctx)
        except UserError as err:
            raise click.ClickException(err.one_line()) from None


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
@click.version_option(package_name="tm-distill")
def cli(verbose: int) -> None:
    """Turn a pretrained Llama-style Transformer into a TransMamba hybrid and distill it.

    \b
    A typical session, on the shipped SmolLM2-135M teacher (what scripts/demo.sh runs):
      tm-distill convert smollm2-135m runs/seeded --transpoints cycle=0,16,32,64,128,attn
      tm-distill generate runs/seeded --chat --prompt "What is the capital of France?"
      tm-distill inspect runs/seeded --context 32768
      tm-distill distill recipes/smollm2-135m/cpu-demo.yaml
      tm-distill eval runs/cpu-demo/seed runs/cpu-demo/final --teacher smollm2-135m --out runs/cpu-demo/eval
      tm-distill generate smollm2-135m runs/cpu-demo/final --chat --prompt "What is the capital of France?"

    Run `tm-distill COMMAND --help` for each command's options and examples.
    """
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")


def main() -> None:
    # mamba-ssm's Triton kernels autotune on first use (most of a fresh machine's first step); let Triton keep
    # the results in its on-disk cache so later runs on the same machine start at once. A user's setting wins.
    os.environ.setdefault("TRITON_CACHE_AUTOTUNING", "1")
    cli(prog_name="tm-distill")


if __name__ == "__main__":
    main()
