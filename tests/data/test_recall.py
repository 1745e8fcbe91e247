"""Synthetic recall sequences: exact length, answers where the spans say, seeded, unlike the eval's probes."""

from __future__ import annotations

import pytest

from tm_distill.data.recall import recall_sequence, recall_windows


@pytest.fixture(scope="module")
def tok(smol):
    return smol.tokenizer


@pytest.fixture(scope="module")
def filler(tok, real_text):
    return tok(real_text, add_special_tokens=False)["input_ids"]


def test_sequence_has_exact_length_and_its_answers_are_the_records_codes(tok, filler):
    seq = recall_sequence(tok, filler, 1024, seed=3, records=8, questions=4)
    assert len(seq.input_ids) == 1024 and len(seq.answer_spans) == 4
    text = tok.decode(seq.input_ids)
    for a, b in seq.answer_spans:
        code = tok.decode(seq.input_ids[a:b]).strip()
        assert len(code) == 5 and code[:4].isdigit() and code[4].isalpha()
        before = tok.decode(seq.input_ids[:a])
        item = before.rsplit("Q: the code of record ", 1)[1].split("?")[0]
        assert f"record {item}: {code}" in text  # the record this question asks about, stated earlier
    first_answer = seq.answer_spans[0][0]
    assert text.count("record ") >= 8 + 4 and "pass key" not in text and "phone" not in text
    assert first_answer > 900, "the questions come after the records and the filler"


def test_sequences_are_seeded_and_scale_with_length(tok, filler):
    a = recall_windows(tok, filler, 2048, 3, seed=1)
    assert [s.input_ids for s in a] == [s.input_ids for s in recall_windows(tok, filler, 2048, 3, seed=1)]
    assert a[0].input_ids != recall_windows(tok, filler, 2048, 1, seed=2)[0].input_ids
    assert len(recall_windows(tok, filler, 4096, 1)[0].answer_spans) == 12  # 24 records, 12 questions at 4096


def test_too_short_a_sequence_or_filler_is_a_clear_error(tok, filler):
    with pytest.raises(ValueError, match="records and .* questions need"):
        recall_sequence(tok, filler, 64, seed=0, records=12, questions=6)
    with pytest.raises(ValueError, match="filler text has"):
        recall_sequence(tok, filler[:100], 2048, seed=0)
