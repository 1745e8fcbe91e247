"""One way from text to token windows: a source's documents, one held-out split, packed windows at any length.

``Documents`` holds a source's documents and the document-level split every window drawn from them obeys
(``build_token_dataset``'s seeded split by document, so a held-out document never gives a training window).
``Documents.windows(seq_len)`` tokenizes and packs them once per length and keeps the result, and
``Documents.dataset(seq_len)`` cuts a run's max_tokens-capped training data from it: a run's training windows,
its held-out KL, calibration and `auto:` planning, `tm-distill eval`'s held-out windows and the data mixture all
come from them. Calibration and planning read ``TokenData.train`` only: the training split. The token cache
keeps a capped dataset's own windows only; the uncapped windows of capped documents stay in memory.

Without a recipe (``convert``, ``plan``, ``eval``) the split is ``DEFAULT_HELDOUT_FRACTION`` with seed
``DEFAULT_SPLIT_SEED``, a recipe's defaults, so windows ``eval`` scores are ones a conversion never fitted.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch
from torch import Tensor

from . import tokens
from .tokens import TokenData

log = logging.getLogger(__name__)

DEFAULT_HELDOUT_FRACTION = 0.05
DEFAULT_SPLIT_SEED = 0


@dataclass
class Documents:
    """A source's documents under one split: heldout_fraction of them (seeded by ``seed``) held out.

    source: where they came from, for messages (may be empty); max_tokens: the cap of ``dataset``'s training
    tokens (None: every window), e.g. a recipe's data.max_tokens.
    """

    texts: list[str] = field(repr=False)
    tokenizer: object = field(repr=False)
    heldout_fraction: float = DEFAULT_HELDOUT_FRACTION
    seed: int = DEFAULT_SPLIT_SEED
    source: str = ""
    max_tokens: int | None = None
    _built: dict[int, TokenData] = field(default_factory=dict, repr=False)

    def windows(self, seq_len: int) -> TokenData:
        """Training (n, seq_len) and held-out (m, seq_len) windows of the documents, packed, all of them (no
        max_tokens cap); built once per length, then shared, so do not change it in place. Uncapped documents
        cache them as ``build_token_dataset`` does; capped ones hold them in memory only, since the cache keeps
        a capped dataset's own windows alone. Raises TokenDataError (a ValueError) when the text cannot make them."""
        if seq_len not in self._built:
            build = tokens.build_token_dataset if self.max_tokens is None else tokens.tokenize_windows
            self._built[seq_len] = build(self.texts, self.tokenizer, seq_len, heldout_fraction=self.heldout_fraction,
                                         seed=self.seed)
        return self._built[seq_len]

    def dataset(self, seq_len: int) -> TokenData:
        """The training data at ``seq_len``: the first max_tokens // seq_len training windows (all of them without
        max_tokens) and every held-out window, as ``build_token_dataset`` with max_tokens makes and caches them
        (cut from ``windows``, so the documents are tokenized once). A new TokenData each call for the caller to
        change; its tensors may be shared, so replace them rather than write into them."""
        if self.max_tokens is None:
            return tokens.cap_windows(self.windows(seq_len), None)
        return tokens.build_token_dataset(self.texts, self.tokenizer, seq_len, heldout_fraction=self.heldout_fraction,
                                          seed=self.seed, max_tokens=self.max_tokens,
                                          tokenized=lambda: self.windows(seq_len))

    def training_texts(self, seq_len: int) -> list[str]:
        """The documents ``windows(seq_len)`` trains on (the held-out ones left out), as text."""
        return tokens.training_documents(self.texts, self.tokenizer, seq_len, heldout_fraction=self.heldout_fraction,
                                         seed=self.seed)

    def training(self, seq_len: int) -> Documents:
        """The documents ``windows(seq_len)`` trains on as Documents of their own: none held out, windows at any
        length, the same max_tokens (a capped run's are held in memory only). What `auto:` planning reads."""
        return Documents(self.training_texts(seq_len), self.tokenizer, 0.0, self.seed, self.source, self.max_tokens)


def load_documents(source: str, tokenizer, *, heldout_fraction: float = DEFAULT_HELDOUT_FRACTION,
                   seed: int = DEFAULT_SPLIT_SEED, text_field: str = "text", whole_if_one: bool = False) -> Documents:
    """The documents of a data source (``loading.load_texts``: file, folder, corpus name, dataset) under a split.

    whole_if_one: a source of one document is not split (heldout_fraction 0: all its windows train), for callers
    that can do without held-out windows; otherwise such a source fails when its windows are built.
    Raises DataSourceError naming the source when it does not exist or gives no text.
    """
    from .loading import load_texts  # noqa: PLC0415

    texts = load_texts(source, text_field=text_field)
    if whole_if_one and len(texts) < 2:
        heldout_fraction = 0.0
    return Documents(texts, tokenizer, heldout_fraction, seed, str(source))


def spread(rows: Tensor, count: int) -> Tensor:
    """min(count, n) rows of ``rows`` (n, ...) spread evenly from the first to the last, in order."""
    pick = torch.linspace(0, len(rows) - 1, min(count, len(rows))).round().long().unique()
    return rows[pick]


__all__ = ["DEFAULT_HELDOUT_FRACTION", "DEFAULT_SPLIT_SEED", "Documents", "load_documents", "spread"]
