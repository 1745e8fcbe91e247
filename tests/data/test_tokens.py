"""build_token_dataset (document split, packing, doc ids, cache) and iterate_batches (seeded epochs, resume)."""

from __future__ import annotations

import itertools

import pytest
import torch

from tm_distill.data.tokens import TokenData, build_token_dataset, iterate_batches


class CharTokenizer:
    """One token per character (id = code point), EOS = 0: makes every layout checkable by hand."""

    name_or_path = "char-test"
    eos_token_id = 0

    def __len__(self):
        return 256

    def __call__(self, texts, add_special_tokens=False):
        return {"input_ids": [[ord(c) for c in t] for t in texts]}


TOK = CharTokenizer()


def _docs(n=10, length=lambda i: 5 + 3 * i):
    return [chr(ord("a") + i) * length(i) for i in range(n)]


def _doc_of(token: int) -> int:
    return token - ord("a")


def test_document_split_is_disjoint_and_seeded(tmp_path):
    docs = _docs(20)
    data = build_token_dataset(docs, TOK, 8, heldout_fraction=0.2, seed=3, cache_dir=tmp_path)
    train_docs = {_doc_of(t) for t in data.train.unique().tolist() if t != 0}
    held_docs = {_doc_of(t) for t in data.heldout.unique().tolist() if t != 0}
    assert len(held_docs) == 4 and data.meta["heldout_documents"] == 4 and data.meta["train_documents"] == 16
    assert not train_docs & held_docs  # a held-out document never appears in train
    again = build_token_dataset(docs, TOK, 8, heldout_fraction=0.2, seed=3, cache_dir=tmp_path / "other")
    assert torch.equal(again.train, data.train) and torch.equal(again.heldout, data.heldout)
    other = build_token_dataset(docs, TOK, 8, heldout_fraction=0.2, seed=4, cache_dir=tmp_path)
    assert {_doc_of(t) for t in other.heldout.unique().tolist() if t != 0} != held_docs


def test_packing_separates_documents_with_eos_and_gives_doc_ids(tmp_path):
    docs = ["aaa", "bbbbb", "cc", "dddddddd"]
    data = build_token_dataset(docs, TOK, 4, heldout_fraction=0.0, cache_dir=tmp_path)
    stream = "aaa\0bbbbb\0cc\0dddddddd\0"  # 22 tokens -> 5 windows of 4, 2 dropped
    expected = torch.tensor([ord(c) for c in stream[:20]]).view(5, 4)
    assert torch.equal(data.train, expected)
    assert data.heldout.shape == (0, 4) and data.meta["dropped_tokens"] == 2
    # doc ids: index of the document inside each window, restarting at 0 per window (mamba's seq_idx layout)
    assert data.train_doc_ids.tolist() == [[0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 1, 1], [0, 1, 1, 1], [0, 0, 0, 0]]
    assert data.train_doc_ids.dtype == torch.int32
    three = build_token_dataset(["a", "b", "cc"], TOK, 6, heldout_fraction=0.0, cache_dir=tmp_path)
    assert three.train_doc_ids.tolist() == [[0, 0, 1, 1, 2, 2]]
    # the token right before every doc-id increase is the EOS that ended the previous document
    inc = data.train_doc_ids[:, 1:] != data.train_doc_ids[:, :-1]
    assert torch.all(data.train[:, :-1][inc] == 0)


def test_without_packing_windows_never_cross_documents(tmp_path):
    docs = ["aaa", "bbbbbbbbbbb", "cccccccc"]  # +EOS: 4, 12, 9 tokens
    data = build_token_dataset(docs, TOK, 4, heldout_fraction=0.0, pack=False, cache_dir=tmp_path)
    rows = ["".join(chr(t) for t in r) for r in data.train.tolist()]
    assert rows == ["aaa\0", "bbbb", "bbbb", "bbb\0", "cccc", "cccc"]  # c's tail "\0" is dropped
    assert torch.all(data.train_doc_ids == 0) and data.meta["dropped_tokens"] == 1


def test_max_tokens_caps_training_windows(tmp_path):
    data = build_token_dataset(_docs(10), TOK, 8, heldout_fraction=0.1, max_tokens=20, cache_dir=tmp_path)
    assert data.train.shape == (2, 8) and data.meta["train_tokens"] == 16
    assert data.heldout.shape[0] >= 1


def test_cache_is_reused_and_keyed_on_parameters(tmp_path):
    docs = _docs(12)
    first = build_token_dataset(docs, TOK, 8, cache_dir=tmp_path)
    assert not first.meta["from_cache"] and len(list(tmp_path.glob("*.pt"))) == 1
    second = build_token_dataset(docs, TOK, 8, cache_dir=tmp_path)
    assert second.meta["from_cache"] and second.meta["cache_key"] == first.meta["cache_key"]
    for a, b in [(first.train, second.train), (first.heldout, second.heldout),
                 (first.train_doc_ids, second.train_doc_ids)]:
        assert torch.equal(a, b)
    build_token_dataset(docs, TOK, 6, cache_dir=tmp_path)  # other seq_len: a new entry
    build_token_dataset(docs[:-1] + ["changed"], TOK, 8, cache_dir=tmp_path)  # other texts: a new entry
    assert len(list(tmp_path.glob("*.pt"))) == 3
    (tmp_path / f"{first.meta['cache_key']}.pt").write_bytes(b"garbage")  # corrupt: rebuilt, not crashed
    rebuilt = build_token_dataset(docs, TOK, 8, cache_dir=tmp_path)
    assert not rebuilt.meta["from_cache"] and torch.equal(rebuilt.train, first.train)
    assert not list(tmp_path.glob("*.tmp"))


def test_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="leaves none for training"):
        build_token_dataset(["one long document"], TOK, 4, cache_dir=tmp_path)
    with pytest.raises(ValueError, match="no full window of seq_len=64"):
        build_token_dataset(_docs(3), TOK, 64, heldout_fraction=0.0, cache_dir=tmp_path)
    with pytest.raises(ValueError, match="held-out"):
        build_token_dataset(["a" * 200] + ["b"] * 19, TOK, 64, heldout_fraction=0.05, seed=0, cache_dir=tmp_path)
    with pytest.raises(ValueError, match="heldout_fraction=1.0"):
        build_token_dataset(_docs(3), TOK, 4, heldout_fraction=1.0, cache_dir=tmp_path)
    with pytest.raises(TypeError, match="not one string"):
        build_token_dataset("just a string", TOK, 4, cache_dir=tmp_path)


def test_short_documents_hold_out_enough_for_one_window(tmp_path):
    """A split single file gives short documents: the held-out share grows to one full window, no error."""
    docs = [chr(ord("a") + i) * 20 for i in range(12)]  # 21 tokens each with EOS
    data = build_token_dataset(docs, TOK, 64, heldout_fraction=0.05, seed=0, cache_dir=tmp_path)
    assert data.heldout.shape[0] >= 1 and data.meta["heldout_documents"] == 4  # 4 x 21 >= 64 > 3 x 21
    held = {_doc_of(int(t)) for t in data.heldout.reshape(-1) if t != 0}
    train = {_doc_of(int(t)) for t in data.train.reshape(-1) if t != 0}
    assert held and not held & train


def test_real_tokenizer_on_shakespeare(smol, shakespeare_files, tmp_path):
    from tm_distill.data.loading import load_texts

    tok = smol.tokenizer
    docs = load_texts("shakespeare", limit=6)
    data = build_token_dataset(docs, tok, 256, heldout_fraction=0.2, seed=0, cache_dir=tmp_path)
    assert isinstance(data, TokenData) and data.seq_len == 256
    assert data.meta["heldout_documents"] == 1 and data.meta["train_documents"] == 5
    assert data.train.dtype == torch.long and int(data.train.max()) < len(tok)
    # windows are contiguous slices of the documents: decoding a run of windows gives back real text
    text = tok.decode(data.train[:4].reshape(-1).tolist())
    assert text in "".join(d + tok.eos_token for d in docs)
    # one EOS per training document ends it (the final partial window may drop the last one)
    assert int((data.train == tok.eos_token_id).sum()) in (4, 5)
    held_text = tok.decode(data.heldout[0].tolist())
    held_doc = [d for d in docs if held_text in d]
    assert len(held_doc) == 1 and not any(held_text in tok.decode(r.tolist()) for r in data.train)
    total = sum(len(tok(d, add_special_tokens=False)["input_ids"]) + 1 for d in docs)
    assert data.meta["train_tokens"] + data.meta["heldout_tokens"] + data.meta["dropped_tokens"] == total
    cached = build_token_dataset(docs, tok, 256, heldout_fraction=0.2, seed=0, cache_dir=tmp_path)
    assert cached.meta["from_cache"] and torch.equal(cached.train, data.train)


def _rows(batch):
    return batch[:, 0].tolist()


def test_iterate_batches_covers_each_epoch_once_and_is_seeded():
    tokens = torch.arange(10).repeat_interleave(3).view(10, 3)  # row i is [i, i, i]
    batches = list(iterate_batches(tokens, 4, seed=1, num_steps=6))
    assert [s for s, _ in batches] == list(range(6))
    assert all(b.shape == (4, 3) for _, b in batches)
    for epoch in range(3):  # 2 full batches per epoch (drop_last), no repeats inside an epoch
        seen = sum((_rows(b) for _, b in batches[2 * epoch: 2 * epoch + 2]), [])
        assert len(set(seen)) == 8
    assert _rows(batches[0][1]) + _rows(batches[1][1]) != _rows(batches[2][1]) + _rows(batches[3][1])
    again = list(iterate_batches(tokens, 4, seed=1, num_steps=6))
    assert all(torch.equal(a, b) for (_, a), (_, b) in zip(batches, again))
    other = list(iterate_batches(tokens, 4, seed=2, num_steps=6))
    assert any(not torch.equal(a, b) for (_, a), (_, b) in zip(batches, other))
    full = list(iterate_batches(tokens, 4, seed=1, drop_last=False, num_steps=3))
    assert [b.shape[0] for _, b in full] == [4, 4, 2]
    assert sorted(sum((_rows(b) for _, b in full), [])) == list(range(10))


@pytest.mark.parametrize("start", [0, 1, 5, 7, 13])
def test_iterate_batches_resume_yields_what_an_uninterrupted_run_would(start):
    tokens = torch.randint(0, 100, (11, 5), generator=torch.Generator().manual_seed(0))
    uninterrupted = list(itertools.islice(iterate_batches(tokens, 3, seed=7), 20))
    resumed = list(itertools.islice(iterate_batches(tokens, 3, seed=7, start_step=start), 20 - start))
    assert [s for s, _ in resumed] == list(range(start, 20))
    assert all(torch.equal(a, b) for (_, a), (_, b) in zip(uninterrupted[start:], resumed))


def test_doc_id_batches_line_up_with_token_batches(tmp_path):
    data = build_token_dataset(_docs(30), TOK, 8, heldout_fraction=0.1, cache_dir=tmp_path)
    for (s1, tok_b), (s2, ids_b) in zip(iterate_batches(data.train, 4, seed=5, start_step=3, num_steps=9),
                                        iterate_batches(data.train_doc_ids, 4, seed=5, start_step=3, num_steps=9)):
        assert s1 == s2
        inc = ids_b[:, 1:] != ids_b[:, :-1]
        assert torch.all(tok_b[:, :-1][inc] == 0)  # each doc-id step follows an EOS in the same row


def test_iterate_batches_errors():
    with pytest.raises(ValueError, match="no full batch of batch_size=8"):
        next(iterate_batches(torch.zeros(5, 4, dtype=torch.long), 8))
    with pytest.raises(ValueError, match="batch_size=0"):
        next(iterate_batches(torch.zeros(5, 4, dtype=torch.long), 0))


def test_default_cache_dir_follows_tm_distill_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TM_DISTILL_CACHE", str(tmp_path))
    data = build_token_dataset(_docs(8), TOK, 8)
    assert (tmp_path / "tokens" / f"{data.meta['cache_key']}.pt").is_file()
    assert build_token_dataset(_docs(8), TOK, 8).meta["from_cache"]


def test_the_cache_is_capped_and_evicts_the_least_recently_used(tmp_path, monkeypatch):
    import os

    from tm_distill.data.tokens import CACHE_LIMIT_ENV

    docs = _docs(10)

    def build(seed):  # entries of one size: only the (unused) seed differs
        return build_token_dataset(docs, TOK, 8, heldout_fraction=0.0, seed=seed, cache_dir=tmp_path)

    one = build(1)
    size = (tmp_path / f"{one.meta['cache_key']}.pt").stat().st_size
    monkeypatch.setenv(CACHE_LIMIT_ENV, str(2.5 * size / 2**20))  # room for two entries
    two = build(2)
    os.utime(tmp_path / f"{one.meta['cache_key']}.pt", (1, 1))  # the oldest ...
    assert build(1).meta["from_cache"]  # ... until used again
    three = build(3)
    assert sorted(p.stem for p in tmp_path.glob("*.pt")) == sorted([one.meta["cache_key"], three.meta["cache_key"]])
    assert not build(2).meta["from_cache"] and two.meta["cache_key"]  # two was evicted
    assert sum(p.stat().st_size for p in tmp_path.glob("*.pt")) <= 2.5 * size
    monkeypatch.setenv(CACHE_LIMIT_ENV, "0")  # off: nothing new is stored
    build(4)
    assert len(list(tmp_path.glob("*.pt"))) == 2


def test_a_capped_dataset_caches_only_its_windows(tmp_path):
    docs = ["x" * 4000] * 20  # 80,020 tokens; max_tokens keeps 10 windows of 8
    full = build_token_dataset(docs, TOK, 8, heldout_fraction=0.0, cache_dir=tmp_path / "full")
    capped = build_token_dataset(docs, TOK, 8, heldout_fraction=0.0, max_tokens=80, cache_dir=tmp_path / "capped")
    assert capped.train.shape == (10, 8) and full.train.shape[0] == 10002
    assert capped.train.untyped_storage().nbytes() == 10 * 8 * 8  # not a view of the whole tokenization
    size = next((tmp_path / "capped").glob("*.pt")).stat().st_size
    assert size < 20_000 < next((tmp_path / "full").glob("*.pt")).stat().st_size  # was as large as the full one
    again = build_token_dataset(docs, TOK, 8, heldout_fraction=0.0, max_tokens=80, cache_dir=tmp_path / "capped")
    assert again.meta["from_cache"] and torch.equal(again.train, capped.train)
