"""Where one forward call's tokens sit in each row: the positions TransPoints are counted in.

A row's TransPoints count from its first real token, so left padding shifts them: with ``pad[r]`` padding
tokens before row r's prompt, the token at absolute index i has row position ``i - pad[r]`` and uses attention
iff that is below the layer's TransPoint P. A padded row thus computes exactly what its prompt alone computes.

The model builds one ``Placement`` per forward (not per layer) and hands it to every mixer; the mixer decides
per layer, from the Python ints ``first``/``last``/``next_first``, whether it needs attention, SSM rows or
both (the decision a CUDA graph fixes at capture), and uses the tensors for the per-row parts.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Placement:
    """Tokens [offset, offset + length) of a (batch, length) call.

    cache_position: (length,) absolute indices on the model's device (a static buffer under CUDA graphs), or
        None for a cache-free call without padding (made on demand: the training forward needs none).
    pad: (batch,) leading padding per row, or None when no row is padded.
    rows: (batch, length) row positions (absolute index - pad), or None when no row is padded.
    key_mask: (batch, n) real tokens among the first n >= offset + length keys, for a cache-free call with a
        padding mask that is not left padding (right padding); None otherwise.
    first: smallest row position of the call's first token; last: largest row position of its last token;
    next_first: smallest row position the next call's first token will have (a layer keeps its KV while
        this is below its TransPoint). Python ints, fixed for a captured decode step.
    max_length, max_pad: the cache's static length (None: dynamic KV) and the largest padding.
    converters: a ``models.converter.Converters`` collecting the call's state-only scans (a cached call of
        several tokens), or None: each layer scans its own.
    """

    offset: int
    length: int
    cache_position: torch.Tensor | None = None
    pad: torch.Tensor | None = None
    rows: torch.Tensor | None = None
    key_mask: torch.Tensor | None = None
    first: int = 0
    last: int = 0
    next_first: int = 0
    max_length: int | None = None
    max_pad: int = 0
    converters: object | None = None

    @property
    def padded(self) -> bool:
        return self.rows is not None

    def query_positions(self, n: int, device) -> torch.Tensor:
        """(n,) absolute indices of the call's first n tokens."""
        if self.cache_position is not None:
            return self.cache_position[:n]
        return torch.arange(self.offset, self.offset + n, device=device)

    @property
    def real(self) -> torch.Tensor | None:
        """(batch, length) bool, True for real tokens; None when every token is real."""
        if self.key_mask is not None:
            return self.key_mask[:, self.offset : self.offset + self.length]
        return None if self.rows is None else self.rows >= 0

    def keys_ok(self, n: int) -> torch.Tensor | None:
        """(batch, n) bool: which of the first n key slots hold real tokens (None: all of them)."""
        if self.key_mask is not None:
            m = self.key_mask[:, :n]
            return torch.nn.functional.pad(m, (0, n - m.shape[1]), value=True) if m.shape[1] < n else m
        if self.pad is None:
            return None
        return torch.arange(n, device=self.pad.device)[None, :] >= self.pad[:, None]

    @classmethod
    def for_cache(cls, cache, offset: int, length: int, device, cache_position=None) -> Placement:
        """A cached call: padding as the cache recorded it at its prefill."""
        if cache_position is None:
            cache_position = torch.arange(offset, offset + length, device=device)
        pad = cache.pad
        rows = None if pad is None else cache_position[None, :] - pad[:, None]
        return cls(
            offset=offset, length=length, cache_position=cache_position, pad=pad, rows=rows,
            first=offset - cache.max_pad, last=offset + length - 1 - cache.min_pad,
            next_first=offset + length - cache.max_pad, max_length=cache.max_length, max_pad=cache.max_pad,
        )

    @classmethod
    def for_mask(cls, attention_mask: torch.Tensor | None, offset: int, length: int, device) -> Placement:
        """A cache-free call (or a mixer called directly) with a (batch, offset + length) padding mask or None."""
        if attention_mask is None or bool(attention_mask.all()):
            return cls(offset=offset, length=length, first=offset,
                       last=offset + length - 1, next_first=offset + length)
        real = attention_mask.bool()
        counted = torch.cumsum(real.long(), dim=-1) - 1  # row position of every token
        rows = counted[:, offset : offset + length]
        pad = (~real).long().cumprod(-1).sum(-1)
        left = bool(torch.equal(real, torch.arange(real.shape[-1], device=real.device)[None, :] >= pad[:, None]))
        return cls(
            offset=offset, length=length, pad=pad if left else None, rows=rows,
            key_mask=None if left else real, first=int(rows[:, 0].min()), last=int(rows[:, -1].max()),
            next_first=int(counted[:, -1].min()) + 1, max_pad=int(pad.max()),
        )


__all__ = ["Placement"]
