"""The matrix stage: SSM mixing matrix vs teacher attention, rows >= P, layer-parallel, head-chunked."""

from __future__ import annotations

import pytest
import torch

from tm_distill.convert import parse_transpoints, seed_student
from tm_distill.models.mixer import SSM_PARAM_PATTERN
from tm_distill.losses import matrix_loss
from tm_distill.models.configuration import ATTENTION_ONLY
from tm_distill.recipe import LossConfig, StageConfig
from tm_distill.models import use_transpoints
from tm_distill.stages import get_stage_class
from tm_distill.models.capture import capture_teacher, ssm_mixing_matrix, teacher_attention_matrix
from tm_distill.stages.matrix import MatrixStage


def _stage(teacher, transpoints, layers=None, trainable="ssm", seed=0):
    student = seed_student(teacher, transpoints, seed=seed)
    cfg = StageConfig(name="matrix", steps=10, trainable=trainable, loss=LossConfig(layers=layers))
    return MatrixStage(cfg, student, teacher)


def test_registry_finds_the_stage():
    assert get_stage_class("matrix") is MatrixStage


def test_loss_matches_matrix_loss_on_rows_after_transpoint(tiny_teacher):
    stage = _stage(tiny_teacher, [0, 5, ATTENTION_ONLY])
    ids = torch.randint(0, 97, (2, 20), generator=torch.Generator().manual_seed(0))
    loss, metrics = stage.loss(ids)
    assert metrics["layers"] == 2 and set(metrics) >= {"matrix_rel/L0", "matrix_rel/L1", "matrix_rel"}
    acts = capture_teacher(tiny_teacher, ids, [0, 1])
    expect, rels = 0.0, {}
    for layer, P in ((0, 0), (1, 5)):
        pe = stage.student.model.rotary_emb(acts.attn_inputs[layer], torch.arange(20)[None])
        S = ssm_mixing_matrix(stage.student.model.layers[layer].mixer, acts.attn_inputs[layer], pe)
        T = teacher_attention_matrix(tiny_teacher.model.layers[layer].self_attn, acts.attn_inputs[layer],
                                     acts.position_embeddings)
        value, rel = matrix_loss(S, T, torch.arange(20) >= P)
        expect, rels[layer] = expect + value, rel
    torch.testing.assert_close(loss, expect)
    assert metrics["matrix_rel/L1"] == pytest.approx(float(rels[1]), rel=1e-5)


def test_head_chunks_give_the_same_loss_and_gradients(tiny_teacher):
    ids = torch.randint(0, 97, (2, 24), generator=torch.Generator().manual_seed(1))
    grads = []
    for max_bytes in (2**30, 1):  # one chunk / one head per chunk (checkpointed)
        stage = _stage(tiny_teacher, [3, 0, 7])
        stage.max_matrix_bytes = max_bytes
        params = stage.trainable_parameters()
        loss, metrics = stage.loss(ids)
        loss.backward()
        grads.append((loss.detach(), metrics["matrix_rel"], [torch.zeros_like(p) if p.grad is None else p.grad.clone() for _, p in params]))
    torch.testing.assert_close(grads[0][0], grads[1][0])
    assert grads[0][1] == pytest.approx(grads[1][1], rel=1e-5)
    assert any(g.abs().sum() > 0 for g in grads[0][2])
    for a, b in zip(grads[0][2], grads[1][2]):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_trainable_sets_and_layer_selection(tiny_teacher):
    stage = _stage(tiny_teacher, [0, 0, 0], layers=[1])
    names = [n for n, _ in stage.trainable_parameters()]
    assert names and all(SSM_PARAM_PATTERN.search(n) and n.startswith("model.layers.1.") for n in names)
    assert not any(p.requires_grad for n, p in stage.student.named_parameters() if n not in names)
    mixer_stage = _stage(tiny_teacher, [0, 0, 0], trainable="mixer")
    names = {n for n, _ in mixer_stage.trainable_parameters()}
    assert "model.layers.2.mixer.q_proj.weight" in names and "model.layers.0.mixer.A_log" in names
    assert not any(".mlp." in n for n in names)


def test_bad_layer_and_no_ssm_layer(tiny_teacher):
    with pytest.raises(ValueError, match="layer index 5 is out of range"):
        _stage(tiny_teacher, [0, 0, 0], layers=[0, 5])
    stage = _stage(tiny_teacher, [ATTENTION_ONLY, 30, 8], layers=[0, 1])
    loss, metrics = stage.loss(torch.randint(0, 97, (1, 16)))
    assert float(loss.detach()) == 0.0 and metrics["layers"] == 0
    loss.backward()  # the loop can still step


def test_transpoints_are_read_live(tiny_teacher):
    stage = _stage(tiny_teacher, [ATTENTION_ONLY] * 3)
    ids = torch.randint(0, 97, (1, 16))
    with use_transpoints(stage.student, [4, ATTENTION_ONLY, 0]):
        _, metrics = stage.loss(ids)
    assert metrics["layers"] == 2 and "matrix_rel/L2" in metrics and "matrix_rel/L1" not in metrics


def test_layers_train_independently(tiny_teacher):
    """Layer 0's loss term reaches only layer 0's parameters: no backprop through the model."""
    stage = _stage(tiny_teacher, [0, 0, 0], layers=[0, 1, 2])
    params = dict(stage.trainable_parameters())
    acts = capture_teacher(tiny_teacher, torch.randint(0, 97, (1, 12)), [0, 1, 2])
    loss, _ = stage.layer_loss(0, acts)
    loss.backward()
    for name, p in params.items():  # D (the skip term) is not part of the mixing matrix
        assert (p.grad is not None) == (name.startswith("model.layers.0.") and not name.endswith(".D")), name


def _train(stage, windows, steps, lr):
    opt = torch.optim.AdamW([p for _, p in stage.trainable_parameters()], lr=lr)
    losses = []
    for step in range(steps):
        loss, metrics = stage.loss(windows[step % len(windows)])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append((loss.item(), metrics))
    return losses


def test_matrix_loss_goes_down_on_real_teacher(smol, real_text):
    """SmolLM2-135M, Shakespeare, seq_len 128, layers 0/7/15 at P = 0/32/0: 20 AdamW steps on the SSM params."""
    ids = smol.tokenizer(real_text, return_tensors="pt", add_special_tokens=False).input_ids[0]
    windows = [ids[2000 + 128 * i: 2128 + 128 * i].unsqueeze(0) for i in range(4)]
    transpoints = parse_transpoints("cycle=0,32,64", smol.model.config.num_hidden_layers)
    stage = _stage(smol.model, transpoints, layers=[0, 7, 15])
    losses = _train(stage, windows, steps=20, lr=1e-2)
    first = sum(loss for loss, _ in losses[:4]) / 4
    last = sum(loss for loss, _ in losses[-4:]) / 4  # the same four windows, 16 steps later
    assert last < 0.8 * first, (first, last)
    assert losses[-4][1]["matrix_rel"] < losses[0][1]["matrix_rel"]
    assert all(torch.isfinite(torch.tensor(loss)) for loss, _ in losses)
