"""Packed documents: every stage gives a packed batch the loss of its documents run one by one."""

from __future__ import annotations

import pytest
import torch

import tm_distill.stages.matrix as matrix_module
from tm_distill.convert import seed_student
from tm_distill.data.tokens import document_positions
from tm_distill.recipe import LossConfig, StageConfig
from tm_distill.models import use_transpoints
from tm_distill.stages import get_stage_class

LENGTHS = (11, 17)  # two documents packed into one 28-token row
TPS = [0, 5, 9]


def _docs(seed=0):
    g = torch.Generator().manual_seed(seed)
    docs = [torch.randint(0, 97, (1, n), generator=g) for n in LENGTHS]
    doc_ids = torch.cat([torch.full((1, n), i) for i, n in enumerate(LENGTHS)], dim=1)
    return docs, torch.cat(docs, dim=1), document_positions(doc_ids)


def _stage(name, teacher, **loss):
    student = seed_student(teacher, TPS, seed=1)
    cfg = StageConfig(name=name, steps=1, trainable="ssm", loss=LossConfig(**loss))
    return get_stage_class(name)(cfg, student, teacher)


def test_document_positions_restart_at_each_document():
    assert document_positions(torch.tensor([[0, 0, 1, 1, 1, 2]])).tolist() == [[0, 1, 0, 1, 2, 0]]


def test_logits_packed_equals_documents_one_by_one(tiny_teacher):
    stage = _stage("logits", tiny_teacher)
    docs, packed, positions = _docs()
    loss, metrics = stage.loss(packed, positions)
    parts = [stage.loss(d) for d in docs]
    counts = [m["positions"] for _, m in parts]
    assert metrics["positions"] == sum(counts)
    expect = sum(l * c for (l, _), c in zip(parts, counts)) / sum(counts)
    torch.testing.assert_close(loss, expect, rtol=1e-5, atol=1e-6)


def test_hidden_packed_equals_documents_one_by_one(tiny_teacher):
    stage = _stage("hidden", tiny_teacher, normalize=False)  # a mean over counted elements: decomposable
    docs, packed, positions = _docs(1)
    loss, metrics = stage.loss(packed, positions)
    counts = [sum(max(n - p, 0) for p in TPS) for n in LENGTHS]
    per_layer = {}
    for d, n in zip(docs, LENGTHS):
        _, m = stage.loss(d)
        assert m["layers"] == 3
    expect = 0.0
    for layer, p in enumerate(TPS):
        num = den = 0.0
        for d, n in zip(docs, LENGTHS):
            acts = stage.teacher_batch(d, [layer])
            l, _ = stage.layer_loss(layer, acts)
            num, den = num + l * max(n - p, 0), den + max(n - p, 0)
        per_layer[layer] = num / den
        expect = expect + per_layer[layer]
    assert sum(counts) > 0
    torch.testing.assert_close(loss, expect, rtol=1e-5, atol=1e-6)


def test_matrix_packed_sums_equal_documents_one_by_one(tiny_teacher, monkeypatch):
    """The packed row's squared errors and target norms are the sums of its documents' (block-diagonal M)."""
    seen = []
    original = matrix_module.frobenius_loss

    def capture(diff_sq, target_sq):
        seen.append((diff_sq.detach().clone(), target_sq.detach().clone()))
        return original(diff_sq, target_sq)

    monkeypatch.setattr(matrix_module, "frobenius_loss", capture)
    stage = _stage("matrix", tiny_teacher)
    docs, packed, positions = _docs(2)
    stage.loss(packed, positions)
    packed_sums = list(seen)
    seen.clear()
    for d in docs:
        stage.loss(d)
    per_doc = [seen[: len(TPS)], seen[len(TPS):]]
    for layer in range(len(TPS)):
        diff = per_doc[0][layer][0] + per_doc[1][layer][0]
        target = per_doc[0][layer][1] + per_doc[1][layer][1]
        torch.testing.assert_close(packed_sums[layer][0], diff, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(packed_sums[layer][1], target, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("tps", [[0, 5, 9], [3, 0, 12]])
def test_cache_free_forward_equals_the_cached_path_with_gradients(tiny_teacher, tps):
    """The one-scan training forward equals the prefix-scan + suffix-scan path (fp32, forward and grads)."""
    from tm_distill.models.cache import TransMambaCache

    student = seed_student(tiny_teacher, tps, seed=3)
    ids = torch.randint(0, 97, (2, 20), generator=torch.Generator().manual_seed(4))
    fast = student(ids).logits
    g_fast = torch.autograd.grad(fast.pow(2).mean(), [student.model.layers[1].mixer.A_log,
                                                      student.model.layers[0].mixer.dt_bias])
    slow = student(ids, cache=TransMambaCache(len(tps)), use_cache=True).logits
    g_slow = torch.autograd.grad(slow.pow(2).mean(), [student.model.layers[1].mixer.A_log,
                                                      student.model.layers[0].mixer.dt_bias])
    torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-5)
    for a, b in zip(g_fast, g_slow):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_hidden_fast_rows_equal_the_mixer_forward_with_gradients(tiny_teacher):
    stage = _stage("hidden", tiny_teacher)
    ids = torch.randint(0, 97, (2, 16), generator=torch.Generator().manual_seed(5))
    acts = stage.teacher_batch(ids, [1])
    hidden, pe = stage.student_inputs(acts, 1)
    mixer = stage.student.model.layers[1].mixer
    fast, _ = stage.layer_loss(1, acts)
    from tm_distill.losses import hidden_loss

    out = mixer(hidden, pe, offset=0, attention_mask=torch.ones(2, 16))  # the padded (general) path
    slow = hidden_loss(out, acts.attn_outputs[1], mask=(torch.arange(16) >= TPS[1]).expand(2, 16))
    torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-6)
    ga = torch.autograd.grad(fast, [mixer.A_log, mixer.dt_proj.weight])
    gb = torch.autograd.grad(slow, [mixer.A_log, mixer.dt_proj.weight])
    for a, b in zip(ga, gb):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_use_transpoints_is_live_for_packed_rows(tiny_teacher):
    stage = _stage("logits", tiny_teacher)
    _, packed, positions = _docs()
    with use_transpoints(stage.student, [12, 12, 12]):  # both documents: 0 or few positions past 12
        _, metrics = stage.loss(packed, positions)
    assert metrics["positions"] == sum(max(n - 12, 0) for n in LENGTHS)
