import math

import pytest
import torch
import torch.nn.functional as F

from tests.conftest import tiny_llama
from tm_distill.convert import parse_transpoints, seed_student
from tm_distill.eval.metrics import BUCKETS, PositionStats, bucket_bounds, compare_models, token_metrics
from tm_distill.models.configuration import ATTENTION_ONLY

from tests.eval.conftest import SEQ_LEN


def test_bucket_bounds_follow_min_and_max_finite_transpoint():
    assert bucket_bounds([ATTENTION_ONLY] * 3, 100) == {"before": (0, 100), "between": (100, 100),
                                                        "after": (100, 100)}
    assert bucket_bounds(None, 50)["before"] == (0, 50)
    assert bucket_bounds([16, ATTENTION_ONLY, 64], 100) == {"before": (0, 16), "between": (16, 64), "after": (64, 100)}
    assert bucket_bounds([32, 32], 100) == {"before": (0, 32), "between": (32, 32), "after": (32, 100)}
    # TransPoints past the window clip to it
    assert bucket_bounds([16, 500], 100) == {"before": (0, 16), "between": (16, 100), "after": (100, 100)}


def test_token_metrics_match_torch_kl_argmax_and_cross_entropy():
    g = torch.Generator().manual_seed(0)
    t_logits = torch.randn(2, 9, 31, generator=g)
    s_logits = torch.randn(2, 9, 31, generator=g)
    ids = torch.randint(0, 31, (2, 9), generator=g)
    m = token_metrics(t_logits, s_logits, ids, chunk=4)  # several chunks
    lt, ls = F.log_softmax(t_logits, -1), F.log_softmax(s_logits, -1)
    kl = F.kl_div(ls, lt, log_target=True, reduction="none").sum(-1).sum(0)
    torch.testing.assert_close(m["kl"], kl.double(), rtol=1e-5, atol=1e-6)
    assert torch.equal(m["agree"], (t_logits.argmax(-1) == s_logits.argmax(-1)).sum(0).double())
    ce = F.cross_entropy(s_logits[:, :-1].reshape(-1, 31), ids[:, 1:].reshape(-1), reduction="none").view(2, 8)
    torch.testing.assert_close(m["nll_student"], ce.sum(0).double(), rtol=1e-5, atol=1e-5)
    same = token_metrics(t_logits, t_logits, ids)
    assert same["kl"].abs().max() == 0 and torch.equal(same["agree"], torch.full((9,), 2.0, dtype=torch.float64))


def test_position_stats_perplexity_is_exp_of_mean_nll():
    g = torch.Generator().manual_seed(1)
    t_logits, s_logits = torch.randn(1, 12, 17, generator=g), torch.randn(1, 12, 17, generator=g)
    ids = torch.randint(0, 17, (1, 12), generator=g)
    stats = PositionStats(12)
    stats.add(t_logits, s_logits, ids)
    summary = stats.summary([4, 8])
    ce = F.cross_entropy(s_logits[0, :-1], ids[0, 1:])
    assert summary["perplexity"] == pytest.approx(math.exp(float(ce)), rel=1e-5)
    assert set(summary["by_position"]) == set(BUCKETS)
    assert summary["by_position"]["between"]["positions"] == [4, 8]
    assert sum(b["tokens"] for b in summary["by_position"].values()) == summary["tokens"] == 12
    ce_before = F.cross_entropy(s_logits[0, :4], ids[0, 1:5])
    assert summary["by_position"]["before"]["perplexity"] == pytest.approx(math.exp(float(ce_before)), rel=1e-5)


def test_tiny_students_exact_where_they_attend():
    teacher = tiny_llama(num_kv_heads=2, num_layers=3)
    students = {
        "attn": seed_student(teacher, parse_transpoints("attn", 3)),
        "mixed": seed_student(teacher, [5, 12, ATTENTION_ONLY]),
    }
    ids = torch.randint(0, 97, (3, 20), generator=torch.Generator().manual_seed(0))
    out = compare_models(teacher, students, ids, batch_size=2, progress=False)
    assert out["attn"]["kl_to_teacher"] < 1e-6 and out["attn"]["top1_agreement"] == 1.0
    before = out["mixed"]["by_position"]["before"]
    assert before["positions"] == [0, 5] and before["kl_to_teacher"] < 1e-6 and before["top1_agreement"] == 1.0
    assert out["mixed"]["by_position"]["after"]["kl_to_teacher"] > 1e-4
    err = out["mixed"]["layer_error"]
    assert err[2] is None and err[0] > 0 and err[1] > 0


def test_real_teacher_against_itself_kl_zero_agreement_one(smol_comparison):
    for name in ("teacher", "self"):
        m = smol_comparison[name]
        assert m["kl_to_teacher"] == 0.0 and m["top1_agreement"] == 1.0
        assert m["perplexity"] == pytest.approx(smol_comparison["teacher"]["perplexity"])
    assert 1.0 < smol_comparison["teacher"]["perplexity"] < 1000  # real text, a real model


def test_real_all_attention_student_matches_teacher(smol_comparison):
    m = smol_comparison["attn"]
    assert m["kl_to_teacher"] < 1e-6 and m["top1_agreement"] == 1.0
    assert m["perplexity"] == pytest.approx(smol_comparison["teacher"]["perplexity"], rel=1e-5)
    assert m["by_position"]["before"]["tokens"] == SEQ_LEN and m["by_position"]["after"]["tokens"] == 0
    assert all(e is None for e in m["layer_error"])  # no layer has an SSM position


def test_real_mixed_student_exact_before_min_transpoint(smol_comparison, smol_students):
    m = smol_comparison["mixed"]
    tps = smol_students["mixed"].config.transpoints
    before, between, after = (m["by_position"][b] for b in BUCKETS)
    assert before["positions"] == [0, min(tps)] and after["positions"][0] == 96
    assert before["top1_agreement"] == 1.0 and before["kl_to_teacher"] < 1e-6
    assert before["perplexity"] == pytest.approx(before["teacher_perplexity"], rel=1e-4)
    assert between["kl_to_teacher"] > before["kl_to_teacher"] and after["tokens"] == SEQ_LEN - 96
    curve = m["by_token"]["kl_to_teacher"]
    assert len(curve) == SEQ_LEN and max(curve[: min(tps)]) < 1e-6
    errors = m["layer_error"]
    for i, p in enumerate(tps):
        assert (errors[i] is None) == (p >= SEQ_LEN)
        if errors[i] is not None:
            assert math.isfinite(errors[i]) and errors[i] > 0
