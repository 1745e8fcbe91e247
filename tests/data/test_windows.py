"""data.windows: one way from text to token windows, and no held-out window reaching calibration or planning."""

from __future__ import annotations

import torch

from tests.data.test_tokens import TOK, _doc_of, _docs
from tm_distill.data.tokens import build_token_dataset, cap_windows
from tm_distill.data.windows import Documents, load_documents, spread


class CountingTokenizer(type(TOK)):
    calls = 0

    def __call__(self, texts, add_special_tokens=False):
        CountingTokenizer.calls += 1
        return super().__call__(texts, add_special_tokens)


def _docs_of(rows: torch.Tensor) -> set[int]:
    return {_doc_of(t) for t in rows.unique().tolist() if t != 0}


def _split(tmp_path, monkeypatch, n=20):
    """Documents of one character each (doc i is 'a'+i repeated), 20% held out; the held-out documents' ids."""
    monkeypatch.setenv("TM_DISTILL_CACHE", str(tmp_path))
    docs = Documents(_docs(n, length=lambda i: 40 + i), TOK, 0.2, 3)
    return docs, _docs_of(docs.windows(8).heldout)


def test_documents_build_each_length_once_as_build_token_dataset_does(tmp_path, monkeypatch):
    monkeypatch.setenv("TM_DISTILL_CACHE", str(tmp_path))
    tok = CountingTokenizer()
    docs = Documents(_docs(20), tok, 0.2, 3)
    data = docs.windows(8)
    assert docs.windows(8) is data and CountingTokenizer.calls == 1  # built once, then shared
    same = build_token_dataset(_docs(20), TOK, 8, heldout_fraction=0.2, seed=3, cache_dir=tmp_path / "other")
    assert torch.equal(data.train, same.train) and torch.equal(data.heldout, same.heldout)
    assert torch.equal(data.train_doc_ids, same.train_doc_ids)
    assert sorted(docs.training_texts(8)) == sorted(_docs(20)[i] for i in _docs_of(data.train))


def test_capped_windows_are_build_token_datasets_and_share_its_cache(tmp_path):
    docs = _docs(10)
    capped = build_token_dataset(docs, TOK, 8, heldout_fraction=0.1, max_tokens=20, cache_dir=tmp_path)
    full = build_token_dataset(docs, TOK, 8, heldout_fraction=0.1, cache_dir=tmp_path)
    assert full.meta["from_cache"] and len(list(tmp_path.glob("*.pt"))) == 1  # one entry serves both
    again = cap_windows(full, 20)
    assert torch.equal(again.train, capped.train) and again.train.shape == (2, 8)
    assert {k: v for k, v in again.meta.items() if k != "from_cache"} == \
        {k: v for k, v in capped.meta.items() if k != "from_cache"}
    assert again.meta["dropped_tokens"] == full.meta["dropped_tokens"] + (full.train.shape[0] - 2) * 8
    again.train = again.train[:1]  # a copy: the shared windows stay whole
    assert full.train.shape[0] > 2 and cap_windows(full, None).train.shape == full.train.shape


def test_one_document_is_left_whole_only_when_asked(tmp_path, monkeypatch):
    monkeypatch.setenv("TM_DISTILL_CACHE", str(tmp_path))
    (tmp_path / "one.txt").write_text("short text, one document")
    (tmp_path / "two").mkdir()
    for i in range(2):
        (tmp_path / "two" / f"{i}.txt").write_text(f"document {i}")
    assert load_documents(str(tmp_path / "one.txt"), TOK, whole_if_one=True).heldout_fraction == 0.0
    assert load_documents(str(tmp_path / "one.txt"), TOK).heldout_fraction == 0.05
    two = load_documents(str(tmp_path / "two"), TOK, heldout_fraction=0.3, seed=1, whole_if_one=True)
    assert (two.heldout_fraction, two.seed, len(two.texts), two.source) == (0.3, 1, 2, str(tmp_path / "two"))


def test_spread_takes_first_to_last_evenly():
    rows = torch.arange(10)[:, None]
    assert spread(rows, 3)[:, 0].tolist() == [0, 4, 9] and spread(rows, 30).shape[0] == 10


def test_calibration_and_planning_windows_come_from_training_documents_only(tmp_path, monkeypatch):
    """Each document is one character, so a window's tokens name its documents: none of the held-out ones may
    reach calibration's fit or `auto:` planning (both sensitivity and importance windows)."""
    from tm_distill.convert.calibrate import calibration_windows as calibration
    from tm_distill.plan import _documents
    from tm_distill.plan import calibration_windows as planning

    docs, held = _split(tmp_path, monkeypatch)
    assert len(held) == 4
    fit, scored = calibration(docs, None, 8, 50, 3)
    assert fit.shape == (50, 8) and not _docs_of(fit) & held
    assert _docs_of(scored) <= held  # the windows calibration is scored on, never fitted on
    ids = planning(docs, None, 8, 50)
    assert ids.shape == (50, 8) and not _docs_of(ids) & held
    assert not _docs_of(_documents(docs, None).windows(16).train) & held  # method=importance's windows
    everything = planning(docs.texts, TOK, 8, 10_000)  # plain documents: all of them may be used
    assert _docs_of(everything) >= held
