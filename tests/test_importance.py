"""auto:...,method=importance: the knapsack choice, a reproducible plan on a tiny teacher, the spec keys, and
planning inside a run that reads training documents only."""

from __future__ import annotations

import itertools

import pytest
import torch

from tests.training.conftest import tiny_smol_teacher
from tm_distill.data.tokens import build_token_dataset
from tm_distill.importance import choose, plan_by_importance
from tm_distill.models.configuration import ATTENTION_ONLY as ATTN
from tm_distill.plan import AutoSpecError, parse_auto_spec


def _brute_force(gains, points, context, budget):
    best = None
    for combo in itertools.product([None, *range(len(points))], repeat=gains.shape[0]):
        kv = sum(0 if c is None else min(points[c], context) for c in combo)
        if kv > budget * gains.shape[0] * context or (len(set(combo)) == 1 and combo[0] != len(points) - 1):
            continue  # over the budget, or one TransPoint for every layer (all attention aside)
        value = sum(0.0 if c is None else float(gains[i, c]) for i, c in enumerate(combo))
        if best is None or value > best[0] + 1e-12:
            best = (value, combo)
    return best[0]


@pytest.mark.parametrize("seed", range(5))
def test_choice_is_the_best_sum_of_gains_within_the_budget(seed):
    g = torch.Generator().manual_seed(seed)
    gains, points = torch.rand(4, 3, generator=g), [128, 512, ATTN]
    chosen = choose(gains, points, 1024, 0.3)
    kv = sum(min(p, 1024) for p in chosen)
    assert kv <= 0.3 * 4 * 1024
    value = sum(float(gains[i, points.index(p)]) for i, p in enumerate(chosen) if p)
    assert value == pytest.approx(_brute_force(gains, points, 1024, 0.3))


def test_a_layer_worth_more_keeps_attention_and_one_schedule_for_all_is_refused():
    gains = torch.tensor([[0.01, 0.02, 0.5], [0.01, 0.02, 0.1], [0.05, 0.06, 0.07], [0.0, 0.0, 0.0]])
    assert choose(gains, [128, 512, ATTN], 1024, 0.25) == [ATTN, 0, 0, 0]
    assert choose(torch.zeros(3, 2), [64, ATTN], 1024, 0.5) in ([64, 0, 0], [0, 64, 0], [0, 0, 64])
    with pytest.raises(AutoSpecError, match="allows no schedule but one TransPoint"):
        choose(torch.ones(3, 2), [64, ATTN], 1024, 0.01)


def test_spec_takes_the_method_and_recall_weight():
    auto = parse_auto_spec("auto:kv_budget=20%,context=4096,method=importance,recall=2")
    assert (auto.method, auto.recall, auto.context, auto.kv_budget) == ("importance", 2.0, 4096, 0.2)
    assert parse_auto_spec("auto:kv_budget=25%").method == "sensitivity"
    with pytest.raises(AutoSpecError, match="method='best' .* is unknown"):
        parse_auto_spec("auto:kv_budget=25%,method=best")
    with pytest.raises(AutoSpecError, match="add method=importance"):
        parse_auto_spec("auto:kv_budget=25%,recall=1")


@pytest.fixture(scope="module")
def windows(smol, real_text):
    return build_token_dataset([real_text[i:i + 6000] for i in range(0, 36000, 6000)], smol.tokenizer, 128,
                               heldout_fraction=0.0).train[:6]


def test_plan_is_reproducible_from_its_seed_and_explains_itself(smol, windows):
    teacher = tiny_smol_teacher(smol.tokenizer)
    kw = dict(seed=3, train_steps=2, train_seconds=None, recall_sequences=2, kl_windows=2, progress=False)
    a = plan_by_importance(teacher, windows, 1024, 0.25, **kw)
    b = plan_by_importance(teacher, windows, 1024, 0.25, **kw)
    assert a.transpoints == b.transpoints and torch.equal(a.kl, b.kl) and torch.equal(a.recall, b.recall)
    assert a.kl.shape == (2, 6) and a.candidates[-1] == ATTN and a.training["steps"] == 2
    assert sum(min(p, 1024) for p in a.transpoints) <= 0.25 * 2 * 1024
    text = a.explain()
    assert "by KL drop" in text and "by recall drop" in text and text.splitlines()[-1] == a.spec
