"""The explicit training loop of one stage, on accelerate's ``Accelerator``.

Per optimizer step: choose the batch's TransPoints (fixed, or each layer's P times a seeded random factor
in [1 - jitter, 1 + jitter]), run ``grad_accum`` micro-batches through ``stage.loss`` under autocast
(bf16 when the stage asks for it), stop with ``TrainingDiverged`` on a NaN/inf loss or gradient (nothing is
saved, so the last good checkpoint stays the newest), clip, AdamW step, warmup + cosine/linear schedule,
log to metrics.jsonl and the tqdm bar (loss, tokens/s, ETA), checkpoint at the stage's cadence. A checkpoint
is written only from finite weights that give a finite loss (``health.unsound``), so ``--resume`` with a
lower lr after a divergence starts from weights that work.

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

import torch
from tqdm.auto import tqdm

from ..data.tokens import iterate_batches
from ..models.configuration import ATTENTION_ONLY
from ..stages.base import Stage, use_transpoints
from .checkpoint import capture_rng, drop_superseded, prune, restore_rng, save_checkpoint, stage_dir
from .health import stop_message, unsound
from .metrics import MetricsWriter
from .resume_check import apply_peak_lr

log = logging.getLogger(__name__)


class TrainingDiverged(RuntimeError):
    pass


@dataclass
class StageRun:
    """What the loop needs to run one stage besides the Stage object.

    train: (n, seq_len) token windows; transpoints: the recipe's target TransPoints (one per layer).
    on_step: called as on_step(stage_idx, step, loss) after each completed step (tests use it to crash).
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


def _module_state(student) -> dict[str, torch.Tensor]:
    """Tensors save_pretrained does not capture as-is (LoRA adapters and their base layers)."""
    return {k: v.detach().clone() for k, v in student.state_dict().items() if ".lora_" in k or ".base_layer." in k}


def _grad_norm(params) -> torch.Tensor:
    grads = [p.grad.detach().float().norm() for p in params if p.grad is not None]
    return torch.stack(grads).norm() if grads else torch.zeros(())


def train_stage(stage: Stage, run: StageRun, accelerator, metrics: MetricsWriter,
                resume_state: dict | None = None) -> dict:
    """Train ``stage`` for its budget, save OUTPUT/<idx>-<stage>/final/, return the last step's metrics.

    resume_state: the training_state.pt of a mid-stage checkpoint of this stage (continues exactly).
    """
    cfg, student = run.cfg, stage.student
    seq_len = int(run.train.shape[1])
    total = cfg.total_steps(seq_len)
    folder = stage_dir(run.output_dir, run.stage_idx, cfg.name)
    named = stage.trainable_parameters()
    params = [p for _, p in named]
    optimizer = torch.optim.AdamW(params, lr=cfg.optimizer.lr, betas=tuple(cfg.optimizer.betas),
                                  eps=cfg.optimizer.eps, weight_decay=cfg.optimizer.weight_decay)
    warmup = cfg.warmup(total)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, total, warmup, cfg.schedule.kind, cfg.schedule.min_lr_ratio))
    start = 0
    if resume_state is not None:
        if resume_state.get("module_state"):
            student.load_state_dict(resume_state["module_state"], strict=False)
        optimizer.load_state_dict(resume_state["optimizer"])
        scheduler.load_state_dict(resume_state["scheduler"])
        restore_rng(resume_state["rng"])
        start = int(resume_state["step"])
        apply_peak_lr(optimizer, scheduler, cfg.optimizer.lr)  # a resume may lower it (after a divergence)
        log.info("stage %d (%s): resuming at step %d of %d", run.stage_idx, cfg.name, start, total)
    student.train()
    world, rank = accelerator.num_processes, accelerator.process_index
    per_rank = cfg.batch_size * cfg.grad_accum
    batches = iterate_batches(run.train, per_rank * world, seed=run.seed + 1000 * run.stage_idx,
                              start_step=start, num_steps=total)
    device = accelerator.device
    bar = tqdm(total=total, initial=start, desc=f"{run.stage_idx}-{cfg.name}", unit="step",
               disable=not accelerator.is_main_process, dynamic_ncols=True)
    autocast = torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=cfg.precision == "bf16")
    row: dict = {}
    micro, tps = None, run.transpoints
    t_start = time.perf_counter()
    for step, rows in batches:
        tps = (run.transpoints if cfg.transpoint_schedule == "fixed"
               else sample_transpoints(run.transpoints, cfg.jitter, seq_len, run.seed, run.stage_idx, step))
        rows = rows[rank * per_rank:(rank + 1) * per_rank].to(device)
        optimizer.zero_grad(set_to_none=True)
        loss_sum, extra = 0.0, {}
        for micro in rows.split(cfg.batch_size):
            with use_transpoints(student, tps), autocast:
                loss, mets = stage.loss(micro)
            if not torch.isfinite(loss):
                raise TrainingDiverged(stop_message(run.output_dir, run.stage_idx, cfg.name, step + 1,
                                                    f"loss is {float(loss.detach())}"))
            accelerator.backward(loss / cfg.grad_accum)
            loss_sum += float(loss.detach()) / cfg.grad_accum
            for k, v in mets.items():
                extra[k] = extra.get(k, 0.0) + v / cfg.grad_accum
        if world > 1:
            for p in params:
                if p.grad is not None:
                    p.grad.copy_(accelerator.reduce(p.grad, reduction="mean"))
        if cfg.max_grad_norm is not None:
            grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        else:
            grad_norm = _grad_norm(params)
        if not torch.isfinite(grad_norm):
            raise TrainingDiverged(stop_message(run.output_dir, run.stage_idx, cfg.name, step + 1,
                                                f"gradient norm is {float(grad_norm)}"))
        lr = optimizer.param_groups[0]["lr"]
        optimizer.step()
        scheduler.step()
        done = step + 1
        elapsed = time.perf_counter() - t_start
        tok_s = (done - start) * per_rank * world * seq_len / max(elapsed, 1e-9)
        row = {"stage": cfg.name, "stage_idx": run.stage_idx, "step": done, "loss": loss_sum, "lr": lr,
               "grad_norm": float(grad_norm), "tokens_per_s": tok_s, "min_transpoint": min(tps), **extra}
        if done % cfg.log_every == 0 or done == total:
            metrics.write(row, global_step=done)
        bar.update(1)
        bar.set_postfix(loss=f"{loss_sum:.4g}", tok_s=f"{tok_s:.0f}")
        if cfg.checkpoint_every and done % cfg.checkpoint_every == 0 and done < total:
            if problem := unsound(stage, micro, tps, autocast, accelerator):
                raise TrainingDiverged(stop_message(run.output_dir, run.stage_idx, cfg.name, done, problem))
            state = {"stage_idx": run.stage_idx, "stage": cfg.name, "step": done, "data_position": done,
                     "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                     "rng": capture_rng(), "module_state": _module_state(student)}
            if accelerator.is_main_process:
                _save(stage, folder / f"step-{done}", run, state, row)
                prune(folder, cfg.keep_last)
                drop_superseded(run.output_dir, run.stage_idx)
            accelerator.wait_for_everyone()
        if run.on_step is not None:
            run.on_step(run.stage_idx, done, loss_sum)
    bar.close()
    if problem := unsound(stage, micro, tps, autocast, accelerator):
        raise TrainingDiverged(stop_message(run.output_dir, run.stage_idx, cfg.name, total, problem))
    stage.finalize()
    student.eval()
    if accelerator.is_main_process:
        final_state = {"stage_idx": run.stage_idx, "stage": cfg.name, "step": total, "done": True}
        _save(stage, folder / "final", run, final_state, row)
        drop_superseded(run.output_dir, run.stage_idx)
    accelerator.wait_for_everyone()
    return row


def _save(stage: Stage, dest, run: StageRun, state: dict, row: dict) -> None:
    export = getattr(stage, "export_state_dict", None)
    meta = {**run.metadata, "stage": run.cfg.name, "stage_idx": run.stage_idx, "step": state["step"],
            "metrics": row}
    save_checkpoint(dest, stage.student, run.tokenizer, state, meta, state_dict=export() if export else None)


__all__ = ["StageRun", "TrainingDiverged", "lr_factor", "sample_transpoints", "train_stage"]
