"""The `matrix` stage: each layer's materialized SSM mixing matrix against the teacher's softmax attention.

Per selected layer with an SSM part (P_l < t), on the teacher's own input to that layer:
``M = (A^x o C B^T) diag(dt)`` (``models.capture.ssm_matrix_rows``) vs the teacher's attention probabilities
(``models.capture.attention_rows``), compared by ``losses.frobenius_loss`` (MOHAWK's per-head Frobenius distance) on
rows >= P_l (earlier rows are attention in the student, exact by construction). All in fp32, built in blocks
of query rows with activation checkpointing: one block's (b, h, rows, t) matrices are alive at a time, for
every head at once, and rows before P_l are never built. Packed documents: both matrices are block-diagonal
(no row sees another document) and a row counts when its position inside its document is >= P_l.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from ..losses import frobenius_loss
from ..models.capture import attention_rows, decoder_layers, ssm_matrix_inputs, ssm_matrix_rows, teacher_qk
from ..models.modeling import packed_seq_idx
from .layer_parallel import LayerParallelStage


def _block(q, k, scale, C, B, dt, log_decay, r0, r1, same_doc, row_ok):
    """Squared errors (b, h) and the target's squared norm (scalar) of rows [r0, r1), fp32."""
    target = attention_rows(q, k, scale, r0, r1, same_doc)
    student = ssm_matrix_rows(C, B, dt, log_decay, r0, r1, same_doc)
    diff = (student - target).pow(2).sum(-1)  # (b, h, R)
    target_sq = target.pow(2).sum(-1)
    if row_ok is not None:
        weight = row_ok[:, None, r0:r1].to(diff.dtype)
        diff, target_sq = diff * weight, target_sq * weight
    return diff.sum(-1), target_sq.sum()


class MatrixStage(LayerParallelStage):
    """MOHAWK's matrix-orientation stage, TransMamba-aware (rows >= P_l only). Default trainable: "ssm"."""

    name: ClassVar[str] = "matrix"
    max_matrix_bytes: ClassVar[int] = 2**30  # bound on one row block's fp32 matrices and temporaries

    def rows_per_block(self, b: int, h: int, t: int) -> int:
        """Query rows per block so that ~8 fp32 (b, h, rows, t) temporaries fit ``max_matrix_bytes``."""
        return max(1, self.max_matrix_bytes // max(8 * 4 * b * h * t, 1))

    def layer_loss(self, layer: int, acts, position_ids: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """One layer's matrix loss (mean over batch and heads of the Frobenius distance) and relative error."""
        hidden, pe = self.student_inputs(acts, layer, position_ids)
        b, t, _ = hidden.shape
        P = self.student.config.transpoints[layer]
        mixer = self.student.model.layers[layer].mixer
        seq_idx = packed_seq_idx(position_ids.to(hidden.device)) if position_ids is not None else None
        same_doc = row_ok = None
        if seq_idx is not None:
            seq_idx = seq_idx.expand(b, -1)
            same_doc = seq_idx[:, :, None] == seq_idx[:, None, :]
            row_ok = position_ids.to(hidden.device).expand(b, -1) >= P
        first = 0 if seq_idx is not None else min(P, t)
        with torch.no_grad():  # projections in the run's precision, everything after them in fp32
            attn = decoder_layers(self.teacher)[layer].self_attn
            q, k, scale = teacher_qk(attn, acts.attn_inputs[layer], acts.position_embeddings)
            q, k = q.to(hidden.device), k.to(hidden.device)
        C, B, dt, log_decay = ssm_matrix_inputs(mixer, hidden, pe)
        with torch.autocast(device_type=hidden.device.type, enabled=False):
            step = self.rows_per_block(b, C.shape[1], t)
            blocked = torch.is_grad_enabled() and step < t - first
            diff_sq = hidden.new_zeros((b, C.shape[1]), dtype=torch.float32)
            target_sq = hidden.new_zeros((), dtype=torch.float32)
            for r0 in range(first, t, step):
                args = (q, k, scale, C, B, dt, log_decay, r0, min(r0 + step, t), same_doc, row_ok)
                d, tsq = checkpoint(_block, *args, use_reentrant=False) if blocked else _block(*args)
                diff_sq, target_sq = diff_sq + d, target_sq + tsq
        return frobenius_loss(diff_sq, target_sq)


__all__ = ["MatrixStage"]
