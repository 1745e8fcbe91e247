"""The logits stage: masked end-to-end KD, trainable sets, LoRA that merges into a loadable student."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

import tm_distill  # noqa: F401
from tm_distill.checkpoint import save_checkpoint
from tm_distill.convert import parse_transpoints, seed_student
from tm_distill.models import use_transpoints
from tm_distill.recipe import StageConfig, from_dict
from tm_distill.stages import get_stage_class
from tm_distill.stages.logits import LogitsStage


def _cfg(**kw) -> StageConfig:
    return from_dict(StageConfig, {"name": "logits", "steps": 1, **kw})


def _train(stage, batch, transpoints, steps, lr):
    params = [p for _, p in stage.trainable_parameters()]
    opt = torch.optim.AdamW(params, lr=lr)
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        with use_transpoints(stage.student, transpoints):
            loss, metrics = stage.loss(batch)
        loss.backward()
        opt.step()
        losses.append(metrics.get("kd", float(loss.detach())))  # the distillation part (CE cannot reach 0)
    return losses, metrics


def test_registry_resolves_the_logits_stage():
    assert get_stage_class("logits") is LogitsStage


def test_loss_is_zero_and_positions_empty_before_min_transpoint(tiny_teacher):
    student = seed_student(tiny_teacher, [16, 20, 24])
    stage = LogitsStage(_cfg(), student, tiny_teacher)
    x = torch.randint(0, 97, (2, 16))
    with use_transpoints(student, [16, 20, 24]):  # every position is before min P: exact, nothing to learn
        loss, metrics = stage.loss(x)
    assert float(loss.detach()) == 0.0 and metrics["positions"] == 0
    with use_transpoints(student, [4, 20, 24]):
        loss, metrics = stage.loss(x)
    assert float(loss.detach()) > 0 and metrics["positions"] == 2 * 12


@pytest.mark.parametrize("kind", ["forward_kl", "reverse_kl", "jsd"])
def test_ssm_training_lowers_the_loss_tiny(tiny_teacher, kind):
    student = seed_student(tiny_teacher, [0, 4, 8])
    stage = LogitsStage(_cfg(trainable="ssm", loss={"kind": kind}), student, tiny_teacher)
    names = [n for n, _ in stage.trainable_parameters()]
    assert names and all(n.rsplit(".", 2)[-2:][0] in ("dt_proj", "mixer") for n in names)
    assert not any(p.requires_grad for n, p in student.named_parameters() if n not in names)
    x = torch.randint(0, 97, (2, 24), generator=torch.Generator().manual_seed(0))
    losses, _ = _train(stage, x, [0, 4, 8], steps=15, lr=3e-2)
    assert losses[-1] < 0.85 * losses[0], losses
    assert not any(p.grad is not None for p in tiny_teacher.parameters())


def test_ce_weight_adds_the_data_cross_entropy(tiny_teacher):
    student = seed_student(tiny_teacher, [0, 4, 8])
    x = torch.randint(0, 97, (2, 24), generator=torch.Generator().manual_seed(0))
    with use_transpoints(student, [0, 4, 8]):
        loss, metrics = LogitsStage(_cfg(loss={"ce_weight": 0.5}), student, tiny_teacher).loss(x)
    assert metrics["ce"] > 1.0  # a random tiny model is far from the data
    assert float(loss.detach()) == pytest.approx(metrics["kd"] + 0.5 * metrics["ce"], rel=1e-5)


def test_lora_trains_adapters_and_ssm_then_merges_into_a_loadable_student(tiny_teacher, tmp_path):
    student = seed_student(tiny_teacher, [0, 4, 8])
    stage = LogitsStage(_cfg(trainable="lora", lora={"r": 4, "alpha": 8}), student, tiny_teacher)
    names = [n for n, _ in stage.trainable_parameters()]
    assert any(".lora_A." in n for n in names) and any(n.endswith("A_log") for n in names)
    assert not any(n.endswith("base_layer.weight") for n in names)
    x = torch.randint(0, 97, (2, 24), generator=torch.Generator().manual_seed(1))
    losses, _ = _train(stage, x, [0, 4, 8], steps=10, lr=2e-2)
    assert losses[-1] < losses[0]
    with torch.no_grad():
        lora_logits = student(x).logits
    mid = save_checkpoint(tmp_path / "mid", student, state_dict=stage.export_state_dict())
    stage.finalize()
    assert not any(".lora_" in n for n, _ in student.named_parameters())
    final = save_checkpoint(tmp_path / "final", student)
    for path in (mid, final):
        loaded = AutoModelForCausalLM.from_pretrained(path)
        with torch.no_grad():
            torch.testing.assert_close(loaded(x).logits, lora_logits, rtol=1e-4, atol=1e-4)


def test_logits_stage_lowers_its_loss_on_the_real_teacher_and_text(smol, real_text):
    """SmolLM2-135M with the cycle schedule on a 128-token window of a real play, SSM params only."""
    teacher = smol.model
    tps = parse_transpoints("cycle=0,16,32,64,attn", teacher.config.num_hidden_layers)
    student = seed_student(teacher, tps, seed=0)
    stage = LogitsStage(_cfg(trainable="ssm", loss={"chunk_size": 64}), student, teacher)
    ids = smol.tokenizer(real_text[5000:9000], return_tensors="pt").input_ids[:, :128]
    losses, metrics = _train(stage, ids, tps, steps=8, lr=5e-3)
    assert metrics["positions"] == 128  # min P is 0: every position counts
    assert losses[-1] < 0.8 * losses[0], losses
