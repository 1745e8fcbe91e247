"""The logits stage: end-to-end knowledge distillation of the whole student against the teacher.

Loss = divergence(teacher || student) over positions >= min P of the batch's TransPoints (earlier positions
are computed exactly as by the teacher, so they cost nothing to skip), chunked over positions so the
(b, t, V) logits are never held twice, plus ``ce_weight`` x next-token cross-entropy on the data.

Trainable: "ssm", "mixer", "all" (``base.select_parameters``) or "lora": peft LoRA adapters on the
configured projections (q/k/v/o and the MLP by default) with the SSM parameters trainable as well;
``finalize()`` merges the adapters so the saved student is a plain ``TransMambaForCausalLM``.
"""

from __future__ import annotations

import logging

import torch

from ..extras import require
from ..losses import chunked_ce_loss, fused_distill_loss
from ..models.tensors import attribute_state
from .base import Stage, freeze_except, select_parameters

log = logging.getLogger(__name__)


class LogitsStage(Stage):
    name = "logits"
    shard_layers = True

    def __init__(self, cfg, student, teacher):
        super().__init__(cfg, student, teacher)
        self.loss_cfg = cfg.loss  # the divergence options ``distill`` uses (the onpolicy stage sets its own)
        self._peft = None
        if cfg.trainable == "lora":
            self._peft = _inject_lora(student, cfg.lora)

    def trainable_parameters(self) -> list[tuple[str, torch.nn.Parameter]]:
        if self._peft is None:
            return super().trainable_parameters()
        params = [(n, p) for n, p in self.student.named_parameters() if ".lora_" in n]
        params += select_parameters(self.student, "ssm")
        return freeze_except(self.student, params)

    def loss(self, input_ids: torch.LongTensor, position_ids: torch.LongTensor | None = None,
             ) -> tuple[torch.Tensor, dict[str, float]]:
        """input_ids: (b, t); position_ids: (b, t) positions inside packed documents (restarting at 0) or None.

        Distillation loss on positions >= min P of the batch's TransPoints (inside each document when
        packed; the teacher then attends block-causally too). The logits are never materialized for the
        whole batch (``losses.fused_distill_loss``).
        """
        return self.distill(input_ids, position_ids)

    def distill(self, input_ids: torch.LongTensor, position_ids: torch.LongTensor | None = None, start: int = 0,
                stop: int | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        """``loss`` on the positions i with max(start, min P) <= i < stop (None: to the end) of unpacked rows.

        start/stop narrow the rows (the onpolicy stage scores only the generated part); with position_ids
        (packed documents) they must stay at their defaults.
        """
        loss_cfg = self.loss_cfg
        b, t = input_ids.shape
        min_p = min(self.student.config.transpoints)
        if position_ids is not None and (start, stop) != (0, None):
            raise ValueError("start/stop select positions of unpacked rows: give position_ids=None with them")
        with torch.no_grad():
            t_hidden = self.teacher.model(input_ids=input_ids, position_ids=position_ids,
                                          use_cache=False).last_hidden_state
        s_hidden = self.student.model(input_ids=input_ids, position_ids=position_ids).last_hidden_state
        if position_ids is None:
            first, last = min(max(start, min_p), t), t if stop is None else min(stop, t)
            last = max(first, last)
            mask = None
            s_rows, t_rows = s_hidden[:, first:last].flatten(0, 1), t_hidden[:, first:last].flatten(0, 1)
        else:
            mask = position_ids.to(input_ids.device).expand(b, -1) >= min_p
            s_rows, t_rows = s_hidden[mask], t_hidden[mask]
        kd = fused_distill_loss(
            s_rows, t_rows, self.student.lm_head.weight, self.teacher.lm_head.weight, kind=loss_cfg.kind,
            beta=loss_cfg.beta, temperature=loss_cfg.temperature, chunk_size=loss_cfg.chunk_size,
        )
        loss, parts = kd, [kd.detach()]
        if loss_cfg.ce_weight > 0:
            if mask is None:
                mask = torch.zeros(b, t, dtype=torch.bool, device=input_ids.device)
                mask[:, first:last] = True
            ce = chunked_ce_loss(s_hidden, self.student.lm_head, input_ids, mask, chunk_size=loss_cfg.chunk_size)
            loss, parts = loss + loss_cfg.ce_weight * ce, parts + [ce.detach()]
        values = torch.stack(parts).tolist()  # one host transfer per micro-batch
        metrics = {"kd": values[0], "positions": float(s_rows.shape[0])}
        if loss_cfg.ce_weight > 0:
            metrics["ce"] = values[1]
        return loss, metrics

    def export_state_dict(self) -> dict[str, torch.Tensor] | None:
        """The student's weights with any LoRA deltas folded in, under plain student key names.

        Used for mid-stage checkpoints, which must load with AutoModelForCausalLM while training goes on
        (the adapters themselves are kept in training_state.pt). None when there is no LoRA.
        """
        if self._peft is None:
            return None
        return _merged_state_dict(self.student)

    def finalize(self) -> None:
        if self._peft is not None:
            self._peft.merge_and_unload()
            self._peft = None
            log.info("merged LoRA adapters into the student")


def _inject_lora(student, lora_cfg):
    require("peft", "trainable: lora")
    from peft import LoraConfig, get_peft_model  # noqa: PLC0415  (peft is only needed for trainable: lora)

    names = {n.split(".")[-1] for n, _ in student.named_modules()}
    missing = [m for m in lora_cfg.target_modules if m not in names]
    if missing:
        raise ValueError(f"lora.target_modules {missing} are not modules of the student; it has e.g. "
                         "q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj")
    config = LoraConfig(r=lora_cfg.r, lora_alpha=lora_cfg.alpha, lora_dropout=lora_cfg.dropout,
                        target_modules=list(lora_cfg.target_modules), bias="none")
    # get_peft_model injects the adapters into ``student`` in place; the stage keeps calling the student.
    return get_peft_model(student, config)


def _merged_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    from peft.tuners.lora import LoraLayer  # noqa: PLC0415

    out = {}
    for mod_name, module in model.named_modules():
        if isinstance(module, LoraLayer):
            base = module.get_base_layer()
            weight = base.weight.detach().clone()
            for adapter in module.active_adapters:
                if adapter in module.lora_A:
                    weight += module.get_delta_weight(adapter).to(weight.dtype)
            out[f"{mod_name}.weight"] = weight
            if getattr(base, "bias", None) is not None:
                out[f"{mod_name}.bias"] = base.bias.detach().clone()
    for name, tensor in attribute_state(model).items():  # not state_dict(): FSDP's gathered weights are plain here
        if "lora_" in name or ".base_layer." in name:
            continue
        out[name] = tensor.detach()
    return out


__all__ = ["LogitsStage"]
