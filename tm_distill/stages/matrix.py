"""The `matrix` stage: each layer's materialized SSM mixing matrix against the teacher's softmax attention.

Per selected layer with an SSM part (P_l < t), on the teacher's own input to that layer:
``M = (A^x o C B^T) diag(dt)`` (``capture.ssm_mixing_matrix``) vs the teacher's attention probabilities
(``capture.teacher_attention_matrix``), compared by ``losses.matrix_loss`` on rows >= P_l (earlier rows are
attention in the student, exact by construction). All in fp32, chunked over heads with activation
checkpointing so one chunk's (b, h, t, t) matrices are alive at a time; the per-layer losses are summed.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from ..losses import matrix_loss
from .capture import LayerParallelStage, decoder_layers, head_chunk_size, ssm_mixing_matrix, teacher_attention_matrix


class MatrixStage(LayerParallelStage):
    """MOHAWK's matrix-orientation stage, TransMamba-aware (rows >= P_l only). Default trainable: "ssm"."""

    name: ClassVar[str] = "matrix"
    max_matrix_bytes: ClassVar[int] = 2**28  # bound on one head chunk's fp32 matrices and temporaries

    def _chunk(self, layer: int, acts, hidden: Tensor, pe, rows: Tensor, heads: slice):
        """(loss, squared error, teacher squared norm) of one head chunk; matrices are fp32."""
        mixer = self.student.model.layers[layer].mixer
        attn = decoder_layers(self.teacher)[layer].self_attn
        with torch.autocast(device_type=hidden.device.type, enabled=False):
            with torch.no_grad():
                target = teacher_attention_matrix(attn, acts.attn_inputs[layer], acts.position_embeddings, heads)
                target = target.to(hidden.device)
            student = ssm_mixing_matrix(mixer, hidden, pe, heads)
            loss, relative = matrix_loss(student, target, rows)
            with torch.no_grad():
                target_sq = target[:, :, rows].pow(2).sum()
        return loss, relative.pow(2) * target_sq, target_sq

    def layer_loss(self, layer: int, acts) -> tuple[Tensor, float]:
        """One layer's matrix loss (mean over batch and heads of the Frobenius distance) and relative error."""
        hidden, pe = self.student_inputs(acts, layer)
        b, t, _ = hidden.shape
        rows = torch.arange(t, device=hidden.device) >= self.student.config.transpoints[layer]
        num_heads = self.student.config.num_attention_heads
        step = head_chunk_size(b, t, num_heads, self.max_matrix_bytes)
        loss = hidden.new_zeros((), dtype=torch.float32)
        err_sq = target_sq = 0.0
        for start in range(0, num_heads, step):
            heads = slice(start, min(start + step, num_heads))
            args = (layer, acts, hidden, pe, rows, heads)
            if torch.is_grad_enabled() and step < num_heads:
                chunk_loss, chunk_err, chunk_tsq = checkpoint(self._chunk, *args, use_reentrant=False)
            else:
                chunk_loss, chunk_err, chunk_tsq = self._chunk(*args)
            loss = loss + chunk_loss * ((heads.stop - heads.start) / num_heads)
            err_sq += float(chunk_err)
            target_sq += float(chunk_tsq)
        return loss, math.sqrt(err_sq / max(target_sq, 1e-30))


__all__ = ["MatrixStage"]
