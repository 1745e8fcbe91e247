import pytest
import torch

from tm_distill.eval import retrieval
from tm_distill.eval.retrieval import (
    FillerTooShort, RetrievalError, build_samples, build_samples_with_fallback, check_lengths, filler_from_windows,
    is_correct, run_retrieval,
)


@pytest.fixture(scope="module")
def filler(smol, heldout):
    return filler_from_windows(heldout, smol.tokenizer.eos_token_id)


def test_samples_are_deterministic_under_a_seed(smol, filler):
    args = (smol.tokenizer, filler, ["passkey", "phonebook"], [128, 256], [0.0, 0.5, 1.0], 2)
    a, b = build_samples(*args, seed=3), build_samples(*args, seed=3)
    assert [(s.input_ids, s.answer) for s in a] == [(s.input_ids, s.answer) for s in b]
    c = build_samples(*args, seed=4)
    assert [s.answer for s in a] != [s.answer for s in c]
    # a cell does not depend on which other cells were asked for
    alone = build_samples(smol.tokenizer, filler, ["passkey"], [256], [0.5], 2, seed=3)
    same = [s for s in a if s.task == "passkey" and s.length == 256 and s.depth == 0.5]
    assert [s.input_ids for s in alone] == [s.input_ids for s in same]


def test_prompt_lengths_depths_and_answers(smol, filler):
    tok = smol.tokenizer
    samples = build_samples(tok, filler, ["passkey", "phonebook"], [256], [0.0, 0.5, 1.0], 1, seed=0)
    for s in samples:
        text = tok.decode(s.input_ids)
        assert s.answer in text
        if s.task == "passkey":
            assert len(s.input_ids) == 256
            assert text.count(s.answer) == 2  # twice in the needle, never in the question
        else:
            assert 200 < len(s.input_ids) <= 256
            name = text.split("What is the phone number of ", 1)[1].split("?")[0]
            assert f"{name}: {s.answer}" in text
    needles = [s.meta["needle_token"] for s in samples if s.task == "passkey"]
    assert needles == sorted(needles) and needles[0] < 40 and needles[-1] > 200
    targets = [s.meta["target"] for s in samples if s.task == "phonebook"]
    assert targets[0] == 0 and targets[-1] == samples[-1].meta["entries"] - 1


def test_real_filler_text_is_shakespeare(smol, filler):
    (s,) = build_samples(smol.tokenizer, filler, ["passkey"], [512], [0.5], 1, seed=0)
    words = smol.tokenizer.decode(s.input_ids).split()
    assert len(words) > 200 and len(set(words)) > 100  # prose, not a repeated sentence


def test_bad_lengths_and_options_are_clear_errors(smol, filler):
    with pytest.raises(RetrievalError, match="max_position_embeddings=8192"):
        check_lengths([1024, 9000], 8192)
    with pytest.raises(RetrievalError, match="too short"):
        check_lengths([16], 8192)
    with pytest.raises(RetrievalError, match="unknown retrieval task"):
        build_samples(smol.tokenizer, filler, ["needle"], [256], [0.5], 1)
    with pytest.raises(RetrievalError, match=r"\[0, 1\]"):
        build_samples(smol.tokenizer, filler, ["passkey"], [256], [1.5], 1)


def test_is_correct_reads_the_first_number():
    assert is_correct("passkey", "12345", " 12345. Remember")
    assert not is_correct("passkey", "12345", " 1234 or 12345")
    assert is_correct("phonebook", "555-0123", " 555-0123.")
    assert not is_correct("phonebook", "555-0123", " 555-0124, not 555-0123")


def test_real_teacher_finds_the_passkey(smol, filler):
    samples = build_samples(smol.tokenizer, filler, ["passkey"], [256, 512], [0.5], 1, seed=0)
    out = run_retrieval({"teacher": smol.model}, smol.tokenizer, samples, progress=False)
    entry = out["passkey"]["teacher"]
    assert entry["accuracy"] == 1.0, entry["samples"]
    assert [(c["length"], c["depth"], c["n"]) for c in entry["cells"]] == [(256, 0.5, 1), (512, 0.5, 1)]


def test_students_are_reported_not_asserted(smol, smol_students, filler):
    samples = build_samples(smol.tokenizer, filler, ["phonebook"], [128], [0.5], 1, seed=0)
    out = run_retrieval({"mixed": smol_students["mixed"]}, smol.tokenizer, samples, progress=False)
    entry = out["phonebook"]["mixed"]
    assert 0.0 <= entry["accuracy"] <= 1.0 and len(entry["samples"]) == 1
    assert isinstance(entry["samples"][0]["output"], str) and entry["samples"][0]["answer"] == samples[0].answer


def test_filler_drops_document_separators():
    windows = torch.tensor([[5, 6, 0, 7], [8, 0, 9, 10]])
    assert filler_from_windows(windows, 0) == [5, 6, 7, 8, 9, 10]


def test_short_filler_comes_from_the_shipped_corpus_or_the_length_is_skipped(smol, filler, monkeypatch):
    short = filler[:300]  # a small file's held-out text
    with pytest.raises(FillerTooShort, match="a passkey prompt of 512 needs"):
        build_samples(smol.tokenizer, short, ["passkey"], [512], [0.5], 1)
    samples, info = build_samples_with_fallback(smol.tokenizer, short, ["passkey", "phonebook"], [256, 512], [0.5], 1)
    assert info["filler"] == "shakespeare" and not info["skipped"] and info["lengths"] == [256, 512]
    assert {(s.task, s.length) for s in samples} == {("passkey", 256), ("passkey", 512), ("phonebook", 256),
                                                     ("phonebook", 512)}
    monkeypatch.setattr(retrieval, "corpus_filler", lambda *a, **k: [])  # offline, no corpus cached
    samples, info = build_samples_with_fallback(smol.tokenizer, short, ["passkey", "phonebook"], [256, 512], [0.5], 1)
    assert info["filler"] == "data" and list(info["skipped"]) == ["passkey@512"] and info["lengths"] == [256, 512]
    assert {(s.task, s.length) for s in samples} == {("passkey", 256), ("phonebook", 256), ("phonebook", 512)}
