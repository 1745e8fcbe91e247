"""data.mixture: windows in proportion to the weights, training splits only, recall sequences generated."""

from __future__ import annotations

import pytest
import torch

from tests.training.conftest import tiny_smol_teacher
from tm_distill.data.loading import load_texts
from tm_distill.data.mixture import MixtureContext, mixture_windows
from tm_distill.data.tokens import build_token_dataset
from tm_distill.recipe import MixtureEntry


@pytest.fixture
def setup(smol, shakespeare_files, tmp_path, monkeypatch):
    monkeypatch.setenv("TM_DISTILL_CACHE", str(tmp_path / "cache"))
    main, other = tmp_path / "main", tmp_path / "other"
    for folder, files in ((main, shakespeare_files[:6]), (other, shakespeare_files[10:16])):
        folder.mkdir()
        for i, f in enumerate(files):
            (folder / f"{i}.txt").write_text(f.read_text()[:8000])
    teacher = tiny_smol_teacher(smol.tokenizer)
    primary = build_token_dataset(load_texts(str(main)), smol.tokenizer, 128, heldout_fraction=0.2, seed=0)
    ctx = MixtureContext(teacher, 128, 0, 0.2, str(main), primary, device="cpu")
    return ctx, str(other)


def _contains(rows: torch.Tensor, window: torch.Tensor) -> bool:
    return bool((rows == window).all(-1).any())


def test_entries_share_the_windows_by_weight_and_keep_held_out_text_out(setup):
    ctx, other = setup
    entries = [MixtureEntry(source=ctx.primary_source, weight=1.0), MixtureEntry(source=other, weight=3.0)]
    train, doc_ids, records = mixture_windows(entries, ctx)
    other_data = build_token_dataset(load_texts(other), ctx.teacher.tokenizer, 128, heldout_fraction=0.2, seed=0)
    total = ctx.primary.train.shape[0] + other_data.train.shape[0]
    assert [r["windows"] for r in records] == [round(total * 0.25), round(total * 0.75)]
    assert train.shape == (sum(r["windows"] for r in records), 128) and doc_ids.shape == train.shape
    for held in (*ctx.primary.heldout, *other_data.heldout):
        assert not _contains(train, held), "a held-out window reached the training mixture"
    assert all(_contains(ctx.primary.train, row) or _contains(other_data.train, row) for row in train)


def test_recall_and_teacher_entries(setup):
    ctx, other = setup
    entries = [MixtureEntry(source=other, weight=0.5), MixtureEntry(source="recall", weight=0.25, filler=other),
               MixtureEntry(source="teacher:instructions", weight=0.25, samples=4, tokens=8)]
    train, _, records = mixture_windows(entries, ctx)
    assert [r["source"] for r in records] == [other, "recall", "teacher:instructions"]
    recall_rows = train[records[0]["windows"]:records[0]["windows"] + records[1]["windows"]]
    text = ctx.teacher.tokenizer.decode(recall_rows[0])
    assert text.startswith("Keep track of every record") and "Q: the code of record" in text
    assert records[1]["windows"] == round(sum(r["windows"] for r in records) * 0.25)
    chat = ctx.teacher.tokenizer.decode(train[-1])
    assert "<|im_start|>" in chat or "<|im_end|>" in chat  # teacher-written chat turns, packed


def test_a_mixture_of_recall_alone_is_refused(setup):
    ctx, _ = setup
    with pytest.raises(ValueError, match="recall sequences need"):
        mixture_windows([MixtureEntry(source="recall")], ctx)
