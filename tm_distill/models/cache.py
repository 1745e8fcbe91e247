"""The hybrid cache: KV only for tokens before a layer's TransPoint, SSM (and conv) state for every layer.

The SSM state of a switching layer is kept current during its attention phase too (the Memory Converter
run incrementally), so the switch costs nothing; once a layer is past its TransPoint its KV is dropped,
and its memory stays constant from then on.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers.cache_utils import Cache


@dataclass
class LayerState:
    keys: torch.Tensor | None = None  # (batch, n_kv, t, head_dim), after RoPE
    values: torch.Tensor | None = None  # (batch, n_kv, t, head_dim)
    ssm_state: torch.Tensor | None = None  # (batch, n_q, head_dim, head_dim), fp32
    conv_state: torch.Tensor | None = None  # (batch, channels, conv_kernel - 1)


class TransMambaCache(Cache):
    """Per-layer ``LayerState`` plus the number of tokens seen; works with ``model.generate``."""

    is_compileable = False

    def __init__(self, num_layers: int):
        # Cache.__init__ wants layers; ours are LayerState records, managed here.
        self.layers = []
        self.layer_class_to_replicate = None
        self.offloading = False
        self.states = [LayerState() for _ in range(num_layers)]
        self.seen_tokens = 0

    def __len__(self):
        return len(self.states)

    def __repr__(self):
        return f"TransMambaCache(layers={len(self.states)}, seen_tokens={self.seen_tokens})"

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

    def kv_length(self, layer_idx: int) -> int:
        keys = self.states[layer_idx].keys
        return 0 if keys is None else keys.shape[2]

    def memory_bytes(self) -> dict[str, int]:
        """Bytes held now: {"kv": ..., "state": ...} summed over layers."""
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

    def reset(self):
        self.states = [LayerState() for _ in self.states]
        self.seen_tokens = 0

    def crop(self, max_length: int):
        raise NotImplementedError("a TransMamba cache holds SSM state and cannot be cropped (assisted decoding)")


__all__ = ["LayerState", "TransMambaCache"]
