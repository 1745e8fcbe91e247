"""The one small interface every distillation stage implements, and helpers the stages share.

A stage owns *what* is trained and *what* the loss is; the loop (``tm_distill.training.loop``) owns the
optimizer, schedule, precision, checkpoints and the per-batch TransPoints. Per batch the loop does::

    with use_transpoints(student, tps):                      # tm_distill.models
        loss, metrics = stage.loss(input_ids, position_ids)   # (batch, seqlen) each; position_ids may be None
    loss.backward()

Before each step's micro-batches it calls ``stage.begin_step(seed, stage_idx, step)``; it calls
``stage.finalize()`` once at the end of the stage, before the final checkpoint is written, and saves
``stage.export_state_dict()`` (None: the student's own weights) in every checkpoint.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import torch
from transformers import PreTrainedModel

from ..models.mixer import SSM_PARAM_PATTERN
from ..models.modeling import use_transpoints  # re-exported: the loop imports it from here
from ..stage_names import TRAINABLE_SETS

if TYPE_CHECKING:
    from ..models import TransMambaForCausalLM
    from ..recipe import StageConfig

_MIXER_PROJ = ("q_proj", "k_proj", "v_proj", "o_proj")


class Stage:
    """Base class of a distillation stage.

    cfg: the stage's ``StageConfig`` (loss options, trainable set, lora, precision, ...).
    student: the TransMamba student being trained (its ``config.transpoints`` are set per batch by the loop).
    teacher: the frozen teacher (eval mode, requires_grad False); run it under ``torch.no_grad()``.
    """

    name: ClassVar[str] = "base"
    # FSDP (training.distributed): True when ``loss`` runs the student's decoder layers through their forward,
    # so each layer can be its own unit, gathered only while it runs; False gathers the whole student per step
    shard_layers: ClassVar[bool] = False

    def __init__(self, cfg: StageConfig, student: TransMambaForCausalLM, teacher: PreTrainedModel):
        self.cfg = cfg
        self.student = student
        self.teacher = teacher

    def trainable_parameters(self) -> list[tuple[str, torch.nn.Parameter]]:
        """The (name, parameter) pairs the optimizer gets; everything else must have requires_grad=False.

        The default freezes the student except ``select_parameters(student, cfg.trainable)``.
        """
        return freeze_except(self.student, select_parameters(self.student, self.cfg.trainable))

    def loss(self, input_ids: torch.LongTensor, position_ids: torch.LongTensor | None = None,
             ) -> tuple[torch.Tensor, dict[str, float]]:
        """input_ids: (batch, seqlen); position_ids: (batch, seqlen) positions inside packed documents
        (restarting at 0 at each document start) or None. Returns a scalar loss to backprop and float metrics."""
        raise NotImplementedError(f"stage {self.name!r} must implement loss()")

    def begin_step(self, seed: int, stage_idx: int, step: int, rank: int = 0, world: int = 1) -> None:
        """Called before each step's micro-batches (0-based ``step``, also the first step after a resume), so a
        stage that draws randomness in ``loss`` can seed it from where training is. ``rank`` of ``world``
        processes: micro-batch ``m`` of this process is micro-batch ``(step * world + rank) * grad_accum + m``
        of the run, the same one whatever the number of processes. Default: nothing."""

    def finalize(self) -> None:
        """Called once at stage end, before the final save (e.g. to merge LoRA adapters). Default: nothing."""

    def export_state_dict(self) -> dict[str, torch.Tensor] | None:
        """The weights a checkpoint saves instead of the student's own (e.g. with LoRA deltas folded in), or
        None for the student's own. Default: None."""
        return None


def _is_ssm(name: str) -> bool:
    return SSM_PARAM_PATTERN.search(name) is not None


def _is_mixer_proj(name: str) -> bool:
    parts = name.split(".")
    return len(parts) >= 3 and parts[-3] == "mixer" and parts[-2] in _MIXER_PROJ


def select_parameters(student: torch.nn.Module, which: str) -> list[tuple[str, torch.nn.Parameter]]:
    """The student's parameters in a trainable set.

    which: "ssm" (the SSM-only additions: dt_proj, dt_bias, A_log, D and the optional z/norm/conv),
    "mixer" (ssm + each mixer's q/k/v/o projections) or "all" (every parameter). Tied parameters appear once.
    """
    if which not in TRAINABLE_SETS:
        raise ValueError(f"trainable set {which!r} is unknown: choose one of {', '.join(TRAINABLE_SETS)}")
    out = []
    for name, param in student.named_parameters():  # named_parameters de-duplicates tied weights
        if which == "all" or _is_ssm(name) or (which == "mixer" and _is_mixer_proj(name)):
            out.append((name, param))
    if not out:
        raise ValueError(f"trainable set {which!r} selects no parameters of {type(student).__name__}")
    return out


def freeze_except(model: torch.nn.Module, params: list[tuple[str, torch.nn.Parameter]]):
    """Set requires_grad=True on ``params`` and False on every other parameter of ``model``; returns params."""
    keep = {id(p) for _, p in params}
    for p in model.parameters():
        p.requires_grad_(id(p) in keep)
    return params


__all__ = ["Stage", "TRAINABLE_SETS", "freeze_except", "select_parameters", "use_transpoints"]
