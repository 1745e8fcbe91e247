"""Is the student worth a checkpoint? Finite weights, and a finite loss with them.

A checkpoint is what ``--resume`` continues from, so one written after a bad update would make every resume
diverge again. Before each save the loop asks ``unsound``: every weight must be finite, and the stage's loss
on the step's last micro-batch, recomputed with the updated weights, must be finite too (weights of 1e30
are finite but overflow the next forward). ``stop_message`` names the newest checkpoint that passed.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..models.modeling import use_transpoints
from .checkpoint import newest_checkpoint


def nonfinite(tensors) -> list[str]:
    """Names of the tensors with a NaN or inf; ``tensors``: (name, tensor) pairs."""
    return [name for name, t in tensors if t.is_floating_point() and not bool(torch.isfinite(t).all())]


@torch.no_grad()
def unsound(par, micro: torch.Tensor | None, transpoints: list[int], autocast, accelerator) -> str | None:
    """Why the student must not be saved now, or None (every process calls it; each checks its own shard).

    par: the stage's placement (``distributed.Replicated`` or ``FullyShardedStage``); micro: (batch, seqlen)
    tokens the loss is recomputed on (None: weights only). The RNG is left as it was, so checking does not
    change what training draws next."""
    problem = None
    bad = nonfinite(par.local_parameters())
    if bad:
        problem = f"{len(bad)} weight tensor(s) are not finite after the update (e.g. {bad[0]})"
    elif micro is not None:
        device = micro.device
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            with use_transpoints(par.stage.student, transpoints), autocast:
                loss, _ = par.loss(micro)
        if not torch.isfinite(loss):
            problem = f"the updated weights give a loss of {float(loss)}"
    flag = torch.tensor([0.0 if problem is None else 1.0], device=accelerator.device)
    if float(accelerator.reduce(flag, reduction="sum")) > 0 and problem is None:
        problem = "another process found non-finite weights or loss"
    return problem


def stop_message(output_dir: str | Path, stage_idx: int, stage_name: str, step: int, problem: str) -> str:
    """The divergence error: what went wrong, nothing was saved from it, and how to resume from where."""
    good = newest_checkpoint(output_dir)
    where = (f"the newest finite checkpoint is {good}" if good is not None else
             "no checkpoint was written before it, so the run restarts from the seeded student")
    return (f"stage {stage_idx} ({stage_name}) step {step}: {problem}; training stopped and nothing was saved from "
            f"this step; {where}. Lower the learning rate and resume, e.g. "
            f"`tm-distill distill RECIPE stages.{stage_idx}.lr=<smaller> --resume` (or use precision fp32)")


__all__ = ["nonfinite", "stop_message", "unsound"]
