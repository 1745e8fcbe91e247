"""The hidden stage: the hybrid mixer's output on the teacher's own layer input vs the teacher's attention output."""

from __future__ import annotations

import pytest
import torch

from tm_distill.convert import parse_transpoints, seed_student
from tm_distill.losses import hidden_loss
from tm_distill.models.configuration import ATTENTION_ONLY
from tm_distill.recipe import LossConfig, StageConfig
from tm_distill.stages import get_stage_class
from tm_distill.models.capture import capture_teacher
from tm_distill.stages.hidden import HiddenStage


def _stage(teacher, transpoints, layers=None, normalize=True, trainable="ssm"):
    student = seed_student(teacher, transpoints, seed=0)
    cfg = StageConfig(name="hidden", steps=10, trainable=trainable, loss=LossConfig(layers=layers, normalize=normalize))
    return HiddenStage(cfg, student, teacher)


def test_registry_finds_the_stage():
    assert get_stage_class("hidden") is HiddenStage


@pytest.mark.parametrize("normalize", [True, False])
def test_loss_is_hidden_loss_on_positions_after_transpoint(tiny_teacher, normalize):
    stage = _stage(tiny_teacher, [ATTENTION_ONLY, 6, 0], normalize=normalize)
    ids = torch.randint(0, 97, (2, 18), generator=torch.Generator().manual_seed(0))
    loss, metrics = stage.loss(ids)
    assert metrics["layers"] == 2 and "hidden_rel/L0" not in metrics
    acts = capture_teacher(tiny_teacher, ids, [1, 2])
    expect = 0.0
    for layer, P in ((1, 6), (2, 0)):
        h = acts.attn_inputs[layer]
        pe = stage.student.model.rotary_emb(h, torch.arange(18)[None])
        out = stage.student.model.layers[layer].mixer(h, pe)
        mask = (torch.arange(18) >= P).expand(2, 18)
        expect = expect + hidden_loss(out, acts.attn_outputs[layer], normalize=normalize, mask=mask)
    torch.testing.assert_close(loss, expect)


def test_prefix_positions_are_exact_and_excluded(tiny_teacher):
    """Before P the student mixer computes the teacher's attention output exactly, so it adds nothing."""
    P, t = 9, 16
    stage = _stage(tiny_teacher, [P, P, P], layers=[1])
    ids = torch.randint(0, 97, (1, t), generator=torch.Generator().manual_seed(3))
    acts = capture_teacher(tiny_teacher, ids, [1])
    h, pe = stage.student_inputs(acts, 1)
    with torch.no_grad():
        out = stage.student.model.layers[1].mixer(h, pe)
    torch.testing.assert_close(out[:, :P], acts.attn_outputs[1][:, :P], atol=1e-5, rtol=1e-4)
    assert (out[:, P:] - acts.attn_outputs[1][:, P:]).abs().max() > 1e-3
    _, metrics = stage.loss(ids)
    err = (out[:, P:] - acts.attn_outputs[1][:, P:]).pow(2).sum() / acts.attn_outputs[1][:, P:].pow(2).sum()
    assert metrics["hidden_rel/L1"] == pytest.approx(float(err.sqrt()), rel=1e-4)


def test_layers_train_independently_and_teacher_is_untouched(tiny_teacher):
    stage = _stage(tiny_teacher, [0, 0, 0], trainable="mixer")
    params = dict(stage.trainable_parameters())
    ids = torch.randint(0, 97, (1, 12))
    acts = capture_teacher(tiny_teacher, ids, [0, 1, 2])
    loss, _ = stage.layer_loss(2, acts)
    loss.backward()
    for name, p in params.items():
        assert (p.grad is not None) == name.startswith("model.layers.2."), name
    assert all(p.grad is None for p in tiny_teacher.parameters())


def test_all_attention_batch_gives_zero_loss(tiny_teacher):
    stage = _stage(tiny_teacher, [40, 40, ATTENTION_ONLY])
    loss, metrics = stage.loss(torch.randint(0, 97, (2, 16)))
    assert loss.item() == 0.0 and metrics["layers"] == 0


def test_hidden_loss_goes_down_on_real_teacher(smol, real_text):
    """SmolLM2-135M, Shakespeare, seq_len 128, layers 0/7/15 at P = 0/32/0: 20 AdamW steps on the SSM params."""
    ids = smol.tokenizer(real_text, return_tensors="pt", add_special_tokens=False).input_ids[0]
    windows = [ids[3000 + 128 * i: 3128 + 128 * i].unsqueeze(0) for i in range(4)]
    transpoints = parse_transpoints("cycle=0,32,64", smol.model.config.num_hidden_layers)
    stage = _stage(smol.model, transpoints, layers=[0, 7, 15])
    opt = torch.optim.AdamW([p for _, p in stage.trainable_parameters()], lr=1e-2)
    losses = []
    for step in range(20):
        loss, metrics = stage.loss(windows[step % 4])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append((loss.item(), metrics))
    first = sum(loss for loss, _ in losses[:4]) / 4
    last = sum(loss for loss, _ in losses[-4:]) / 4  # the same four windows, 16 steps later
    assert last < 0.5 * first, (first, last)
    for layer in (0, 7, 15):
        assert losses[-4][1][f"hidden_rel/L{layer}"] < losses[0][1][f"hidden_rel/L{layer}"]
