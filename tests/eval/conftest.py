"""Fixtures of the eval tests: held-out Shakespeare windows for the real teacher, and one shared comparison."""

from __future__ import annotations

import pytest

from tm_distill.convert import parse_transpoints, seed_student

SEQ_LEN = 128
MIXED = "cycle=24,48,attn,96"  # min P = 24, max finite P = 96


@pytest.fixture(scope="session")
def heldout(smol):
    """Held-out windows (n, 128) of the shipped Shakespeare corpus, tokenized by the real teacher."""
    from tm_distill.eval.api import EvalOptions, load_heldout

    windows, split = load_heldout("shakespeare", smol.tokenizer, EvalOptions(seq_len=SEQ_LEN, windows=1))
    assert split == "held-out"
    return windows


@pytest.fixture(scope="session")
def smol_students(smol):
    n = smol.model.config.num_hidden_layers
    return {
        "attn": seed_student(smol.model, parse_transpoints("attn", n)),
        "mixed": seed_student(smol.model, parse_transpoints(MIXED, n), transpoint_spec=MIXED),
    }


@pytest.fixture(scope="session")
def smol_comparison(smol, smol_students, heldout):
    """compare_models on one real held-out window: the teacher itself, an all-attention and a mixed student."""
    from tm_distill.eval.metrics import compare_models

    students = {"self": smol.model, **smol_students}
    return compare_models(smol.model, students, heldout[:1], progress=False)
