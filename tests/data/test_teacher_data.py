"""Teacher-written data: topics split for a held-out eval set, sampled in seeded shards, cached with a manifest,
resumed at the first missing shard, continuations of training documents only."""

from __future__ import annotations

import json

import pytest

import tm_distill.data.selfgen as selfgen
from tests.training.conftest import tiny_smol_teacher
from tm_distill.data.teacher_data import (SEED_TOPICS, TeacherDataError, TeacherDataSpec, clean_request, manifest_of,
                                          request_prompts, teacher_data, topics)


@pytest.fixture
def teacher(smol, tmp_path, monkeypatch):
    monkeypatch.setenv("TM_DISTILL_CACHE", str(tmp_path))
    return tiny_smol_teacher(smol.tokenizer)


def test_held_out_topics_are_never_training_topics():
    train, held = set(topics(False)), set(topics(True))
    assert train.isdisjoint(held) and train | held == set(SEED_TOPICS) and len(held) == len(SEED_TOPICS) // 8
    assert not any("python" in t.lower() or "programming" in t.lower() for t in SEED_TOPICS)
    asks = request_prompts(50, seed=0, heldout=True)
    assert all(any(t in a for t in held) for a in asks) and request_prompts(50, 0, True) == asks


def test_clean_request_takes_the_first_real_line():
    assert clean_request('Request: "How do bees make honey?"\nThanks', "x") == "How do bees make honey?"
    assert clean_request("  \n\n", "Tell me about owls") == "Tell me about owls"


def test_instructions_are_sampled_in_shards_cached_and_resumed(teacher, monkeypatch):
    spec = TeacherDataSpec("instructions", 5, 8, seed=1)
    texts = teacher_data(teacher, spec, batch_size=4, shard_size=2, progress=False)
    assert len(texts) == 5 and all(t.startswith("<|im_start|>") and "<|im_start|>assistant\n" in t for t in texts)
    manifest = manifest_of(teacher, spec)
    assert manifest["count"] == 5 and manifest["shards"] == 3 and manifest["sampled_tokens"] > 0
    assert manifest["sampling_tokens_per_s"] > 0 and "training seed topics" in manifest["prompt_source"]
    folder = next((teacher_data.__globals__["cache_dir"]() / "teacher-data").iterdir())
    (folder / "part-00001.jsonl").unlink()  # a run stopped before this shard was written
    calls = []
    real = selfgen.sample_from_teacher
    monkeypatch.setattr(selfgen, "sample_from_teacher", lambda *a, **k: calls.append(a[2]) or real(*a, **k))
    assert teacher_data(teacher, spec, batch_size=4, shard_size=2, progress=False) == texts  # same seeds
    assert calls == [2, 2], "only the missing shard is sampled again (its requests, then its answers)"
    calls.clear()
    assert teacher_data(teacher, spec, batch_size=4, shard_size=2, progress=False) == texts and calls == []
    assert json.loads((folder / "manifest.json").read_text())["shards_reused"] == 2


def test_continuations_continue_training_documents_only(teacher, tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    for i in range(20):
        (docs / f"{i:02d}.txt").write_text(f"document number {i} " * 60)
    spec = TeacherDataSpec("continuations", 12, 6, seed=0, source=str(docs), heldout_fraction=0.2)
    texts = teacher_data(teacher, spec, progress=False)
    from tm_distill.data.loading import load_texts
    from tm_distill.data.tokens import build_token_dataset

    held = build_token_dataset(load_texts(str(docs)), teacher.tokenizer, 32, heldout_fraction=0.2, seed=0)
    held_numbers = {teacher.tokenizer.decode(w).split("number ")[1].split()[0] for w in held.heldout}
    used = {t.split("number ")[1].split()[0] for t in texts}
    assert used and used.isdisjoint(held_numbers)
    assert all(not t.startswith("<|im_start|>") for t in texts)


def test_bad_specs_are_refused():
    with pytest.raises(TeacherDataError, match="kind 'answers' is unknown"):
        TeacherDataSpec("answers", 1, 1)
    with pytest.raises(TeacherDataError, match="continuations need a source"):
        TeacherDataSpec("continuations", 1, 1)
