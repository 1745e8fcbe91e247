"""The onpolicy stage: GKD's on-policy distillation (Agarwal et al., arXiv 2306.13649; trl's ``GKDTrainer``).

The logits stage trains the student on the data's prefixes only; at inference it continues its *own* text,
whose prefixes it never trained on. Here a fraction ``lmbda`` of the micro-batches is replaced by sequences
the student generates, and the teacher scores every generated position.

Per micro-batch ``x: (b, t)`` (token windows of the stage's seq_len), with ``op = cfg.on_policy``:

- **on-policy** (micro-batch k of the stage, k = step * grad_accum + micro, when ``on_policy_micro(k, lmbda)``):
  prompt ``x[:, :P]`` (P = ``op.prompt_tokens``) is continued by N = ``op.new_tokens`` tokens sampled from the
  student at ``op.temperature`` under ``torch.no_grad``, with its hybrid cache (one prefill, then one-token
  steps: KV for the layers still before their TransPoint, SSM state for the rest; ``generation
  .sample_generate``). On the sequence ``y: (b, P + N)`` both models run a full forward and the loss is

      L = mean over rows and positions i in [max(P - 1, min_l P_l), P + N - 1) of JSD_beta(p_T(.|y_<=i) || p_S(.|y_<=i))

  the positions whose next token the student generated (GKD's labels mask: prompt positions are not scored;
  positions before the smallest TransPoint are exact and skipped, as in the logits stage).
- **off-policy** (the others): the same divergence on the data window, positions >= min_l P_l (the logits
  stage's loss with ``kind: jsd``).

``JSD_beta(p_T || p_S) = beta * KL(p_T || M) + (1 - beta) * KL(p_S || M)``, ``M = beta * p_T + (1 - beta) * p_S``,
``beta = op.beta`` (0: forward KL(p_T || p_S), 1: reverse KL(p_S || p_T), exactly), computed by
``losses.token_divergence(kind="jsd")``: per position, the value of trl's ``GKDTrainer.generalized_jsd_loss`` (the
tests compare the two on the same logits); trl itself stays a test dependency. ``loss.temperature`` T divides both
logits and the loss is multiplied by T**2, as every divergence here (trl does not scale; T = 1 is the same).

Memory: the logits are never held for the whole micro-batch: the loss is ``losses.fused_distill_loss`` (chunks of
``loss.chunk_size`` positions, recomputed in backward; Liger's fused kernel on CUDA), so peak logits memory is
O(chunk_size x V), once. The mean over positions is exact across chunks (each chunk contributes its sum, divided
by the number of scored positions once), unlike trl's ``reduction="batchmean"`` on (b, t, V) logits without
labels, which divides by b. Generation keeps no graph; its cache holds at most P + N tokens of KV per layer.

Which micro-batches are on-policy depends only on (step, micro index, grad_accum, lmbda), alike in every process
(under FSDP all processes must run the same forwards), and the samples are drawn from a generator seeded by
(seed, stage_idx, k), k the run's micro-batch index (``Stage.begin_step``: the same on any number of processes),
so a resumed run generates exactly what an uninterrupted one would. On-policy micro-batches are spread evenly (an exact fraction lmbda of the stage, not a
coin per batch as in trl), so each step's generation cost and the plan's count of generated tokens are exact.

Budget: the stage's ``tokens``/``steps`` count the data windows it draws, as every stage does; an on-policy
micro-batch uses P tokens of its window and trains on N generated ones (``generated_tokens`` gives the count).
Rows of an on-policy micro-batch are continued as single sequences even when their window packs several
documents (generation continues one context). Trainable sets and LoRA are the logits stage's.
"""

from __future__ import annotations

import dataclasses
import math

import torch

from ..generation import sample_generate
from .logits import LogitsStage


def on_policy_micro(k: int, lmbda: float) -> bool:
    """Is micro-batch ``k`` (0-based, counted over the stage) on-policy? Exactly floor(n * lmbda) of the first n
    micro-batches are, evenly spread (the last of every 1/lmbda)."""
    return math.floor((k + 1) * lmbda + 1e-9) > math.floor(k * lmbda + 1e-9)


def on_policy_micro_batches(micro_batches: int, lmbda: float) -> int:
    """How many of the first ``micro_batches`` micro-batches are on-policy."""
    return math.floor(micro_batches * lmbda + 1e-9)


def generated_tokens(cfg, steps: int) -> int:
    """Tokens the student generates (per process) in ``steps`` steps of the onpolicy stage ``cfg``."""
    return on_policy_micro_batches(steps * cfg.grad_accum, cfg.on_policy.lmbda) * cfg.batch_size * \
        cfg.on_policy.new_tokens


class OnPolicyStage(LogitsStage):
    name = "onpolicy"

    def __init__(self, cfg, student, teacher):
        super().__init__(cfg, student, teacher)
        # the logits stage's loss as GKD's generalized JSD with on_policy.beta (the recipe allows no other kind)
        self.loss_cfg = dataclasses.replace(cfg.loss, kind="jsd", beta=cfg.on_policy.beta)
        self._seed, self._stage_idx, self._step, self._rank, self._world, self._micro = 0, 0, 0, 0, 1, 0

    def begin_step(self, seed: int, stage_idx: int, step: int, rank: int = 0, world: int = 1) -> None:
        self._seed, self._stage_idx, self._step, self._rank, self._world, self._micro = seed, stage_idx, step, rank, \
            world, 0

    def loss(self, input_ids: torch.LongTensor, position_ids: torch.LongTensor | None = None,
             ) -> tuple[torch.Tensor, dict[str, float]]:
        """input_ids: (b, t) data windows; position_ids: (b, t) packed-document positions or None.

        On-policy micro-batches score (b, new_tokens) generated positions, off-policy ones the window's
        positions >= min P (see the module docstring). Metrics: ``kd``, ``positions``, ``on_policy`` (1 or 0;
        its step average is the step's on-policy fraction) and ``generated`` (tokens sampled).
        """
        micro, ga = self._micro, self.cfg.grad_accum
        self._micro += 1
        op = self.cfg.on_policy
        # every process decides alike for its micro-batch ``micro`` of the step (under FSDP all of them must run the
        # same forwards, generation included); the samples are seeded by the run's micro-batch index k, the same
        # on any number of processes
        k = (self._step * self._world + self._rank) * ga + micro
        if not on_policy_micro(self._step * ga + micro, op.lmbda):
            loss, metrics = self.distill(input_ids, position_ids)
            return loss, {**metrics, "on_policy": 0.0, "generated": 0.0}
        prompt = op.prompt_tokens
        sequences = self.generate(input_ids[:, :prompt], k)
        loss, metrics = self.distill(sequences, None, start=prompt - 1, stop=prompt + op.new_tokens - 1)
        return loss, {**metrics, "on_policy": 1.0, "generated": float(sequences.shape[0] * op.new_tokens)}

    def generate(self, prompts: torch.LongTensor, k: int) -> torch.LongTensor:
        """prompts: (b, P) -> (b, P + new_tokens): the student's continuation with its hybrid cache, sampled from a
        generator seeded by (seed, stage_idx, k) for the run's micro-batch k, in eval mode and without a graph."""
        op = self.cfg.on_policy
        device = prompts.device
        seed = hash((self._seed, self._stage_idx, k)) % (2**63)
        generator = torch.Generator(device=device).manual_seed(seed)
        was_training = self.student.training
        self.student.eval()
        try:
            return sample_generate(self.student, prompts, op.new_tokens, op.temperature, generator)
        finally:
            self.student.train(was_training)


__all__ = ["OnPolicyStage", "generated_tokens", "on_policy_micro", "on_policy_micro_batches"]
