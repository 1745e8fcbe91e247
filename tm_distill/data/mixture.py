"""A recipe's ``data.mixture``: training windows drawn from several sources in proportion to their weights.

Every entry becomes (n, seq_len) windows: a text source its training split (the document-level held-out split
of ``windows.Documents``, so held-out documents never train), teacher-written text (``teacher_data``, sampled
once and cached), recall sequences (``recall.recall_windows``, generated in the filler's training text). With
W the sum of the weights and N the windows of the non-generated entries, the mixture holds
T = N / (1 - recall's share) windows and entry i contributes round(T * weight_i / W) of them: its own windows in
a seeded order, repeated when it has fewer (a small teacher set is seen several times), cut when it has more.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import Tensor

from .tokens import TokenData
from .windows import Documents, load_documents

log = logging.getLogger(__name__)


@dataclass
class MixtureContext:
    """What the entries share: the teacher (``convert.teacher.Teacher``), the run's split and the primary data."""

    teacher: object
    seq_len: int
    seed: int
    heldout_fraction: float
    primary_source: str
    primary: TokenData  # data.source at seq_len
    text_field: str = "text"
    device: object = None


def _text_data(source: str, ctx: MixtureContext) -> TokenData:
    if source == ctx.primary_source:
        return ctx.primary
    return load_documents(source, ctx.teacher.tokenizer, heldout_fraction=ctx.heldout_fraction, seed=ctx.seed,
                          text_field=ctx.text_field).windows(ctx.seq_len)


def teacher_spec(entry, seed: int, heldout_fraction: float, primary_source: str):
    """The ``TeacherDataSpec`` of a teacher:* mixture entry (what a run samples, or reads back from the cache)."""
    from .teacher_data import TeacherDataSpec  # noqa: PLC0415

    kind = entry.source.split(":", 1)[1]
    return TeacherDataSpec(kind, entry.samples, entry.tokens, seed=seed,
                           source=(entry.prefixes or primary_source) if kind == "continuations" else None,
                           heldout_fraction=heldout_fraction)


def _teacher_windows(entry, ctx: MixtureContext) -> TokenData:
    from .teacher_data import teacher_data  # noqa: PLC0415

    spec = teacher_spec(entry, ctx.seed, ctx.heldout_fraction, ctx.primary_source)
    texts = teacher_data(ctx.teacher, spec, device=ctx.device)
    return Documents(texts, ctx.teacher.tokenizer, 0.0, ctx.seed).windows(ctx.seq_len)


def _recall_windows(entry, ctx: MixtureContext, count: int) -> tuple[Tensor, Tensor]:
    from .recall import recall_windows  # noqa: PLC0415

    filler = _text_data(entry.filler or ctx.primary_source, ctx).train.reshape(-1)
    eos = ctx.teacher.tokenizer.eos_token_id
    filler = filler[filler != eos].tolist() if eos is not None else filler.tolist()
    rows = recall_windows(ctx.teacher.tokenizer, filler, ctx.seq_len, count, seed=ctx.seed)
    tokens = torch.tensor([r.input_ids for r in rows], dtype=torch.long).view(count, ctx.seq_len)
    return tokens, torch.zeros(tokens.shape, dtype=torch.int32)


def _take(tokens: Tensor, doc_ids: Tensor | None, count: int, seed: int) -> tuple[Tensor, Tensor]:
    """``count`` rows in a seeded order, cycling through all rows before any repeats."""
    n = tokens.shape[0]
    g = torch.Generator().manual_seed(seed)
    order = torch.cat([torch.randperm(n, generator=g) for _ in range(-(-count // n))])[:count]
    ids = doc_ids if doc_ids is not None else torch.zeros(tokens.shape, dtype=torch.int32)
    return tokens[order], ids[order]


def mixture_windows(entries, ctx: MixtureContext) -> tuple[Tensor, Tensor, list[dict]]:
    """(train (T, seq_len), doc_ids (T, seq_len) int32, one record per entry: source, weight, available, used)."""
    total_weight = sum(e.weight for e in entries)
    loaded: dict[int, TokenData] = {}
    for i, entry in enumerate(entries):
        if entry.source == "recall":
            continue
        loaded[i] = _teacher_windows(entry, ctx) if entry.source.startswith("teacher:") else \
            _text_data(entry.source, ctx)
    recall_share = sum(e.weight for e in entries if e.source == "recall") / total_weight
    if recall_share >= 1:
        raise ValueError("data.mixture: recall sequences need a filler text and at least one other entry to set "
                         "the mixture's size (add e.g. the corpus itself with a weight)")
    total = sum(int(d.train.shape[0]) for d in loaded.values()) / (1 - recall_share)
    parts, records = [], []
    for i, entry in enumerate(entries):
        count = max(1, round(total * entry.weight / total_weight))
        if entry.source == "recall":
            tokens, ids = _recall_windows(entry, ctx, count)
            available = count
        else:
            data = loaded[i]
            available = int(data.train.shape[0])
            tokens, ids = _take(data.train, data.train_doc_ids, count, ctx.seed * 31 + i)
        parts.append((tokens, ids))
        records.append({"source": entry.source, "weight": entry.weight, "available_windows": available,
                        "windows": count})
        log.info("mixture at %d tokens: %s gives %d windows (of %d)", ctx.seq_len, entry.source, count, available)
    return (torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]), records)


__all__ = ["MixtureContext", "mixture_windows", "teacher_spec"]
