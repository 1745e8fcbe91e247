"""Per-layer hidden-state error on the teacher's own inputs.

For layer l: feed the teacher's attention input (the output of its ``input_layernorm``) to the student's
mixer, and compare with the teacher's attention output (after ``o_proj``) at positions >= P_l (earlier
positions are attention in both and exact). The error is the relative L2 norm
``||y_student - y_teacher|| / ||y_teacher||`` over those positions, summed over windows before dividing.

Activations are captured with the distillation stages' forward hooks (``models.capture.record_activations``)
during the same teacher forward that gives the logits.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch

from ..models.capture import TeacherActivations, decoder_layers, record_activations
from ..models.configuration import ATTENTION_ONLY


@contextlib.contextmanager
def capture_attention_io(teacher: torch.nn.Module, enabled: bool = True) -> Iterator[TeacherActivations | None]:
    """Record every layer's attention input and output during the teacher forwards inside the block.

    Yields the stages' ``TeacherActivations`` (attn_inputs[l], attn_outputs[l]: (batch, seqlen, hidden)),
    or None when ``enabled`` is False. The hooks are removed on exit.
    """
    if not enabled:
        yield None
        return
    with record_activations(teacher, range(len(decoder_layers(teacher))), attention=True) as acts:
        yield acts


@torch.no_grad()
def mixer_errors(student: torch.nn.Module, captured: TeacherActivations) -> list[tuple[float, float] | None]:
    """Per layer: (sum of squared error, sum of squared teacher output) over positions >= P_l, or None.

    student: a TransMamba causal LM; captured: from ``capture_attention_io`` on the same windows.
    """
    out: list[tuple[float, float] | None] = []
    transpoints = student.config.transpoints
    for i, layer in enumerate(student.model.layers):
        if i not in captured.attn_outputs:
            out.append(None)
            continue
        x, y_teacher = captured.attn_inputs[i], captured.attn_outputs[i]
        p = transpoints[i]
        if p >= min(ATTENTION_ONLY, x.shape[1]):
            out.append(None)  # no SSM positions in this window: the layer is exact
            continue
        positions = torch.arange(x.shape[1], device=x.device)[None]
        position_embeddings = student.model.rotary_emb(x, position_ids=positions)
        y = layer.mixer(x.to(layer.mixer.q_proj.weight.dtype), position_embeddings)
        diff = (y[:, p:].float() - y_teacher[:, p:].float()).pow(2).sum()
        ref = y_teacher[:, p:].float().pow(2).sum()
        out.append((float(diff), float(ref)))
    return out


class LayerErrorStats:
    """Sums of per-layer squared errors over windows."""

    def __init__(self, num_layers: int):
        self.err = [0.0] * num_layers
        self.ref = [0.0] * num_layers
        self.seen = [False] * num_layers
        self.count = 0

    def add(self, per_layer: list[tuple[float, float] | None]) -> None:
        for i, v in enumerate(per_layer):
            if v is not None:
                self.err[i] += v[0]
                self.ref[i] += v[1]
                self.seen[i] = True
        self.count += 1

    def summary(self) -> list[float | None]:
        """Relative L2 error per layer (None for a layer with no SSM positions in the windows)."""
        return [
            math.sqrt(e / r) if seen and r > 0 else (0.0 if seen else None)
            for e, r, seen in zip(self.err, self.ref, self.seen)
        ]


__all__ = ["LayerErrorStats", "capture_attention_io", "mixer_errors"]
