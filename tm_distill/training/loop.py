"""The explicit training loop of one stage, on accelerate's ``Accelerator``, split into its steps.

``train_stage`` = ``build_optimizer`` → for each step: ``step_transpoints`` → ``train_step`` (``grad_accum``
micro-batches through ``stage.loss`` under autocast, bf16 when the stage asks for it; all-reduce; clip) →
``maybe_checkpoint`` → ``run.stop.reason()``. A step reads its loss and gradient norm back from the GPU in one
transfer after the backward passes are queued, and a stage reads its metrics once per micro-batch: no host
synchronisation per layer.

A non-finite loss or gradient stops with ``TrainingDiverged`` before the optimizer steps, so no bad update
is ever made or saved. A stop requested from outside (SIGTERM/SIGINT, or the run's ``max_time``) finishes
the step, writes a checkpoint and raises ``TrainingStopped`` naming it; ``--resume`` continues from there.

Packed documents: when the stage's windows carry document ids, each micro-batch whose windows hold several
documents passes ``position_ids`` (restarting at 0 per document) to ``stage.loss``, so nothing attends or
scans across a document boundary and TransPoints count inside each document.

A checkpoint is written only from finite weights that give a finite loss (``health.unsound``), so
``--resume`` with a lower lr after a divergence starts from weights that work.

Multi-GPU: ``accelerate launch -m tm_distill.cli distill RECIPE.yaml`` starts one process per GPU. Each
process takes its own rows of every step's batch (the data order depends only on seed and step), and
gradients are averaged across processes before clipping (data parallel, DDP semantics, no model wrapper:
the stages call the student directly). FSDP is not supported yet. Only the main process writes files.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..data.tokens import document_positions, iterate_batches
from ..models.configuration import ATTENTION_ONLY
from ..stages.base import Stage, use_transpoints
from .checkpoint import capture_rng, drop_superseded, prune, restore_rng, save_checkpoint, stage_dir
from .health import stop_message, unsound
from .metrics import MetricsWriter
from .resume_check import apply_peak_lr
from .stopping import StopFlag

log = logging.getLogger(__name__)


class TrainingDiverged(RuntimeError):
    pass


class TrainingStopped(RuntimeError):
    """A run stopped from outside (signal or max_time) after saving ``checkpoint``; resume continues there."""

    def __init__(self, reason: str, stage_idx: int, stage: str, step: int, checkpoint: Path):
        self.reason, self.stage_idx, self.stage, self.step, self.checkpoint = reason, stage_idx, stage, step, checkpoint
        super().__init__(f"stopped ({reason}) in stage {stage_idx} ({stage}) after step {step}; "
                         f"checkpoint {checkpoint}")


@dataclass
class StageRun:
    """What the loop needs to run one stage besides the Stage object.

    train: (n, seq_len) token windows; doc_ids: (n, seq_len) document index of each position inside its
    window (packed documents) or None; transpoints: the recipe's target TransPoints (one per layer).
    on_step: called as on_step(stage_idx, step, loss) after each completed step (tests use it to crash).
    stop: the run's stop flag (signals, max_time), or None. param_dtype: dtype of the frozen weights.
    evaluate: called every ``cfg.eval_every`` steps (e.g. the held-out KL); its numbers join that step's row.
    """

    stage_idx: int
    cfg: object  # recipe.StageConfig
    train: torch.Tensor
    transpoints: list[int]
    seed: int
    output_dir: str
    tokenizer: object = None
    metadata: dict = field(default_factory=dict)
    on_step: Callable[[int, int, float], None] | None = None
    doc_ids: torch.Tensor | None = None
    stop: StopFlag | None = None
    param_dtype: torch.dtype = torch.float32
    evaluate: Callable[[], dict[str, float]] | None = None


@dataclass
class StepResult:
    loss: float
    grad_norm: float
    metrics: dict[str, float]
    last_micro: torch.Tensor | None = None  # re-run by ``health.unsound`` before a checkpoint


def lr_factor(step: int, total: int, warmup: int, kind: str, min_ratio: float) -> float:
    """LR multiplier for 0-based ``step``: linear warmup over ``warmup`` steps, then cosine/linear/constant."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if kind == "constant" or total <= warmup:
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    decay = 0.5 * (1 + math.cos(math.pi * progress)) if kind == "cosine" else 1.0 - progress
    return min_ratio + (1.0 - min_ratio) * decay


def sample_transpoints(target: list[int], jitter: float, seq_len: int, seed: int, stage_idx: int,
                       step: int) -> list[int]:
    """Each layer's P times a factor in [1 - jitter, 1 + jitter], clamped to [0, seq_len]; pure attention
    layers stay pure attention. Depends only on (seed, stage_idx, step), so a resumed run draws the same."""
    g = torch.Generator().manual_seed(hash((seed, stage_idx, step)) % (2**63))
    factors = 1.0 + jitter * (2.0 * torch.rand(len(target), generator=g, dtype=torch.float64) - 1.0)
    out = []
    for p, f in zip(target, factors.tolist()):
        out.append(p if p >= ATTENTION_ONLY else int(min(max(round(p * f), 0), seq_len)))
    return out


def step_transpoints(run: StageRun, step: int, seq_len: int) -> list[int]:
    """The TransPoints of one step: the recipe's, or sampled around them (``transpoint_schedule: sampled``)."""
    if run.cfg.transpoint_schedule == "fixed":
        return run.transpoints
    return sample_transpoints(run.transpoints, run.cfg.jitter, seq_len, run.seed, run.stage_idx, step)


def _module_state(student) -> dict[str, torch.Tensor]:
    """Tensors save_pretrained does not capture as-is (LoRA adapters and their base layers)."""
    return {k: v.detach().clone() for k, v in student.state_dict().items() if ".lora_" in k or ".base_layer." in k}


def _grad_norm(params) -> torch.Tensor:
    grads = [p.grad.detach().float().norm() for p in params if p.grad is not None]
    return torch.stack(grads).norm() if grads else torch.zeros(())


def set_param_dtypes(model: torch.nn.Module, dtype: torch.dtype) -> None:
    """Frozen weights in the run's ``dtype``, trainable ones in fp32 (the optimizer's master copy)."""
    for param in model.parameters():
        want = torch.float32 if param.requires_grad or dtype == torch.float32 else dtype
        if param.dtype != want:
            param.data = param.data.to(want)


def build_optimizer(cfg, params: list[torch.nn.Parameter], total: int, resume_state: dict | None = None):
    """AdamW + warmup/decay schedule for ``params``; restored from ``resume_state``. Returns (opt, sched, start)."""
    optimizer = torch.optim.AdamW(params, lr=cfg.optimizer.lr, betas=tuple(cfg.optimizer.betas),
                                  eps=cfg.optimizer.eps, weight_decay=cfg.optimizer.weight_decay)
    warmup = cfg.warmup(total)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, total, warmup, cfg.schedule.kind, cfg.schedule.min_lr_ratio))
    if resume_state is None:
        return optimizer, scheduler, 0
    optimizer.load_state_dict(resume_state["optimizer"])
    scheduler.load_state_dict(resume_state["scheduler"])
    restore_rng(resume_state["rng"])
    return optimizer, scheduler, int(resume_state["step"])


def _positions(doc_ids: torch.Tensor | None, device) -> torch.Tensor | None:
    """position_ids for a micro-batch of packed windows, or None when every window holds one document."""
    if doc_ids is None or not bool((doc_ids != doc_ids[:, :1]).any()):
        return None
    return document_positions(doc_ids).to(device)


def train_step(stage: Stage, run: StageRun, rows: torch.Tensor, doc_ids: torch.Tensor | None, tps: list[int],
               accelerator, params: list[torch.nn.Parameter], step: int) -> StepResult:
    """Forward/backward of ``grad_accum`` micro-batches, all-reduce, clip; gradients left in ``params``.

    rows: (per_rank, seq_len) token ids on the device; doc_ids: the same rows' document ids (CPU) or None.
    Raises TrainingDiverged (before any update) on a non-finite loss or gradient.
    """
    cfg = run.cfg
    device = rows.device
    autocast = _autocast(run, device)
    loss_sum = torch.zeros((), device=device)
    extra: dict[str, float] = {}
    doc_parts = doc_ids.split(cfg.batch_size) if doc_ids is not None else [None] * math.ceil(len(rows) / cfg.batch_size)
    stage.begin_step(run.seed, run.stage_idx, step)
    for micro, docs in zip(rows.split(cfg.batch_size), doc_parts):
        with use_transpoints(stage.student, tps), autocast:
            positions = _positions(docs, device)
            loss, mets = stage.loss(micro) if positions is None else stage.loss(micro, positions)
        accelerator.backward(loss / cfg.grad_accum)
        loss_sum = loss_sum + loss.detach().float() / cfg.grad_accum
        for k, v in mets.items():
            extra[k] = extra.get(k, 0.0) + v / cfg.grad_accum
    if accelerator.num_processes > 1:
        for p in params:
            if p.grad is not None:
                p.grad.copy_(accelerator.reduce(p.grad, reduction="mean"))
    if cfg.max_grad_norm is not None:
        grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
    else:
        grad_norm = _grad_norm(params)
    loss_value, norm_value = torch.stack([loss_sum, grad_norm.float().to(device)]).tolist()
    for what, value in (("loss", loss_value), ("gradient norm", norm_value)):
        if not math.isfinite(value):
            raise TrainingDiverged(stop_message(run.output_dir, run.stage_idx, cfg.name, step + 1,
                                                f"{what} is {value}"))
    return StepResult(loss_value, norm_value, extra, micro)


def _training_state(run: StageRun, student, optimizer, scheduler, done: int) -> dict:
    return {"stage_idx": run.stage_idx, "stage": run.cfg.name, "step": done, "data_position": done,
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": capture_rng(),
            "module_state": _module_state(student)}


def _autocast(run: StageRun, device: torch.device):
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=run.cfg.precision == "bf16")


def check_sound(stage: Stage, run: StageRun, accelerator, result: StepResult, tps: list[int], step: int) -> None:
    """Raise TrainingDiverged when the updated student must not be saved (``health.unsound``)."""
    device = accelerator.device
    if problem := unsound(stage, result.last_micro, tps, _autocast(run, device), accelerator):
        raise TrainingDiverged(stop_message(run.output_dir, run.stage_idx, run.cfg.name, step, problem))


def maybe_checkpoint(stage: Stage, run: StageRun, accelerator, optimizer, scheduler, done: int, total: int,
                     row: dict, result: StepResult, tps: list[int], force: bool = False) -> Path | None:
    """Save ``step-<done>`` at the stage's cadence (or when ``force``) from sound weights only; returns its path."""
    cfg = run.cfg
    if not force and not (cfg.checkpoint_every and done % cfg.checkpoint_every == 0 and done < total):
        return None
    check_sound(stage, run, accelerator, result, tps, done)
    folder = stage_dir(run.output_dir, run.stage_idx, cfg.name)
    dest = folder / f"step-{done}"
    if accelerator.is_main_process:
        _save(stage, dest, run, _training_state(run, stage.student, optimizer, scheduler, done), row)
        prune(folder, cfg.keep_last)
        drop_superseded(run.output_dir, run.stage_idx)
    accelerator.wait_for_everyone()
    return dest


def train_stage(stage: Stage, run: StageRun, accelerator, metrics: MetricsWriter,
                resume_state: dict | None = None) -> dict:
    """Train ``stage`` for its budget, save OUTPUT/<idx>-<stage>/final/, return the last step's metrics.

    resume_state: the training_state.pt of a mid-stage checkpoint of this stage (continues exactly).
    Raises TrainingStopped after a checkpoint when ``run.stop`` asks for a stop.
    """
    cfg, student = run.cfg, stage.student
    seq_len = int(run.train.shape[1])
    total = cfg.total_steps(seq_len)
    params = [p for _, p in stage.trainable_parameters()]
    set_param_dtypes(student, run.param_dtype)
    if resume_state is not None and resume_state.get("module_state"):
        student.load_state_dict(resume_state["module_state"], strict=False)
    optimizer, scheduler, start = build_optimizer(cfg, params, total, resume_state)
    if resume_state is not None:
        apply_peak_lr(optimizer, scheduler, cfg.optimizer.lr)  # a resume may lower it (after a divergence)
        log.info("stage %d (%s): resuming at step %d of %d", run.stage_idx, cfg.name, start, total)
    student.train()
    world, rank = accelerator.num_processes, accelerator.process_index
    per_rank = cfg.batch_size * cfg.grad_accum
    order_seed = run.seed + 1000 * run.stage_idx
    batches = iterate_batches(run.train, per_rank * world, seed=order_seed, start_step=start, num_steps=total)
    doc_batches = (iterate_batches(run.doc_ids, per_rank * world, seed=order_seed, start_step=start, num_steps=total)
                   if run.doc_ids is not None else None)
    bar = tqdm(total=total, initial=start, desc=f"{run.stage_idx}-{cfg.name}", unit="step",
               disable=not accelerator.is_main_process, dynamic_ncols=True)
    row: dict = {}
    t_start = time.perf_counter()
    for step, rows in batches:
        docs = next(doc_batches)[1] if doc_batches is not None else None
        mine = slice(rank * per_rank, (rank + 1) * per_rank)
        tps = step_transpoints(run, step, seq_len)
        optimizer.zero_grad(set_to_none=True)
        result = train_step(stage, run, rows[mine].to(accelerator.device), None if docs is None else docs[mine],
                            tps, accelerator, params, step)
        lr = optimizer.param_groups[0]["lr"]
        optimizer.step()
        scheduler.step()
        done = step + 1
        elapsed = time.perf_counter() - t_start
        tok_s = (done - start) * per_rank * world * seq_len / max(elapsed, 1e-9)
        row = {"stage": cfg.name, "stage_idx": run.stage_idx, "step": done, "loss": result.loss, "lr": lr,
               "grad_norm": result.grad_norm, "tokens_per_s": tok_s, "stage_tokens": done * per_rank * world * seq_len,
               "min_transpoint": min(tps), **result.metrics}
        evaluated = run.evaluate is not None and cfg.eval_every and (done % cfg.eval_every == 0 or done == total)
        if evaluated:
            row.update(run.evaluate())
            student.train()
        if evaluated or done % cfg.log_every == 0 or done == total:
            metrics.write(row, global_step=done)
        bar.update(1)
        bar.set_postfix(loss=f"{result.loss:.4g}", tok_s=f"{tok_s:.0f}")
        maybe_checkpoint(stage, run, accelerator, optimizer, scheduler, done, total, row, result, tps)
        if run.on_step is not None:
            run.on_step(run.stage_idx, done, result.loss)
        reason = run.stop.reason() if run.stop is not None else None
        if reason is not None and done < total:
            bar.close()
            path = maybe_checkpoint(stage, run, accelerator, optimizer, scheduler, done, total, row, result, tps,
                                    force=True)
            raise TrainingStopped(reason, run.stage_idx, cfg.name, done, path)
    bar.close()
    if row:
        check_sound(stage, run, accelerator, result, tps, total)
    stage.finalize()
    student.eval()
    if accelerator.is_main_process:
        final_state = {"stage_idx": run.stage_idx, "stage": cfg.name, "step": total, "done": True}
        _save(stage, stage_dir(run.output_dir, run.stage_idx, cfg.name) / "final", run, final_state, row)
        drop_superseded(run.output_dir, run.stage_idx)
    accelerator.wait_for_everyone()
    return row


def _save(stage: Stage, dest, run: StageRun, state: dict, row: dict) -> None:
    export = getattr(stage, "export_state_dict", None)
    meta = {**run.metadata, "stage": run.cfg.name, "stage_idx": run.stage_idx, "step": state["step"],
            "metrics": row}
    save_checkpoint(dest, stage.student, run.tokenizer, state, meta, state_dict=export() if export else None)


__all__ = ["StageRun", "StepResult", "TrainingDiverged", "TrainingStopped", "build_optimizer", "lr_factor",
           "maybe_checkpoint", "sample_transpoints", "set_param_dtypes", "step_transpoints", "train_stage", "train_step"]
