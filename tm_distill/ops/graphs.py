"""CUDA-graph capture of one decode step of a TransMamba student whose layers are all past their TransPoints.

Once every layer runs its SSM, a decode step touches only fixed-size tensors: the token ids, the position,
and each layer's SSM state, which the fused update (``ops.decode``) rewrites in place. One step is then a
fixed sequence of kernels that a CUDA graph replays with a single launch, removing the per-kernel launch
cost that dominates small-batch decode. Layers that still hold a KV cache (attention-only layers, or a
context shorter than some TransPoint) grow their cache every step and cannot be captured: ``DecodeGraph``
refuses them with a clear error, and eager decoding stays the path for them.

Usage::

    logits = model(prompt, past_key_values=cache, use_cache=True).logits   # prefill, eager
    step = DecodeGraph(model, cache)             # captures one step (batch taken from the cache)
    for _ in range(n):
        logits = step(next_ids)                  # next_ids: (batch, 1) -> logits (batch, 1, vocab)
"""

from __future__ import annotations

import torch

from ..models.cache import TransMambaCache


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
    late = [i for i, p in enumerate(cfg.transpoints) if p > seen]
    if late:
        return (
            f"layers {late[:8]}{'...' if len(late) > 8 else ''} are still before their TransPoint at "
            f"{seen} tokens and grow a KV cache every step; decode them eagerly"
        )
    from .decode import fused_update_available

    for i, s in enumerate(cache.states):
        if s.ssm_state is None or not fused_update_available(s.ssm_state) or not s.ssm_state.is_contiguous():
            return f"layer {i} has no contiguous fp32 CUDA SSM state to update in place (run the prefill first)"
    return None


class DecodeGraph:
    """One captured decode step. Advances ``cache`` (its SSM states in place and ``seen_tokens``) per call.

    model: a TransMambaForCausalLM on CUDA; cache: its TransMambaCache after a prefill, every layer past
    its TransPoint. warmup: eager steps run (and undone) before capture so that kernels are compiled.
    """

    def __init__(self, model, cache: TransMambaCache, warmup: int = 2):
        reason = capturable_reason(model, cache)
        if reason is not None:
            raise GraphCaptureError(f"cannot capture the decode step: {reason}")
        self.model, self.cache = model, cache
        state0 = cache.states[0].ssm_state
        batch, device = state0.shape[0], state0.device
        self.ids = torch.zeros(batch, 1, dtype=torch.long, device=device)
        self.pos = torch.zeros(1, 1, dtype=torch.long, device=device)
        start = cache.get_seq_length()
        saved = [s.ssm_state.clone() for s in cache.states]
        stream = torch.cuda.Stream(device)
        stream.wait_stream(torch.cuda.current_stream(device))
        with torch.no_grad(), torch.cuda.stream(stream):
            for _ in range(warmup):
                self._step_eager(start)
        torch.cuda.current_stream(device).wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.no_grad(), torch.cuda.graph(self.graph):
            self.logits = self._step_eager(start)
        for s, keep in zip(cache.states, saved):  # undo the warm-up steps
            s.ssm_state.copy_(keep)
        cache.seen_tokens = start

    def _step_eager(self, offset: int) -> torch.Tensor:
        self.cache.seen_tokens = offset
        out = self.model(input_ids=self.ids, position_ids=self.pos, past_key_values=self.cache, use_cache=True)
        for s in self.cache.states:
            if s.keys is not None:
                raise GraphCaptureError("a layer grew a KV cache during capture; it cannot be replayed")
        return out.logits

    def __call__(self, input_ids: torch.Tensor) -> torch.Tensor:
        """input_ids: (batch, 1) -> logits (batch, 1, vocab); a view of a static buffer, clone to keep it."""
        self.ids.copy_(input_ids)
        self.pos.fill_(self.cache.seen_tokens)
        self.graph.replay()
        self.cache.seen_tokens += 1
        return self.logits


__all__ = ["DecodeGraph", "GraphCaptureError", "capturable_reason"]
