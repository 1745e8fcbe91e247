"""The common part of the matrix and hidden stages: which layers train, and the teacher's inputs to them
(captured by ``models.capture``)."""

from __future__ import annotations

import logging

import torch
from torch import Tensor, nn

from ..models.capture import TeacherActivations, capture_teacher, check_layers, decoder_layers
from ..stage_names import TRAINABLE_SETS
from .base import Stage, freeze_except, select_parameters

log = logging.getLogger(__name__)


class LayerParallelStage(Stage):
    """The common part of the matrix and hidden stages: which layers train, and the teacher's inputs to them.

    Each selected layer gets the teacher's own (detached) input, so layers train independently and nothing
    backpropagates through the model. A layer takes part in a batch when its TransPoint P_l < t (it has an SSM
    part); ``cfg.loss.layers`` restricts the set further. Only the selected layers' parameters are trainable.
    """

    def __init__(self, cfg, student, teacher):
        super().__init__(cfg, student, teacher)
        num_layers = student.config.num_hidden_layers
        if len(decoder_layers(teacher)) != num_layers:
            raise ValueError(f"teacher has {len(decoder_layers(teacher))} layers but the student {num_layers}: "
                             "the student must be seeded from this teacher")
        if cfg.trainable not in TRAINABLE_SETS:
            raise ValueError(f"stage {self.name!r}: trainable={cfg.trainable!r} is not supported; use ssm "
                             "(default), mixer (also trains q/k/v/o) or all")
        layers = getattr(cfg.loss, "layers", None)
        self.layers = check_layers(layers, num_layers) if layers is not None else list(range(num_layers))
        if not self.layers:
            raise ValueError(f"stage {self.name!r}: loss.layers is empty; list layer indices or leave it null")

    def trainable_parameters(self) -> list[tuple[str, nn.Parameter]]:
        prefixes = tuple(f"model.layers.{i}." for i in self.layers)
        chosen = [(n, p) for n, p in select_parameters(self.student, self.cfg.trainable) if n.startswith(prefixes)]
        if not chosen:
            raise ValueError(f"stage {self.name!r}: trainable={self.cfg.trainable!r} selects nothing in layers "
                             f"{self.layers}")
        return freeze_except(self.student, chosen)

    def active_layers(self, seq_len: int) -> list[int]:
        """Selected layers whose TransPoint (read live from student.config) falls inside the sequence."""
        tps = self.student.config.transpoints
        return [i for i in self.layers if tps[i] < seq_len]

    def student_inputs(self, acts: TeacherActivations, layer: int, position_ids: Tensor | None = None,
                       ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """The teacher's input to ``layer`` on the student's device/dtype, and the student's RoPE for it."""
        ref = next(self.student.parameters())
        hidden = acts.attn_inputs[layer].to(device=ref.device, dtype=ref.dtype)
        if position_ids is None:
            position_ids = torch.arange(hidden.shape[1], device=ref.device).unsqueeze(0)
        return hidden, self.student.model.rotary_emb(hidden, position_ids=position_ids.to(ref.device))

    def teacher_batch(self, input_ids: Tensor, layers: list[int], position_ids: Tensor | None = None,
                      ) -> TeacherActivations:
        ref = next(self.teacher.parameters())
        if position_ids is not None:
            position_ids = position_ids.to(ref.device)
        return capture_teacher(self.teacher, input_ids.to(ref.device), layers, position_ids=position_ids)

    def no_layer_loss(self, seq_len: int) -> tuple[Tensor, dict[str, float]]:
        log.warning("stage %s: no selected layer has a TransPoint below the batch length %d; the loss is 0",
                    self.name, seq_len)
        ref = next(self.student.parameters())
        return torch.zeros((), device=ref.device, requires_grad=True), {"layers": 0.0}

    def layer_loss(self, layer: int, acts: TeacherActivations, position_ids: Tensor | None = None,
                   ) -> tuple[Tensor, Tensor]:
        """One layer's loss on the teacher's inputs and its relative error, a detached scalar (subclasses).

        position_ids: (b, t) positions inside packed documents (restarting at 0), or None (one document).
        """
        raise NotImplementedError

    def loss(self, input_ids: Tensor, position_ids: Tensor | None = None) -> tuple[Tensor, dict[str, float]]:
        """input_ids: (b, t); position_ids: (b, t) for packed documents or None. Sum over active layers of
        ``layer_loss``; metrics: relative error per layer (``<name>_rel/L<l>``), their mean (``<name>_rel``)
        and the number of layers. The metrics reach the host in one transfer, after every layer is queued."""
        t = input_ids.shape[1]
        layers = self.active_layers(t)
        if not layers:
            return self.no_layer_loss(t)
        acts = self.teacher_batch(input_ids, layers, position_ids)
        total, relative = None, []
        for layer in layers:
            loss, rel = self.layer_loss(layer, acts, position_ids)
            total = loss if total is None else total + loss
            relative.append(rel.detach().float().reshape(()))
        values = torch.stack(relative).tolist()
        metrics: dict[str, float] = {f"{self.name}_rel/L{layer}": v for layer, v in zip(layers, values)}
        metrics[f"{self.name}_rel"] = sum(values) / len(layers)
        metrics["layers"] = float(len(layers))
        return total, metrics


def head_chunk_size(batch: int, seq_len: int, num_heads: int, max_bytes: int) -> int:
    """Heads per chunk so that one chunk's (b, h, t, t) fp32 matrices (with ~8 temporaries) fit max_bytes."""
    per_head = 8 * 4 * batch * seq_len * seq_len
    return max(1, min(num_heads, max_bytes // max(per_head, 1)))


__all__ = ["LayerParallelStage", "head_chunk_size"]
