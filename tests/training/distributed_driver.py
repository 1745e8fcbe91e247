"""One process of a multi-process distillation run, started by ``accelerate launch`` (or torchrun) in
tests/training/test_distributed.py: ``distributed_driver.py RECIPE.yaml [--resume] [--crash STAGE:STEP]``.

``--crash`` kills every process after the given step (its checkpoint written), as a crash would.
"""

from __future__ import annotations

import argparse
import logging

import tm_distill  # noqa: F401  (registers the Auto classes)
from tm_distill.recipe import load_recipe
from tm_distill.training import run_recipe


class Crash(RuntimeError):
    pass


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("recipe")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--crash", default=None, help="STAGE_IDX:STEP")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    crash_at = tuple(int(x) for x in args.crash.split(":")) if args.crash else None

    def on_step(stage_idx: int, step: int, loss: float) -> None:
        if (stage_idx, step) == crash_at:
            raise Crash(f"crash after stage {stage_idx} step {step}")

    run_recipe(load_recipe(args.recipe), resume=args.resume, on_step=on_step)


if __name__ == "__main__":
    main()
