"""Tokenize documents into fixed-length training windows with a document-level held-out split.

Packing (``pack=True``, the default): each split's documents, each followed by EOS, are concatenated and cut
into ``seq_len`` windows ("packed, documents separated by EOS"); the final partial window is dropped. A
window may hold the tail of one document and the start of the next. The student has no document reset
inside a sequence yet, so ``TokenData.train_doc_ids`` / ``heldout_doc_ids`` give, per position, the index
of its document within the window (0, 1, 2, ...; the layout of mamba-ssm's ``seq_idx``) for a loop that
wants to reset state or mask positions at document starts.
``pack=False``: windows never cross documents; each document is cut into windows and its tail shorter
than ``seq_len`` is dropped (documents shorter than ``seq_len`` give nothing); doc_ids are all 0.

The held-out split is by DOCUMENT (a seeded permutation), so no held-out text appears in train.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from ..atomic import atomic_write_file
from ..errors import UserError

log = logging.getLogger(__name__)

_FORMAT = 1  # bump when the cached layout changes


class TokenDataError(UserError, ValueError):
    """Text that cannot make the windows asked for (too little of it, no document left for training)."""


@dataclass
class TokenData:
    """train: (n, seq_len) long; heldout: (m, seq_len) long; meta: counts and the parameters that built them.

    train_doc_ids / heldout_doc_ids: (n, seq_len) / (m, seq_len) int32, per position the index of its
    document inside the window (all zeros without packing).
    """

    train: Tensor
    heldout: Tensor
    meta: dict
    train_doc_ids: Tensor | None = field(default=None, repr=False)
    heldout_doc_ids: Tensor | None = field(default=None, repr=False)

    @property
    def seq_len(self) -> int:
        return int(self.train.shape[1])


def default_cache_dir() -> Path:
    from ..runtime import cache_dir

    return cache_dir() / "tokens"


def _texts_hash(texts: Sequence[str]) -> str:
    h = hashlib.sha256()
    for t in texts:
        data = t.encode("utf-8", "surrogatepass")
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()


def _cache_key(texts: Sequence[str], tokenizer, params: dict) -> str:
    ident = (f"v{_FORMAT}|{_texts_hash(texts)}|{getattr(tokenizer, 'name_or_path', type(tokenizer).__name__)}|"
             f"{len(tokenizer)}|{tokenizer.eos_token_id}|{sorted(params.items())}")
    return hashlib.sha256(ident.encode()).hexdigest()[:20]


def _windows(docs: list[list[int]], seq_len: int, pack: bool) -> tuple[Tensor, Tensor, int]:
    """Cut token lists into (n, seq_len) windows; returns (tokens, doc_ids, tokens dropped)."""
    total = sum(len(d) for d in docs)
    if pack:
        flat = torch.cat([torch.tensor(d, dtype=torch.long) for d in docs]) if docs else torch.empty(0, dtype=torch.long)
        starts = torch.zeros(total, dtype=torch.int32)
        offsets = torch.tensor([len(d) for d in docs], dtype=torch.long).cumsum(0)[:-1]
        starts[offsets] = 1  # a new document begins here
        n = total // seq_len
        tokens = flat[: n * seq_len].view(n, seq_len)
        starts = starts[: n * seq_len].view(n, seq_len)
        starts[:, 0] = 0
        return tokens, starts.cumsum(1, dtype=torch.int32), total - n * seq_len
    rows = [torch.tensor(d[i:i + seq_len], dtype=torch.long) for d in docs for i in range(0, len(d) - seq_len + 1, seq_len)]
    tokens = torch.stack(rows) if rows else torch.empty(0, seq_len, dtype=torch.long)
    return tokens, torch.zeros(tokens.shape, dtype=torch.int32), total - tokens.numel()


CACHE_LIMIT_ENV = "TM_DISTILL_TOKEN_CACHE_MB"
DEFAULT_CACHE_MB = 4096


def cache_limit() -> int:
    """Bytes the token cache may hold in all (``$TM_DISTILL_TOKEN_CACHE_MB``, default 4096 MB; 0 turns it off)."""
    text = os.environ.get(CACHE_LIMIT_ENV, "")
    try:
        return int(float(text) * 2**20) if text.strip() else DEFAULT_CACHE_MB * 2**20
    except ValueError:
        log.warning("%s=%r is not a number of MB; using %d", CACHE_LIMIT_ENV, text, DEFAULT_CACHE_MB)
        return DEFAULT_CACHE_MB * 2**20


def _evict(folder: Path, limit: int, keep: Path) -> None:
    """Delete the least recently used entries of ``folder`` but ``keep`` until all take at most ``limit`` bytes."""
    entries = []
    for path in folder.glob("*.pt"):
        try:
            st = path.stat()
        except FileNotFoundError:  # another process evicted it
            continue
        entries.append((path != keep, st.st_mtime, st.st_size, path))
    total = sum(size for _, _, size, _ in entries)
    for _, _, size, path in sorted(entries, key=lambda e: (e[0], e[1])):  # ``keep`` sorts first: never evicted
        if path == keep:
            continue
        if total <= limit:
            break
        log.info("token cache: evicting %s (least recently used)", path.name)
        path.unlink(missing_ok=True)
        total -= size


def _save_atomic(obj: dict, path: Path) -> None:
    """Cache ``obj`` at ``path`` within ``cache_limit()``: older entries go first; one larger than the limit is
    not cached at all."""
    limit = cache_limit()
    size = sum(t.numel() * t.element_size() for t in obj.values() if isinstance(t, Tensor))
    if size > limit:
        log.info("token cache: not storing %s (%d MB, over the %d MB limit, %s)", path.name, size >> 20, limit >> 20,
                 CACHE_LIMIT_ENV)
        return
    atomic_write_file(path, lambda tmp: torch.save(obj, tmp))
    _evict(path.parent, limit, keep=path)


def _check_inputs(texts: Sequence[str], tokenizer, seq_len: int, heldout_fraction: float, max_tokens: int | None,
                  ) -> tuple[list[str], int, int]:
    """(the documents as a list, the EOS id, how many documents to hold out), or a clear error."""
    if seq_len < 2:
        raise TokenDataError(f"seq_len={seq_len} must be >= 2 tokens")
    if not 0.0 <= heldout_fraction < 1.0:
        raise TokenDataError(f"heldout_fraction={heldout_fraction} must be in [0, 1), e.g. 0.05")
    if max_tokens is not None and max_tokens < seq_len:
        raise TokenDataError(f"max_tokens={max_tokens} is less than one window of seq_len={seq_len}")
    if isinstance(texts, str):
        raise TypeError("texts must be a list of documents, not one string: wrap it as [text]")
    texts = list(texts)
    if not texts:
        raise TokenDataError("no documents to tokenize: texts is empty")
    eos = tokenizer.eos_token_id
    if eos is None:
        raise TokenDataError(f"tokenizer {getattr(tokenizer, 'name_or_path', '')!r} has no EOS token to end documents")
    n_held = 0 if heldout_fraction == 0 else max(1, round(heldout_fraction * len(texts)))
    if n_held >= len(texts):
        raise TokenDataError(
            f"heldout_fraction={heldout_fraction} of {len(texts)} document(s) leaves none for training: the split is "
            "by document, so give more documents (e.g. one per file) or set heldout_fraction=0"
        )
    return texts, eos, n_held


def _read_cache(path: Path) -> TokenData | None:
    """The cached dataset at ``path``, or None when there is none or it cannot be read (then it is rebuilt)."""
    if not path.exists():
        return None
    try:
        blob = torch.load(path, weights_only=True)
        with contextlib.suppress(OSError):
            os.utime(path)  # recently used: evicted last
        log.info("token cache hit: %s", path)
        return TokenData(blob["train"], blob["heldout"], {**blob["meta"], "from_cache": True},
                         blob["train_doc_ids"], blob["heldout_doc_ids"])
    except Exception as err:  # a corrupt or foreign file: rebuild it
        log.warning("ignoring unreadable token cache %s (%s); rebuilding", path, err)
        return None


def _split_documents(docs: list[list[int]], n_held: int, seq_len: int, seed: int, pack: bool,
                     ) -> tuple[list[int], list[int]]:
    """(training, held-out) document indices, each sorted: a seeded permutation's first ``n_held`` are held out."""
    perm = torch.randperm(len(docs), generator=torch.Generator().manual_seed(seed)).tolist()
    if pack and n_held:  # short documents (a split single file): hold out enough of them for one window
        while sum(len(docs[i]) for i in perm[:n_held]) < seq_len and n_held < len(docs) - 1:
            n_held += 1
    return sorted(perm[n_held:]), sorted(perm[:n_held])


def build_token_dataset(
    texts: Sequence[str], tokenizer, seq_len: int, *, heldout_fraction: float = 0.05, seed: int = 0,
    max_tokens: int | None = None, cache_dir: str | Path | None = None, pack: bool = True,
    tokenized: Callable[[], TokenData] | None = None,
) -> TokenData:
    """Tokenize ``texts`` (EOS after each document), split by document, cut into ``seq_len`` windows.

    texts: documents (e.g. from ``load_texts``); tokenizer: the teacher's (needs an EOS token);
    heldout_fraction: share of documents held out, in [0, 1) (when > 0, at least one document and, packed,
    enough documents for one full window while one document is left to train on);
    seed: the split permutation; max_tokens: cap on training tokens (whole windows, held-out not capped);
    cache_dir: where the result is cached as ``<key>.pt`` (default ~/.cache/tm-distill/tokens/, within
    ``cache_limit()``), keyed on the texts, tokenizer and these parameters; pack: see the module docstring.
    A capped dataset caches its own windows only, never the uncapped tokenization it is cut from.
    tokenized: on a cache miss, returns every window of these texts under this split (``tokenize_windows``'
    result, e.g. the ones a ``windows.Documents`` holds in memory), instead of tokenizing them here.
    Returns TokenData(train (n, seq_len), heldout (m, seq_len), meta).
    """
    texts, eos, n_held = _check_inputs(texts, tokenizer, seq_len, heldout_fraction, max_tokens)
    params = {"seq_len": seq_len, "heldout_fraction": heldout_fraction, "seed": seed, "max_tokens": max_tokens,
              "pack": pack}
    key = _cache_key(texts, tokenizer, params)
    path = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    path = path / f"{key}.pt"
    cached = _read_cache(path)
    if cached is not None:
        return cached
    every = tokenized() if tokenized is not None else _tokenize(texts, tokenizer, eos, n_held, params)
    data = cap_windows(every, max_tokens)
    meta = {**data.meta, "cache_key": key}
    meta.pop("from_cache", None)
    try:
        _save_atomic({"train": data.train, "heldout": data.heldout, "train_doc_ids": data.train_doc_ids,
                      "heldout_doc_ids": data.heldout_doc_ids, "meta": meta}, path)
    except OSError as err:
        log.warning("could not write token cache %s: %s", path, err)
    return TokenData(data.train, data.heldout, {**meta, "from_cache": False}, data.train_doc_ids,
                     data.heldout_doc_ids)


def tokenize_windows(texts: Sequence[str], tokenizer, seq_len: int, *, heldout_fraction: float = 0.05, seed: int = 0,
                     pack: bool = True) -> TokenData:
    """Every window ``build_token_dataset`` cuts from ``texts`` (no max_tokens cap), tokenized now and never
    cached: for windows held in memory only (a capped run's uncapped ones: the cache keeps the capped ones)."""
    texts, eos, n_held = _check_inputs(texts, tokenizer, seq_len, heldout_fraction, None)
    params = {"seq_len": seq_len, "heldout_fraction": heldout_fraction, "seed": seed, "max_tokens": None, "pack": pack}
    return _tokenize(texts, tokenizer, eos, n_held, params)


def _tokenize(texts: list[str], tokenizer, eos: int, n_held: int, params: dict) -> TokenData:
    """Every window of ``texts`` under ``params``' split (uncapped), tokenized here; reads and writes no cache."""
    seq_len, seed, pack = params["seq_len"], params["seed"], params["pack"]
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    docs = [list(d) + [eos] for d in ids]
    train_idx, held_idx = _split_documents(docs, n_held, seq_len, seed, pack)
    n_held = len(held_idx)
    train, train_doc, dropped = _windows([docs[i] for i in train_idx], seq_len, pack)
    heldout, held_doc, held_dropped = _windows([docs[i] for i in held_idx], seq_len, pack)
    if train.shape[0] == 0:
        raise TokenDataError(
            f"{len(train_idx)} training document(s) give no full window of seq_len={seq_len} "
            f"({sum(len(docs[i]) for i in train_idx)} tokens{'' if pack else ', pack=False'}): use more text, "
            "a shorter seq_len" + ("" if pack else ", or pack=True")
        )
    if n_held and heldout.shape[0] == 0:
        raise TokenDataError(
            f"the {n_held} held-out document(s) give no full window of seq_len={seq_len} "
            f"({sum(len(docs[i]) for i in held_idx)} tokens): raise heldout_fraction or lower seq_len"
        )
    meta = {
        **params, "max_tokens": None, "eos_token_id": int(eos), "vocab_size": len(tokenizer),
        "tokenizer": str(getattr(tokenizer, "name_or_path", "")), "num_documents": len(docs),
        "train_documents": len(train_idx), "heldout_documents": n_held, "train_tokens": int(train.numel()),
        "heldout_tokens": int(heldout.numel()), "dropped_tokens": int(dropped + held_dropped), "cache_key": None,
    }
    log.info("tokenized %d documents: %d train / %d held-out windows of %d", len(docs), train.shape[0],
             heldout.shape[0], seq_len)
    return TokenData(train, heldout, {**meta, "from_cache": False}, train_doc, held_doc)


def cap_windows(data: TokenData, max_tokens: int | None) -> TokenData:
    """A new TokenData holding at most ``max_tokens // seq_len`` of ``data``'s training windows (the first ones;
    held-out windows uncapped; None: all), its meta a copy that counts the cut windows as dropped. Cut windows
    are copies (a view would keep, and ``torch.save`` would write, the whole uncapped tokenization); uncut ones
    are ``data``'s own tensors, so replace them rather than writing into them."""
    keep = data.train.shape[0] if max_tokens is None else min(data.train.shape[0], max_tokens // data.seq_len)
    cut = (data.train.shape[0] - keep) * data.seq_len
    meta = {**data.meta, "max_tokens": max_tokens, "train_tokens": keep * data.seq_len,
            "dropped_tokens": data.meta["dropped_tokens"] + cut}
    train, ids = data.train, data.train_doc_ids
    if cut:
        train, ids = train[:keep].clone(), None if ids is None else ids[:keep].clone()
    return TokenData(train, data.heldout, meta, ids, data.heldout_doc_ids)


def training_documents(texts: Sequence[str], tokenizer, seq_len: int, *, heldout_fraction: float = 0.05,
                       seed: int = 0) -> list[str]:
    """The documents ``build_token_dataset`` with the same arguments trains on (its held-out split left out)."""
    texts, eos, n_held = _check_inputs(texts, tokenizer, seq_len, heldout_fraction, None)
    if not n_held:
        return texts
    lengths = [[0] * (len(d) + 1) for d in tokenizer(texts, add_special_tokens=False)["input_ids"]]
    train_idx, _ = _split_documents(lengths, n_held, seq_len, seed, pack=True)
    return [texts[i] for i in train_idx]


def document_positions(doc_ids: Tensor) -> Tensor:
    """Position of each token inside its document: (b, t) document ids -> (b, t) long, 0 at each document start.

    These are the ``position_ids`` of packed windows (transformers and the student read a restart as a new
    document).
    """
    t = doc_ids.shape[-1]
    index = torch.arange(t, device=doc_ids.device).expand_as(doc_ids)
    starts = torch.ones_like(doc_ids, dtype=torch.bool)
    starts[..., 1:] = doc_ids[..., 1:] != doc_ids[..., :-1]
    first = torch.cummax(torch.where(starts, index, torch.zeros_like(index)), dim=-1).values
    return (index - first).long()


def _epoch_order(n: int, seed: int, epoch: int) -> Tensor:
    g = torch.Generator().manual_seed((seed * 0x9E3779B1 + epoch) % (2**63 - 1))
    return torch.randperm(n, generator=g)


def iterate_batches(
    tokens: Tensor, batch_size: int, *, seed: int = 0, start_step: int = 0, drop_last: bool = True,
    num_steps: int | None = None,
) -> Iterator[tuple[int, Tensor]]:
    """Yield ``(step, tokens[rows])`` batches, rows (batch_size, ...) from a fresh seeded shuffle each epoch.

    tokens: (n, seq_len) (any tensor whose first dim indexes samples; the same n, batch_size and seed give
    the same rows, so ``doc_ids`` batches line up with token batches). Endless across epochs unless
    num_steps is given (stops before step ``num_steps``). Step s depends only on (seed, s), so
    ``start_step=s`` resumes exactly where an uninterrupted run would be. drop_last=False adds a final
    short batch per epoch.
    """
    n = int(tokens.shape[0])
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1")
    if start_step < 0:
        raise ValueError(f"start_step={start_step} must be >= 0")
    per_epoch = n // batch_size if drop_last else -(-n // batch_size)
    if per_epoch == 0:
        raise TokenDataError(
            f"{n} sequence(s) make no full batch of batch_size={batch_size}: use more data, a smaller batch, "
            "or drop_last=False"
        )
    step = start_step
    epoch, order = -1, None
    while num_steps is None or step < num_steps:
        if step // per_epoch != epoch:
            epoch = step // per_epoch
            order = _epoch_order(n, seed, epoch)
        i = step % per_epoch
        yield step, tokens[order[i * batch_size:(i + 1) * batch_size]]
        step += 1


__all__ = ["CACHE_LIMIT_ENV", "TokenData", "TokenDataError", "build_token_dataset", "cache_limit", "cap_windows",
           "default_cache_dir", "document_positions", "iterate_batches", "tokenize_windows", "training_documents"]
