"""The Memory Converters of one cached forward call, batched across layers: one scan for many layers' states.

A layer whose tokens in this call all stay before its TransPoint needs no SSM output from the call, only the
scan's final state (decoding past P starts from it). That state depends on the layer's own x = V, B = K and Δ
and on nothing computed after, so the model collects these layers' inputs and scans them together after its
last layer: the heads of every collected layer side by side, each with its own A and Δ (head j of layer i is
head i·h + j of one scan; B's groups follow). The profile of 2026-11-26 (H200) put each state-only scan at three
autotuned Triton launches of 50-80 µs of host time, in a 2k-token prefill that is host-bound: the 1B shape's 16
layers took 48 launches, now 3. Collected inputs are bounded (``max_elements`` of x): past that they are
scanned as they come. Per head the scan is the same computation, so a layer's state does not depend on its
batch-mates.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..ops import ssd_state
from .cache import LayerState


@dataclass
class _Pending:
    state: LayerState
    x: torch.Tensor  # (b, t, h, p)
    dt: torch.Tensor  # (b, t, h): raw when the scan folds dt_bias and softplus in, else final
    A: torch.Tensor  # (h,) fp32
    B: torch.Tensor  # (b, t, g, n)
    dt_bias: torch.Tensor | None  # (h,) when folded
    h0: torch.Tensor | None  # (b, h, p, n) fp32 or None


class Converters:
    """Collects state-only scans of one forward call (``add``) and runs them as one (``flush``)."""

    def __init__(self, chunk_size: int, backend: str, max_elements: int = 2**27):
        self.chunk_size, self.backend, self.max_elements = chunk_size, backend, max_elements
        self.pending: list[_Pending] = []
        self.elements = 0

    def add(self, state: LayerState, x, dt, A, B, dt_bias=None, h0=None) -> None:
        """Schedule ``state.ssm_state`` = the final state of the scan over (x, dt, A, B) from h0 (shapes above).

        The tensors must outlive the layer's forward: activations, or copies of parameters (FSDP frees a
        gathered parameter's storage when the layer is done; a reference to ``dt_bias`` crashed a sharded run).
        Within one model call the collected layers are alike: all fold dt_bias or none (it depends on the call's
        padding only), all have an initial state or none (the cache tracks the same layers on every call), and
        head and state sizes are the model's.
        """
        self.pending.append(_Pending(state, x, dt, A, B, dt_bias, h0))
        self.elements += x.numel()
        if self.elements >= self.max_elements:
            self.flush()

    def flush(self) -> None:
        """Scan every pending layer at once and hand each its state (contiguous, fp32)."""
        if not self.pending:
            return
        todo, self.pending, self.elements = self.pending, [], 0
        cat = lambda name, dim: torch.cat([getattr(p, name) for p in todo], dim=dim)  # noqa: E731
        folded = todo[0].dt_bias is not None
        final = ssd_state(
            cat("x", 2), cat("dt", 2), cat("A", 0), cat("B", 2), self.chunk_size,
            initial_states=None if todo[0].h0 is None else cat("h0", 1), backend=self.backend,
            dt_bias=cat("dt_bias", 0) if folded else None, dt_softplus=folded,
        )
        start = 0
        for p in todo:
            h = p.x.shape[2]
            p.state.ssm_state = final[:, start : start + h].contiguous()
            start += h


__all__ = ["Converters"]
