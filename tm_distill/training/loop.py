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
process takes its own rows of every step's batch (the data order depends only on seed and step). With
``distributed.strategy: ddp`` every process holds the student and gradients are averaged before clipping;
with ``fsdp`` the student's weights, gradients and optimizer state are sharded (``training.distributed``).
The logged loss is the global batch's. Only the main process writes files.
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

from ..checkpoint import save_checkpoint
from ..data.tokens import document_positions, iterate_batches
from ..errors import UserError
from ..models.configuration import ATTENTION_ONLY
from ..models.modeling import use_transpoints
from ..models.tensors import attribute_state
from ..recipe import DistributedConfig, RecipeError
from ..stages.base import Stage
from .checkpoint import capture_rng, drop_superseded, prune, restore_rng, stage_dir
from .distributed import Replicated, parallel_for, total_norm
from .health import stop_message, unsound
from .metrics import MetricsWriter
from .resume_check import apply_peak_lr
from .stopping import StopFlag

log = logging.getLogger(__name__)


class TrainingDiverged(UserError, RuntimeError):
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
    save_dtype: dtype of the stage's final/ checkpoint on disk (None: the training dtypes, exact to resume from).
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
    save_dtype: torch.dtype | None = None  # of the stage's final/ on disk (the run's last stage); None: as trained


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
    return {k: v.clone() for k, v in attribute_state(student).items() if ".lora_" in k or ".base_layer." in k}


def set_param_dtypes(model: torch.nn.Module, dtype: torch.dtype) -> None:
    """Frozen weights in the run's ``dtype``, trainable ones in fp32 (the optimizer's master copy)."""
    for param in model.parameters():
        want = torch.float32 if param.requires_grad or dtype == torch.float32 else dtype
        if param.dtype != want:
            param.data = param.data.to(want)


def build_optimizer(cfg, params: list[torch.nn.Parameter], total: int):
    """AdamW + warmup/decay schedule for ``params``. Returns (optimizer, scheduler, 0)."""
    optimizer = torch.optim.AdamW(params, lr=cfg.optimizer.lr, betas=tuple(cfg.optimizer.betas),
                                  eps=cfg.optimizer.eps, weight_decay=cfg.optimizer.weight_decay)
    warmup = cfg.warmup(total)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, total, warmup, cfg.schedule.kind, cfg.schedule.min_lr_ratio))
    return optimizer, scheduler, 0


def _positions(doc_ids: torch.Tensor | None, device) -> torch.Tensor | None:
    """position_ids for a micro-batch of packed windows, or None when every window holds one document."""
    if doc_ids is None or not bool((doc_ids != doc_ids[:, :1]).any()):
        return None
    return document_positions(doc_ids).to(device)


def train_step(par: Replicated, run: StageRun, rows: torch.Tensor, doc_ids: torch.Tensor | None, tps: list[int],
               accelerator, params: list[torch.nn.Parameter], step: int) -> StepResult:
    """Forward/backward of ``grad_accum`` micro-batches, gradient sync across processes, clip.

    par: where the student lives (``distributed.Replicated`` or ``FullyShardedStage``); rows: (per_rank,
    seq_len) token ids on the device; doc_ids: the same rows' document ids (CPU) or None. The loss and metrics
    returned are the mean over every process's rows. Raises TrainingDiverged (before any update) on a
    non-finite loss or gradient.
    """
    cfg = run.cfg
    device = rows.device
    autocast = _autocast(run, device)
    loss_sum = torch.zeros((), device=device)
    extra: dict[str, float] = {}
    doc_parts = doc_ids.split(cfg.batch_size) if doc_ids is not None else [None] * math.ceil(len(rows) / cfg.batch_size)
    par.stage.begin_step(run.seed, run.stage_idx, step, accelerator.process_index, accelerator.num_processes)
    for micro, docs in zip(rows.split(cfg.batch_size), doc_parts):
        with use_transpoints(par.stage.student, tps), autocast:
            loss, mets = par.loss(micro, _positions(docs, device))
        accelerator.backward(loss / cfg.grad_accum)
        loss_sum = loss_sum + loss.detach().float() / cfg.grad_accum
        for k, v in mets.items():
            extra[k] = extra.get(k, 0.0) + v / cfg.grad_accum
    par.sync_gradients(params)
    grad_norm = total_norm(params, cfg.max_grad_norm).float().to(device)
    if accelerator.num_processes > 1:  # the logged numbers are the global batch's, as with one process
        loss_sum = accelerator.reduce(loss_sum, reduction="mean")
        if extra:
            means = accelerator.reduce(torch.tensor(list(extra.values()), device=device), reduction="mean")
            extra = dict(zip(extra, means.tolist()))
    loss_value, norm_value = torch.stack([loss_sum, grad_norm]).tolist()
    for what, value in (("loss", loss_value), ("gradient norm", norm_value)):
        if not math.isfinite(value):
            raise TrainingDiverged(stop_message(run.output_dir, run.stage_idx, cfg.name, step + 1,
                                                f"{what} is {value}"))
    return StepResult(loss_value, norm_value, extra, micro)


def _training_state(run: StageRun, par: Replicated, optimizer_state: dict, scheduler, done: int) -> dict:
    """What ``--resume`` needs; under FSDP, call it with the weights gathered (for the LoRA adapters)."""
    return {"stage_idx": run.stage_idx, "stage": run.cfg.name, "step": done, "data_position": done,
            "optimizer": optimizer_state, "optimizer_keys": par.optimizer_keys,
            "scheduler": scheduler.state_dict(), "rng": capture_rng(), "module_state": _module_state(par.stage.student)}


def _autocast(run: StageRun, device: torch.device):
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=run.cfg.precision == "bf16")


def check_sound(par: Replicated, run: StageRun, accelerator, result: StepResult, tps: list[int], step: int) -> None:
    """Raise TrainingDiverged when the updated student must not be saved (``health.unsound``)."""
    device = accelerator.device
    if problem := unsound(par, result.last_micro, tps, _autocast(run, device), accelerator):
        raise TrainingDiverged(stop_message(run.output_dir, run.stage_idx, run.cfg.name, step, problem))


def maybe_checkpoint(par: Replicated, run: StageRun, accelerator, optimizer, scheduler, done: int, total: int,
                     row: dict, result: StepResult, tps: list[int], force: bool = False) -> Path | None:
    """Save ``step-<done>`` at the stage's cadence (or when ``force``) from sound weights only; returns its path.

    Every process takes part (the checks and, under FSDP, the gathering); the main process writes.
    """
    cfg = run.cfg
    if not force and not (cfg.checkpoint_every and done % cfg.checkpoint_every == 0 and done < total):
        return None
    check_sound(par, run, accelerator, result, tps, done)
    folder = stage_dir(run.output_dir, run.stage_idx, cfg.name)
    dest = folder / f"step-{done}"
    optimizer_state = par.optimizer_state(optimizer)  # a collective under FSDP, on the sharded parameters
    with par.gathered():
        state = _training_state(run, par, optimizer_state, scheduler, done)
        if accelerator.is_main_process:
            _save(par, dest, run, state, row)
            prune(folder, cfg.keep_last)
            drop_superseded(run.output_dir, run.stage_idx)
    accelerator.wait_for_everyone()
    return dest


@dataclass
class _Trainer:
    """One stage's training state between steps (what ``prepare_stage`` builds)."""

    par: Replicated
    params: list[torch.nn.Parameter]
    optimizer: torch.optim.Optimizer
    scheduler: object
    start: int
    total: int


def prepare_stage(stage: Stage, run: StageRun, accelerator, resume_state: dict | None, distributed) -> _Trainer:
    """Trainable set and dtypes, LoRA state of a resumed run, placement over the processes, optimizer."""
    cfg, student = run.cfg, stage.student
    total = cfg.total_steps(int(run.train.shape[1]), accelerator.num_processes)
    stage.trainable_parameters()  # sets requires_grad, which set_param_dtypes and sharding read
    set_param_dtypes(student, run.param_dtype)
    if resume_state is not None and resume_state.get("module_state"):
        student.load_state_dict(resume_state["module_state"], strict=False)
    par = parallel_for(stage, accelerator, distributed or DistributedConfig())
    params = par.parameters()
    optimizer, scheduler, start = build_optimizer(cfg, params, total)
    if resume_state is not None:
        if resume_state.get("optimizer_keys", "ids") != par.optimizer_keys:
            raise RecipeError("distributed.strategy", f"the checkpoint in {run.output_dir} holds optimizer state of "
                                                      "another strategy: resume with the strategy that wrote it")
        par.load_optimizer_state(optimizer, resume_state["optimizer"])
        scheduler.load_state_dict(resume_state["scheduler"])
        restore_rng(resume_state["rng"])
        start = int(resume_state["step"])
        apply_peak_lr(optimizer, scheduler, cfg.optimizer.lr)  # a resume may lower it (after a divergence)
        log.info("stage %d (%s): resuming at step %d of %d", run.stage_idx, cfg.name, start, total)
    student.train()
    return _Trainer(par, params, optimizer, scheduler, start, total)


def _step_row(run: StageRun, result: StepResult, lr: float, done: int, start: int, tokens_per_step: int,
              elapsed: float, tps: list[int]) -> dict:
    return {"stage": run.cfg.name, "stage_idx": run.stage_idx, "step": done, "loss": result.loss, "lr": lr,
            "grad_norm": result.grad_norm, "tokens_per_s": (done - start) * tokens_per_step / max(elapsed, 1e-9),
            "stage_tokens": done * tokens_per_step, "min_transpoint": min(tps), **result.metrics}


def _batches(run: StageRun, per_step: int, start: int, total: int):
    """(step, rows, doc_ids or None) for steps start..total-1; the order depends only on seed and stage."""
    order_seed = run.seed + 1000 * run.stage_idx
    batches = iterate_batches(run.train, per_step, seed=order_seed, start_step=start, num_steps=total)
    docs = (iterate_batches(run.doc_ids, per_step, seed=order_seed, start_step=start, num_steps=total)
            if run.doc_ids is not None else None)
    for step, rows in batches:
        yield step, rows, (next(docs)[1] if docs is not None else None)


def train_stage(stage: Stage, run: StageRun, accelerator, metrics: MetricsWriter,
                resume_state: dict | None = None, distributed=None) -> dict:
    """Train ``stage`` for its budget, save OUTPUT/<idx>-<stage>/final/, return the last step's metrics.

    resume_state: the training_state.pt of a mid-stage checkpoint of this stage (continues exactly).
    distributed: the recipe's ``DistributedConfig`` (None: ddp). Afterwards ``stage.student`` is the trained,
    plain (unsharded) student. Raises TrainingStopped after a checkpoint when ``run.stop`` asks for a stop.
    """
    cfg = run.cfg
    seq_len = int(run.train.shape[1])
    tr = prepare_stage(stage, run, accelerator, resume_state, distributed)
    world, rank = accelerator.num_processes, accelerator.process_index
    per_rank = cfg.batch_size * cfg.grad_accum
    bar = tqdm(total=tr.total, initial=tr.start, desc=f"{run.stage_idx}-{cfg.name}", unit="step",
               disable=not accelerator.is_main_process, dynamic_ncols=True)
    row: dict = {}
    t_start = time.perf_counter()
    for step, rows, docs in _batches(run, per_rank * world, tr.start, tr.total):
        mine = slice(rank * per_rank, (rank + 1) * per_rank)
        tps = step_transpoints(run, step, seq_len)
        tr.optimizer.zero_grad(set_to_none=True)
        result = train_step(tr.par, run, rows[mine].to(accelerator.device), None if docs is None else docs[mine],
                            tps, accelerator, tr.params, step)
        lr = tr.optimizer.param_groups[0]["lr"]
        tr.optimizer.step()
        tr.scheduler.step()
        done = step + 1
        row = _step_row(run, result, lr, done, tr.start, per_rank * world * seq_len, time.perf_counter() - t_start, tps)
        _log_step(tr, run, metrics, row, done)
        bar.update(1)
        bar.set_postfix(loss=f"{result.loss:.4g}", tok_s=f"{row['tokens_per_s']:.0f}")
        maybe_checkpoint(tr.par, run, accelerator, tr.optimizer, tr.scheduler, done, tr.total, row, result, tps)
        if run.on_step is not None:
            run.on_step(run.stage_idx, done, result.loss)
        reason = run.stop.reason() if run.stop is not None else None
        if reason is not None and done < tr.total:
            bar.close()
            path = maybe_checkpoint(tr.par, run, accelerator, tr.optimizer, tr.scheduler, done, tr.total, row, result,
                                    tps, force=True)
            raise TrainingStopped(reason, run.stage_idx, cfg.name, done, path)
    bar.close()
    if row:
        check_sound(tr.par, run, accelerator, result, tps, tr.total)
    return _finish_stage(tr.par, run, accelerator, row, tr.total)


def _log_step(tr: _Trainer, run: StageRun, metrics: MetricsWriter, row: dict, done: int) -> None:
    """Write the step's metrics row at the stage's cadence, with the held-out numbers every ``eval_every``."""
    cfg = run.cfg
    evaluated = run.evaluate is not None and cfg.eval_every and (done % cfg.eval_every == 0 or done == tr.total)
    if evaluated:
        with tr.par.gathered():
            row.update(run.evaluate())
        tr.par.stage.student.train()
    if evaluated or done % cfg.log_every == 0 or done == tr.total:
        metrics.write(row, global_step=done)


def _finish_stage(par: Replicated, run: StageRun, accelerator, row: dict, total: int) -> dict:
    """Finalize (merge LoRA; under FSDP, rebuild the plain student) and save OUTPUT/<idx>-<stage>/final."""
    par.finish()
    stage = par.stage
    stage.student.eval()
    if accelerator.is_main_process:
        final_state = {"stage_idx": run.stage_idx, "stage": run.cfg.name, "step": total, "done": True}
        _save(par, stage_dir(run.output_dir, run.stage_idx, run.cfg.name) / "final", run, final_state, row,
              run.save_dtype)
        drop_superseded(run.output_dir, run.stage_idx)
    accelerator.wait_for_everyone()
    return row


def _save(par: Replicated, dest, run: StageRun, state: dict, row: dict, dtype: torch.dtype | None = None) -> None:
    meta = {**run.metadata, "stage": run.cfg.name, "stage_idx": run.stage_idx, "step": state["step"],
            "metrics": row}
    save_checkpoint(dest, par.stage.student, run.tokenizer, state, meta, state_dict=par.export_state(), dtype=dtype)


__all__ = ["StageRun", "StepResult", "TrainingDiverged", "TrainingStopped", "build_optimizer", "lr_factor",
           "maybe_checkpoint", "prepare_stage", "sample_transpoints", "set_param_dtypes", "step_transpoints",
           "train_stage", "train_step"]
