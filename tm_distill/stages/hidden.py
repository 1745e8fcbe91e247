"""The `hidden` stage: each layer's hybrid mixer output against the teacher's attention output.

Per selected layer with an SSM part (P_l < t), the student mixer runs on the teacher's own input to that
layer and is compared by ``losses.hidden_loss`` with the teacher's attention output (before the residual
add), on positions >= P_l only (earlier ones are exact by construction, so they are not even computed: the
SSM rows of one whole-sequence scan are the hybrid's rows, the Memory Converter included). Per-layer losses
are summed; the layers are independent (detached teacher inputs), so nothing backpropagates through the
model. Packed documents (position_ids restarting at 0) run the mixer's packed forward and count the
positions whose place inside their document is >= P_l.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from ..losses import hidden_loss
from ..models.modeling import packed_seq_idx
from .layer_parallel import LayerParallelStage


class HiddenStage(LayerParallelStage):
    """Layer-wise output matching (MOHAWK's hidden-state alignment on the mixer). Default trainable: "ssm"."""

    name: ClassVar[str] = "hidden"

    def layer_loss(self, layer: int, acts, position_ids: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """One layer's hidden loss and its relative L2 error ||S - T|| / ||T|| on positions >= P_l."""
        hidden, pe = self.student_inputs(acts, layer, position_ids)
        b, t, _ = hidden.shape
        P = self.student.config.transpoints[layer]
        mixer = self.student.model.layers[layer].mixer
        target = acts.attn_outputs[layer].to(device=hidden.device)
        seq_idx = packed_seq_idx(position_ids.to(hidden.device)) if position_ids is not None else None
        if seq_idx is None:
            start = min(P, t)
            q, k, v = mixer.project(hidden)
            y = mixer.ssm_full(hidden, q, k, v, pe, start=start)
            out, target, mask = mixer.o_proj(y.reshape(b, t - start, -1)), target[:, start:], None
        else:
            positions = position_ids.to(hidden.device).expand(b, -1)
            out = mixer(hidden, pe, seq_idx=seq_idx.expand(b, -1), position_ids=positions)
            mask = positions >= P
        loss = hidden_loss(out, target, normalize=self.cfg.loss.normalize, mask=mask)
        with torch.no_grad():
            keep = 1.0 if mask is None else mask[..., None].float()
            err = ((out.detach().float() - target.float()) * keep).pow(2).sum()
            norm = (target.float() * keep).pow(2).sum().clamp_min(1e-30)
        return loss, (err / norm).sqrt()


__all__ = ["HiddenStage"]
