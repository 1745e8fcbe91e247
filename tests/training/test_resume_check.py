"""Which recipe changes `--resume` accepts, by where the run stands (no model needed)."""

from __future__ import annotations

import pytest
import torch

from tm_distill.recipe import recipe_from_dict
from tm_distill.training.resume_check import apply_peak_lr, classify, flatten

RAW = {"teacher": "smollm2-135m", "stages": [{"name": "matrix", "steps": 4}, {"name": "hidden", "steps": 4},
                                              {"name": "logits", "steps": 8}]}


def _keys(changes):
    return [c.key for c in changes]


def test_flatten_names_stage_keys_by_index():
    flat = flatten(recipe_from_dict(RAW).to_dict())
    assert flat["stages[2].optimizer.lr"] == 1e-3 and flat["data.seq_len"] == 256 and flat["stages[0].name"] == "matrix"


@pytest.mark.parametrize("override, stage, step, allowed", [
    ("device=cpu", 0, 0, True),  # bookkeeping anywhere
    ("output_dir=runs/moved", 2, 5, True),  # the run's folder moved: it continues where it is
    ("stages.0.keep_last=3", 3, 0, True),
    ("stages.2.steps=20", 1, 2, True),  # the logits stage has not started
    ("stages.1.lr=1e-4", 1, 2, True),  # the stage in progress: lr and precision (recovery)
    ("stages.1.precision=bf16", 1, 2, True),
    ("stages.1.steps=8", 1, 2, False),  # in progress but not the last stage
    ("stages.2.steps=20", 2, 5, True),  # the last stage, in progress, longer
    ("stages.2.tokens=1000000", 2, 5, True),
    ("stages.2.steps=6", 2, 5, False),  # shorter
    ("stages.2.steps=20", 3, 0, False),  # finished
    ("stages.0.lr=1e-4", 1, 0, False),  # a finished stage
    ("stages.1.batch_size=4", 1, 2, False),
    ("seed=1", 0, 0, False),  # the seeded KL and the data order depend on it
    ("data.source=other.txt", 2, 0, False),
    ("transpoints=all=64", 0, 0, False),
])
def test_classify(override, stage, step, allowed):
    got_allowed, got_refused = classify(recipe_from_dict(RAW), recipe_from_dict(RAW, [override]), stage, step)
    assert len(got_allowed) + len(got_refused) >= 1
    assert (not got_refused) == allowed, (got_allowed, got_refused)


def test_a_changed_stage_list_is_refused():
    raw = dict(RAW, stages=RAW["stages"][:2])
    allowed, refused = classify(recipe_from_dict(RAW), recipe_from_dict(raw), 0, 0)
    assert _keys(refused) == ["stages"] and not allowed


def test_apply_peak_lr_uses_the_new_peak_and_the_schedule_factor():
    p = torch.nn.Parameter(torch.zeros(2))
    opt = torch.optim.AdamW([p], lr=1.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (s + 1))
    for _ in range(3):
        opt.step()
        sched.step()
    state_o, state_s = opt.state_dict(), sched.state_dict()
    opt2 = torch.optim.AdamW([p], lr=0.5)
    sched2 = torch.optim.lr_scheduler.LambdaLR(opt2, lambda s: 1.0 / (s + 1))
    opt2.load_state_dict(state_o)
    sched2.load_state_dict(state_s)
    assert opt2.param_groups[0]["lr"] == pytest.approx(0.25)  # the old peak survives a plain load
    apply_peak_lr(opt2, sched2, 0.5)
    assert opt2.param_groups[0]["lr"] == pytest.approx(0.125)
    sched2.step()
    assert opt2.param_groups[0]["lr"] == pytest.approx(0.1)
