"""The `hidden` stage: each layer's hybrid mixer output against the teacher's attention output.

Per selected layer with an SSM part (P_l < t), the student's full mixer forward (attention for tokens < P_l,
the SSM after, with the Memory Converter between) runs on the teacher's own input to that layer and is
compared by ``losses.hidden_loss`` with the teacher's attention output (before the residual add), on
positions >= P_l only (earlier ones are exact by construction). Per-layer losses are summed; the layers are
independent (detached teacher inputs), so nothing backpropagates through the model.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import Tensor

from ..losses import hidden_loss
from .capture import LayerParallelStage


class HiddenStage(LayerParallelStage):
    """Layer-wise output matching (MOHAWK's hidden-state alignment on the mixer). Default trainable: "ssm"."""

    name: ClassVar[str] = "hidden"

    def layer_loss(self, layer: int, acts) -> tuple[Tensor, float]:
        """One layer's hidden loss and its relative L2 error ||S - T|| / ||T|| on positions >= P_l."""
        hidden, pe = self.student_inputs(acts, layer)
        b, t, _ = hidden.shape
        out = self.student.model.layers[layer].mixer(hidden, pe)  # (b, t, H)
        target = acts.attn_outputs[layer].to(device=out.device)
        mask = (torch.arange(t, device=out.device) >= self.student.config.transpoints[layer]).expand(b, t)
        loss = hidden_loss(out, target, normalize=self.cfg.loss.normalize, mask=mask)
        with torch.no_grad():
            err = (out.detach().float() - target.float())[mask].pow(2).sum()
            norm = target.float()[mask].pow(2).sum().clamp_min(1e-30)
        return loss, math.sqrt(float(err / norm))


__all__ = ["HiddenStage"]
