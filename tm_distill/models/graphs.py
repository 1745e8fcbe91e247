"""CUDA-graph capture of one decode step of a TransMamba student, at any context.

A decode step touches only fixed-size tensors when the cache is static (``TransMambaCache(max_length=N)``):
the token ids, the position (a device tensor), each attention-phase layer's preallocated K/V (written in
place at that position) and each switching layer's SSM state (rewritten in place by the fused update). What
a step computes per layer — attention, the SSM, or both and a per-row choice (left padding) — depends only on
the position relative to the layer's TransPoint; ``phase`` names that for every layer. One graph is captured
per phase, when decoding first reaches it: a schedule has at most a few phases per TransPoint crossed, and
the crossing step itself (the converter's state is current, see ``cache.py``) is captured like any
other. A dynamic cache is captured only once every layer is past its TransPoint (it holds no KV then).

Usage::

    cache = TransMambaCache(n_layers, max_length=prompt_len + new_tokens)
    logits = model(prompt, cache=cache, use_cache=True).logits   # prefill, eager (CACHE_KWARG)
    step = DecodeGraph(model, cache)
    for _ in range(n):
        logits = step(next_ids)                  # next_ids: (batch, 1) -> logits (batch, 1, vocab)

``TransMambaCache(..., graphs=True)`` makes the model do this itself for every one-token forward, so
``model.generate(..., cache=cache)`` (``past_key_values=`` before transformers 5.24) decodes through graphs.
"""

from __future__ import annotations

import torch

from ..ops.decode import fused_update_available
from .cache import TransMambaCache


class GraphCaptureError(RuntimeError):
    pass


def capturable_reason(model, cache: TransMambaCache) -> str | None:
    """Why one decode step of ``model`` with ``cache`` cannot be graph-captured, or None if it can."""
    cfg = model.config
    if not torch.cuda.is_available() or next(model.parameters()).device.type != "cuda":
        return "CUDA graphs need the model on a CUDA device"
    if cfg.use_conv:
        return "use_conv=True: the conv state is re-allocated every step (capture supports use_conv=False)"
    seen = cache.get_seq_length()
    if seen == 0:
        return "run the prefill first (the cache is empty)"
    if not cache.static:
        late = [i for i, p in enumerate(cfg.transpoints) if p > seen - cache.max_pad]
        if late:
            return (
                f"layers {late[:8]}{'...' if len(late) > 8 else ''} are still before their TransPoint at "
                f"{seen} tokens and grow a dynamic KV cache every step; use a static cache "
                "(TransMambaCache(..., max_length=N)) or decode them eagerly"
            )
    for i, s in enumerate(cache.states):
        if not cfg.switches(i) or not cache.reaches(cfg.transpoints[i]):
            continue
        if s.ssm_state is None or not fused_update_available(s.ssm_state) or not s.ssm_state.is_contiguous():
            return f"layer {i} has no contiguous fp32 CUDA SSM state to update in place (run the prefill first)"
    return None


def phase(model, cache: TransMambaCache) -> tuple:
    """What a one-token step at the cache's position computes, per layer: (attention, SSM rows, keeps KV)."""
    seen = cache.get_seq_length()
    first, last, after = seen - cache.max_pad, seen - cache.min_pad, seen + 1 - cache.max_pad
    return tuple((first < p, last >= p, after < p) for p in model.config.transpoints)


class DecodeGraph:
    """Captured decode steps, one graph per phase. Advances ``cache`` (in place, and ``seen_tokens``) per call.

    model: a TransMambaForCausalLM on CUDA; cache: its TransMambaCache after a prefill (static, or dynamic
    with every layer past its TransPoint). warmup: eager steps run (and undone) before each capture.
    """

    def __init__(self, model, cache: TransMambaCache, warmup: int = 2):
        reason = capturable_reason(model, cache)
        if reason is not None:
            raise GraphCaptureError(f"cannot capture the decode step: {reason}")
        self.model, self.cache, self.warmup = model, cache, warmup
        ref = next(t for s in cache.states for t in s.tensors())
        batch, device = ref.shape[0], ref.device
        self.device = device
        self.ids = torch.zeros(batch, 1, dtype=torch.long, device=device)
        self.position = torch.zeros(1, dtype=torch.long, device=device)
        self.pool = torch.cuda.graph_pool_handle()  # every phase's graph allocates from one pool
        self.phase = None
        self.graph = self.logits = None
        self.captures = 0

    def _step_eager(self, offset: int) -> torch.Tensor:
        self.cache.seen_tokens = offset
        self.cache.capturing = True
        try:
            out = self.model(input_ids=self.ids, cache=self.cache, use_cache=True,
                             cache_position=self.position)
        finally:
            self.cache.capturing = False
        if not self.cache.static and any(s.keys is not None for s in self.cache.states):
            raise GraphCaptureError("a layer grew a dynamic KV cache during capture; it cannot be replayed")
        return out.logits

    def _capture(self, offset: int) -> None:
        cache = self.cache
        kv = [(s.keys, s.values) for s in cache.states]
        saved = [None if s.ssm_state is None else s.ssm_state.clone() for s in cache.states]
        self.position.fill_(offset)

        def restore():
            for s, (k, v), keep in zip(cache.states, kv, saved):
                s.keys, s.values = k, v  # a step past a TransPoint drops them; the buffers live on
                if keep is not None:
                    s.ssm_state.copy_(keep)
            cache.seen_tokens = offset

        # The earlier phase's graph is never replayed again, but it stays alive until this capture is done: a
        # graph pool shared by captures must have a live graph (the caching allocator asserts `use_count > 0`
        # when a capture joins a pool whose graphs are all gone, yet whose blocks are not all returned). Its
        # output buffer is dropped now, so the new graph may reuse that memory.
        self.logits = None
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.no_grad(), torch.cuda.stream(stream):
            for _ in range(self.warmup):
                self._step_eager(offset)
                restore()
        torch.cuda.current_stream(self.device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.no_grad(), torch.cuda.graph(graph, pool=self.pool):
            logits = self._step_eager(offset)
        restore()
        self.graph, self.logits = graph, logits  # the earlier graph goes now; the pool lives on in this one
        self.captures += 1

    def __call__(self, input_ids: torch.Tensor) -> torch.Tensor:
        """input_ids: (batch, 1) -> logits (batch, 1, vocab); a view of a static buffer, clone to keep it."""
        cache = self.cache
        offset = cache.seen_tokens
        if cache.max_length is not None and offset + 1 > cache.max_length:
            raise ValueError(f"the static cache holds {cache.max_length} tokens (max_length); decoding past it "
                             "needs a larger max_length")
        now = phase(self.model, cache)
        if now != self.phase:
            self._capture(offset)
            self.phase = now
        self.ids.copy_(input_ids)
        self.position.fill_(offset)
        self.graph.replay()
        for s, (_, _, keeps) in zip(cache.states, now):
            if not keeps:  # the step crossed this layer's TransPoint for every row: its KV is folded in
                s.keys = s.values = None
        cache.seen_tokens = offset + 1
        return self.logits


__all__ = ["DecodeGraph", "GraphCaptureError", "capturable_reason", "phase"]
