"""Long-context retrieval probes: passkey (needle in a haystack of real text) and a phonebook lookup.

Prompts are built in token space so every prompt of nominal length L has exactly L tokens (passkey) or
at most L tokens (phonebook: whole entries). Each (task, length, depth, trial) cell draws its key, filler
offset and phonebook from its own ``random.Random`` seeded with a string of those values, so a sample is
the same whatever other cells are requested. Decoding is greedy; an answer is correct when the first number
in the continuation equals the key (passkey) or the phone number (phonebook).

- passkey: "There is a pass key hidden inside a lot of irrelevant text..." + real filler (e.g. held-out
  Shakespeare) with "The pass key is 12345. Remember it. 12345 is the pass key." at relative depth d, then
  "What is the pass key? The pass key is".
- phonebook (the TransMamba paper's probe, after Jelassi et al. 2024): "Name Surname: 555-0123" lines; the
  queried entry sits at relative depth d of the book; "What is the phone number of Name Surname? ...".
"""

from __future__ import annotations

import logging
import random
import re
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from ..errors import UserError
from ..generation import greedy_generate

log = logging.getLogger(__name__)

TASKS = ("passkey", "phonebook")

_FIRST = ("James Mary Robert Patricia John Jennifer Michael Linda David Elizabeth William Barbara Richard Susan "
          "Joseph Jessica Thomas Sarah Charles Karen Daniel Nancy Matthew Lisa Anthony Betty Mark Sandra Donald "
          "Ashley Steven Emily Paul Donna Andrew Michelle Joshua Carol Kenneth Amanda").split()
_LAST = ("Smith Johnson Williams Brown Jones Garcia Miller Davis Rodriguez Martinez Hernandez Lopez Gonzalez "
         "Wilson Anderson Thomas Taylor Moore Jackson Martin Lee Perez Thompson White Harris Sanchez Clark Ramirez "
         "Lewis Robinson Walker Young Allen King Wright Scott Torres Nguyen Hill Flores").split()


class RetrievalError(UserError, ValueError):
    pass


class FillerTooShort(RetrievalError):
    """The filler text holds fewer tokens than a passkey prompt of the asked length needs."""


@dataclass
class Sample:
    task: str
    length: int  # nominal prompt length in tokens
    depth: float  # relative position of the needle / queried entry, 0 = start, 1 = end
    trial: int
    input_ids: list[int]
    answer: str
    meta: dict = field(default_factory=dict)


def _encode(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _rng(seed: int, task: str, length: int, depth: float, trial: int) -> random.Random:
    return random.Random(f"{seed}|{task}|{length}|{depth:.6f}|{trial}")


def check_lengths(lengths: list[int], max_positions: int | None) -> None:
    """Raise RetrievalError for a length the teacher cannot attend over (beyond max_position_embeddings)."""
    for length in lengths:
        if length < 64:
            raise RetrievalError(f"retrieval length {length} is too short: use at least 64 tokens")
        if max_positions is not None and length > max_positions:
            raise RetrievalError(
                f"retrieval length {length} is beyond the teacher's context (max_position_embeddings="
                f"{max_positions}); use lengths <= {max_positions}"
            )


def passkey_sample(tokenizer, filler_ids: list[int], length: int, depth: float, trial: int, seed: int) -> Sample:
    """One passkey prompt of exactly ``length`` tokens. filler_ids: real text token ids (no EOS)."""
    rng = _rng(seed, "passkey", length, depth, trial)
    key = str(rng.randrange(10000, 100000))
    head = _encode(tokenizer, "There is a pass key hidden inside a lot of irrelevant text. Find it and remember "
                              "it. I will quiz you about the pass key.\n\n")
    needle = _encode(tokenizer, f"\n\nThe pass key is {key}. Remember it. {key} is the pass key.\n\n")
    question = _encode(tokenizer, "\n\nWhat is the pass key? The pass key is")
    n_fill = length - len(head) - len(needle) - len(question)
    if n_fill < 0:
        raise RetrievalError(f"passkey length {length} is shorter than the prompt's fixed text "
                             f"({length - n_fill} tokens)")
    if len(filler_ids) < n_fill:
        raise FillerTooShort(f"filler text has {len(filler_ids)} tokens, a passkey prompt of {length} needs {n_fill}")
    start = rng.randrange(len(filler_ids) - n_fill + 1)
    fill = filler_ids[start : start + n_fill]
    cut = round(depth * n_fill)
    ids = head + fill[:cut] + needle + fill[cut:] + question
    return Sample("passkey", length, depth, trial, ids, key, {"needle_token": len(head) + cut})


def phonebook_sample(tokenizer, length: int, depth: float, trial: int, seed: int) -> Sample:
    """One phonebook prompt of at most ``length`` tokens (whole entries)."""
    rng = _rng(seed, "phonebook", length, depth, trial)
    head = _encode(tokenizer, "Here is a phone book. Each line gives a name and a phone number.\n\n")
    names = [f"{a} {b}" for a in _FIRST for b in _LAST]
    rng.shuffle(names)
    entries: list[tuple[str, str, list[int]]] = []
    budget = length - len(head) - 24  # room for the question
    used = 0
    for name in names:
        number = f"{rng.randrange(200, 1000)}-{rng.randrange(0, 10000):04d}"
        ids = _encode(tokenizer, f"{name}: {number}\n")
        if used + len(ids) > budget:
            break
        entries.append((name, number, ids))
        used += len(ids)
    if len(entries) < 2:
        raise RetrievalError(f"phonebook length {length} holds fewer than 2 entries: use a longer length")
    target = round(depth * (len(entries) - 1))
    name, number, _ = entries[target]
    question = _encode(tokenizer, f"\nWhat is the phone number of {name}? The phone number of {name} is")
    ids = head + [t for _, _, e in entries for t in e] + question
    return Sample("phonebook", length, depth, trial, ids, number, {"entries": len(entries), "target": target})


def build_samples(
    tokenizer, filler_ids: list[int], tasks: list[str], lengths: list[int], depths: list[float], trials: int,
    seed: int = 0,
) -> list[Sample]:
    """All prompts for ``tasks`` x ``lengths`` x ``depths`` x ``trials``, deterministic under ``seed``."""
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise RetrievalError(f"unknown retrieval task(s) {unknown}: choose from {', '.join(TASKS)}")
    if any(not 0.0 <= d <= 1.0 for d in depths):
        raise RetrievalError(f"depths {depths} must lie in [0, 1] (0 = start of the context, 1 = end)")
    if trials < 1:
        raise RetrievalError(f"trials={trials} must be >= 1")
    out = []
    for task in tasks:
        for length in lengths:
            for depth in depths:
                for trial in range(trials):
                    if task == "passkey":
                        out.append(passkey_sample(tokenizer, filler_ids, length, depth, trial, seed))
                    else:
                        out.append(phonebook_sample(tokenizer, length, depth, trial, seed))
    return out


def corpus_filler(tokenizer, tokens: int, corpus: str = "shakespeare") -> list[int]:
    """About ``tokens`` token ids of the shipped corpus (fetched once); [] when it cannot be had."""
    from ..data.corpora import CorpusUnavailable, corpus_files  # noqa: PLC0415

    try:
        files = corpus_files(corpus)
    except CorpusUnavailable as err:
        log.warning("no %s corpus for retrieval filler: %s", corpus, err)
        return []
    ids: list[int] = []
    for f in files:
        ids += _encode(tokenizer, f.read_text()[: 8 * (tokens - len(ids))])  # a few characters per token
        if len(ids) >= tokens:
            break
    return ids


def build_samples_with_fallback(
    tokenizer, filler_ids: list[int], tasks: list[str], lengths: list[int], depths: list[float], trials: int,
    seed: int = 0, corpus: str = "shakespeare",
) -> tuple[list[Sample], dict]:
    """``build_samples``, never failing for want of filler text: when ``filler_ids`` (e.g. a small file's held-out
    text) is too short for the longest passkey prompt, the filler is the shipped corpus instead; a length even
    that cannot fill is skipped with a warning.

    Returns (samples, info): info["filler"] names the filler's source, info["skipped"] maps a skipped
    (task, length) "passkey@2048" to the reason, info["lengths"] lists the lengths with at least one sample.
    """
    source = "data"
    if "passkey" in tasks and lengths:
        try:
            build_samples(tokenizer, filler_ids, ["passkey"], [max(lengths)], depths[:1], 1, seed)
        except FillerTooShort as err:
            extra = corpus_filler(tokenizer, 2 * max(lengths), corpus)
            if len(extra) > len(filler_ids):
                log.warning("%s; retrieval filler comes from the %s corpus instead", err, corpus)
                filler_ids, source = extra, corpus
    samples, skipped = [], {}
    for task in tasks:
        for length in lengths:
            try:
                samples += build_samples(tokenizer, filler_ids, [task], [length], depths, trials, seed)
            except FillerTooShort as err:
                log.warning("skipping %s at %d tokens: %s", task, length, err)
                skipped[f"{task}@{length}"] = str(err)
    built = sorted({s.length for s in samples}, key=lengths.index)
    return samples, {"filler": source, "filler_tokens": len(filler_ids), "skipped": skipped, "lengths": built}


def is_correct(task: str, answer: str, text: str) -> bool:
    """Whether the continuation ``text`` gives ``answer`` as its first number."""
    pattern = r"\d{3}-\d{4}" if task == "phonebook" else r"\d+"
    found = re.search(pattern, text)
    return found is not None and found.group(0) == answer


def run_retrieval(
    models: dict[str, torch.nn.Module], tokenizer, samples: list[Sample], progress: bool = True
) -> dict:
    """Greedy-decode every sample with every model; accuracy per task, model, length and depth.

    Returns {task: {model: {"accuracy", "cells": [{"length", "depth", "accuracy", "n"}], "samples": [...]}}}.
    """
    results: dict = {}
    bar = tqdm(total=len(samples) * len(models), desc="retrieval", disable=not progress, leave=False)
    for name, model in models.items():
        device = next(model.parameters()).device
        for s in samples:
            max_new = 10 if s.task == "phonebook" else 8
            ids = torch.tensor([s.input_ids], device=device)
            gen = greedy_generate(model, ids, max_new)
            text = tokenizer.decode(gen.tokens, skip_special_tokens=True)
            entry = results.setdefault(s.task, {}).setdefault(name, {"samples": []})
            entry["samples"].append({"length": s.length, "depth": s.depth, "trial": s.trial, "answer": s.answer,
                                     "output": text, "correct": is_correct(s.task, s.answer, text)})
            bar.update(1)
    bar.close()
    for per_model in results.values():
        for entry in per_model.values():
            rows = entry["samples"]
            entry["accuracy"] = sum(r["correct"] for r in rows) / len(rows)
            cells: dict[tuple, list[bool]] = {}
            for r in rows:
                cells.setdefault((r["length"], r["depth"]), []).append(r["correct"])
            entry["cells"] = [{"length": k[0], "depth": k[1], "accuracy": sum(v) / len(v), "n": len(v)}
                              for k, v in sorted(cells.items())]
    return results


def filler_from_windows(windows: torch.Tensor, eos_token_id: int | None) -> list[int]:
    """Real filler token ids from held-out windows (n, seqlen), document separators removed."""
    flat = windows.reshape(-1)
    if eos_token_id is not None:
        flat = flat[flat != eos_token_id]
    return flat.tolist()


__all__ = ["FillerTooShort", "RetrievalError", "Sample", "TASKS", "build_samples", "build_samples_with_fallback",
           "check_lengths", "corpus_filler", "filler_from_windows", "is_correct", "passkey_sample", "phonebook_sample",
           "run_retrieval"]
