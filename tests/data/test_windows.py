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


def test_capped_windows_are_build_token_datasets_and_the_cache_keeps_only_them(tmp_path, monkeypatch):
    """Capped documents (a run's data.max_tokens) give build_token_dataset's capped windows, the first windows of the
    uncapped build; the cache keeps those alone, and the uncapped windows they are cut from stay in memory."""
    monkeypatch.setenv("TM_DISTILL_CACHE", str(tmp_path / "home"))
    cache = tmp_path / "home" / "tokens"
    docs = Documents(_docs(10), TOK, 0.1, 0, max_tokens=20)
    capped = docs.dataset(8)
    (entry,) = cache.glob("*.pt")  # one entry: the capped windows, tokenized once with the uncapped ones
    assert torch.load(entry, weights_only=True)["train"].shape == (2, 8) and not capped.meta["from_cache"]
    full = docs.windows(8)
    assert full.train.shape[0] > 2 and list(cache.glob("*.pt")) == [entry]  # in memory only
    same = build_token_dataset(_docs(10), TOK, 8, heldout_fraction=0.1, max_tokens=20, cache_dir=cache)
    assert same.meta["from_cache"] and torch.equal(same.train, capped.train) and len(list(cache.glob("*.pt"))) == 1
    assert {k: v for k, v in same.meta.items() if k != "from_cache"} == \
        {k: v for k, v in capped.meta.items() if k != "from_cache"}
    fresh = build_token_dataset(_docs(10), TOK, 8, heldout_fraction=0.1, max_tokens=20, cache_dir=tmp_path / "b")
    again = cap_windows(full, 20)
    assert torch.equal(again.train, capped.train) and again.train.shape == (2, 8)
    assert torch.equal(again.train, fresh.train) and torch.equal(again.heldout, fresh.heldout)
    assert {k: v for k, v in again.meta.items() if k not in ("from_cache", "cache_key")} == \
        {k: v for k, v in fresh.meta.items() if k not in ("from_cache", "cache_key")}
    assert again.meta["dropped_tokens"] == full.meta["dropped_tokens"] + (full.train.shape[0] - 2) * 8
    assert again.train.untyped_storage().nbytes() == 2 * 8 * 8  # a copy, not a view of every window
    again.train = again.train[:1]  # a new TokenData: the shared windows stay whole
    assert full.train.shape[0] > 2 and cap_windows(full, None).train.shape == full.train.shape


def test_uncapped_documents_cache_their_windows_as_build_token_dataset_does(tmp_path, monkeypatch):
    monkeypatch.setenv("TM_DISTILL_CACHE", str(tmp_path))
    docs = Documents(_docs(10), TOK, 0.1, 0)
    data = docs.dataset(8)
    assert data is not docs.windows(8) and torch.equal(data.train, docs.windows(8).train)
    same = build_token_dataset(_docs(10), TOK, 8, heldout_fraction=0.1, cache_dir=tmp_path / "tokens")
    assert same.meta["from_cache"] and torch.equal(same.train, data.train)


def test_the_training_documents_hold_no_heldout_one_and_keep_the_cap(tmp_path, monkeypatch):
    """`auto:` planning's Documents: the training documents at the run's seq_len, none held out, at any window
    length; capped, their windows stay in memory (the cache keeps only the capped dataset)."""
    docs, held = _split(tmp_path, monkeypatch)
    capped = Documents(docs.texts, TOK, 0.2, 3, max_tokens=16)
    for source in (docs, capped):
        train = source.training(8)
        assert (train.heldout_fraction, train.max_tokens) == (0.0, source.max_tokens)
        assert sorted(train.texts) == sorted(docs.training_texts(8))
        assert not _docs_of(train.windows(6).train) & held and _docs_of(train.windows(6).train)
    before = sorted((tmp_path / "tokens").glob("*.pt"))
    assert capped.training(8).windows(12).train.shape[0] > 2 and sorted((tmp_path / "tokens").glob("*.pt")) == before


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
