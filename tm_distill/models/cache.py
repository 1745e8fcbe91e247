"""The hybrid cache: KV only for tokens before a layer's TransPoint, SSM (and conv) state for every layer.

The SSM state of a switching layer is kept current during its attention phase too (the Memory Converter
run incrementally, one fused state update per decoded token), so the switch costs nothing; once a layer is
past its TransPoint its KV is dropped, and its memory stays constant from then on.

Two KV layouts:
- dynamic (``max_length=None``, the default): K/V grow by concatenation, exactly the tokens seen so far;
- static (``max_length=N``): the first prefill allocates each attention-phase layer's K/V once, sized to
  the layer's TransPoint (plus the batch's left padding) or to N, whichever is smaller, and decoding writes
  into it in place. Every decode step then has fixed shapes and can be CUDA-graph captured
  (``graphs.DecodeGraph``; ``graphs=True`` makes the model's own forward, and so ``model.generate``,
  route one-token steps through it).

Left padding: ``pad`` holds, per row, the number of padding tokens before the row's first real token (set by
the prefill from its attention mask). A row's TransPoints count from its first real token, so a padded row
decodes exactly as its prompt alone.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch
from transformers import GenerationMixin
from transformers.cache_utils import Cache

# transformers 5.24 renamed generate()'s and the models' `past_key_values` to `cache`, and the model outputs'
# field with it (the old names still work but print a deprecation line); earlier 5.x releases know only
# `past_key_values`. Pass a cache as **{CACHE_KWARG: cache}, build an output with it, read one with
# ``output_cache``: our own calls then never trigger the warning.
CACHE_KWARG = (
    "cache" if "cache" in inspect.signature(GenerationMixin.prepare_inputs_for_generation).parameters
    else "past_key_values"
)


def output_cache(output):
    """The cache a model output carries (``output.cache``, or ``output.past_key_values`` before 5.24)."""
    return getattr(output, CACHE_KWARG)


@dataclass
class LayerState:
    keys: torch.Tensor | None = None  # (batch, n_kv, t or capacity, head_dim), after RoPE
    values: torch.Tensor | None = None  # (batch, n_kv, t or capacity, head_dim)
    ssm_state: torch.Tensor | None = None  # (batch, n_q, head_dim, head_dim), fp32
    conv_state: torch.Tensor | None = None  # (batch, channels, conv_kernel - 1)
    static: bool = False  # keys/values are a preallocated buffer written in place

    def tensors(self) -> list[torch.Tensor]:
        """The tensors the layer holds (a decode graph takes its device and dtype from them)."""
        return [t for t in (self.keys, self.values, self.ssm_state, self.conv_state) if t is not None]


class TransMambaCache(Cache):
    """Per-layer ``LayerState`` plus the number of tokens seen; works with ``model.generate``.

    max_length: None for a dynamic KV cache; an int (prompt + new tokens) for a static one.
    graphs: with a static cache on CUDA, run one-token forwards as CUDA-graph replays.
    """

    is_compileable = False

    def __init__(self, num_layers: int, max_length: int | None = None, graphs: bool = False):
        # Cache.__init__ wants layers; ours are LayerState records, managed here.
        if graphs and max_length is None:
            raise ValueError("graphs=True needs a static cache: give max_length (prompt + new tokens)")
        self.layers = []
        self.layer_class_to_replicate = None
        self.offloading = False
        self.max_length = max_length
        self.graphs = graphs
        self.states = [LayerState(static=max_length is not None) for _ in range(num_layers)]
        self.seen_tokens = 0
        self.pad: torch.Tensor | None = None  # (batch,) leading padding per row, None when there is none
        self.max_pad = 0
        self.min_pad = 0
        self.decode_graph = None  # graphs.DecodeGraph, made on the first graph step
        self.capturing = False  # set by DecodeGraph while it runs the model eagerly to capture it

    @property
    def static(self) -> bool:
        return self.max_length is not None

    def __len__(self):
        return len(self.states)

    def __repr__(self):
        kind = f"static max_length={self.max_length}" if self.static else "dynamic"
        return f"TransMambaCache(layers={len(self.states)}, seen_tokens={self.seen_tokens}, {kind})"

    def set_padding(self, attention_mask: torch.Tensor | None) -> None:
        """Record each row's leading padding from the prefill's (batch, seqlen) mask (left padding only)."""
        if attention_mask is None:
            self.pad, self.max_pad, self.min_pad = None, 0, 0
            return
        real = attention_mask.bool()
        pad = (~real).long().cumprod(-1).sum(-1)  # leading zeros per row
        idx = torch.arange(real.shape[-1], device=real.device)
        if not bool(torch.equal(real, idx[None, :] >= pad[:, None])):
            raise ValueError("a cached forward takes left padding only: every row is pad*, then real tokens")
        self.pad, self.max_pad, self.min_pad = pad, int(pad.max()), int(pad.min())
        if self.max_pad == 0:
            self.pad = None

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.seen_tokens

    def get_max_cache_shape(self, layer_idx: int = 0) -> int:
        return -1

    def get_mask_sizes(self, query_length: int, layer_idx: int = 0):
        return self.seen_tokens + query_length, 0

    @property
    def is_sliding(self):
        return [False] * len(self.states)

    @property
    def is_linear(self):
        return [False] * len(self.states)

    def reaches(self, transpoint: int) -> bool:
        """Whether a token at this position can ever be in the cache (a static cache holds max_length tokens):
        a layer whose TransPoint it never reaches needs no SSM state."""
        return self.max_length is None or transpoint < self.max_length

    def kv_length(self, layer_idx: int) -> int:
        """Tokens of KV the layer holds (for a static buffer: the tokens written, not its capacity)."""
        keys = self.states[layer_idx].keys
        if keys is None:
            return 0
        return min(self.seen_tokens, keys.shape[2]) if self.states[layer_idx].static else keys.shape[2]

    def memory_bytes(self) -> dict[str, int]:
        """Bytes held now: {"kv": ..., "state": ...} summed over layers (static buffers at their capacity)."""
        kv = sum(t.numel() * t.element_size() for s in self.states for t in (s.keys, s.values) if t is not None)
        st = sum(
            t.numel() * t.element_size() for s in self.states for t in (s.ssm_state, s.conv_state) if t is not None
        )
        return {"kv": kv, "state": st}

    def reorder_cache(self, beam_idx: torch.LongTensor):
        for s in self.states:
            for name in ("keys", "values", "ssm_state", "conv_state"):
                t = getattr(s, name)
                if t is not None:
                    setattr(s, name, t.index_select(0, beam_idx.to(t.device)))
        if self.pad is not None:
            self.pad = self.pad.index_select(0, beam_idx.to(self.pad.device))
        self.decode_graph = None  # its captured buffers are no longer the cache's

    def reset(self):
        self.states = [LayerState(static=self.static) for _ in self.states]
        self.seen_tokens = 0
        self.pad, self.max_pad, self.min_pad = None, 0, 0
        self.decode_graph = None

    def crop(self, max_length: int):
        raise NotImplementedError("a TransMamba cache holds SSM state and cannot be cropped (assisted decoding)")


__all__ = ["CACHE_KWARG", "LayerState", "TransMambaCache", "output_cache"]
