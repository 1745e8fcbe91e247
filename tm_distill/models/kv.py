"""The static KV buffer of an attention-phase layer: writing into it, and one-query attention over it.

A static cache (``TransMambaCache(max_length=N)``) gives each layer still before its TransPoint one K/V
buffer, allocated by the prefill and written in place afterwards, so a decode step has the same shapes and
addresses at every position (what a CUDA graph needs). Positions come from a device tensor, never from a
Python int, for the same reason.
"""

from __future__ import annotations

import torch

from .cache import LayerState
from .placement import Placement


def write_static(state: LayerState, k_rot, v_new, where: Placement, q_pos, transpoint: int):
    """Write this call's K/V (b, n_kv, n, d) into the layer's buffer; returns the buffers (b, n_kv, capacity, d).

    Capacity (set by the prefill): the TransPoint plus the batch's largest left padding, at most the cache's
    max_length; no token past it is ever attended. q_pos: (n,) absolute indices of the call's tokens.
    """
    offset, n = where.offset, k_rot.shape[2]
    if state.keys is None:
        if offset > 0:
            raise RuntimeError("a static KV buffer is allocated by the prefill (the cache saw tokens without it)")
        cap = min(transpoint + where.max_pad, where.max_length)
        b, nkv, _, d = k_rot.shape
        state.keys = k_rot.new_zeros(b, nkv, cap, d)  # zeros: unwritten slots are masked, never NaN
        state.values = v_new.new_zeros(b, nkv, cap, d)
    cap = state.keys.shape[2]
    fit = max(0, min(offset + n, cap) - offset)
    if fit == n and offset > 0:  # decode: the index comes from a device tensor (graph-capturable)
        state.keys.index_copy_(2, q_pos, k_rot)
        state.values.index_copy_(2, q_pos, v_new)
    elif fit > 0:
        state.keys[:, :, offset : offset + fit] = k_rot[:, :, :fit]
        state.values[:, :, offset : offset + fit] = v_new[:, :, :fit]
    return state.keys, state.values


def decode_attention(q_rot, keys, values, q_pos, where: Placement, scaling: float) -> torch.Tensor:
    """One query per row over a static buffer, GQA without repeating K/V.

    q_rot: (b, nq, 1, d); keys, values: (b, n_kv, capacity, d); q_pos: (1,) the query's absolute index.
    Slots after the query (not yet written) and padding slots are masked. Returns (b, 1, nq, d).
    """
    b, nkv, cap, d = keys.shape
    nq = q_rot.shape[1]
    qg = q_rot.reshape(b, nkv, nq // nkv, d)  # query head h reads KV head h // (nq / n_kv)
    scores = torch.matmul(qg, keys.transpose(-1, -2)).float() * scaling  # (b, n_kv, group, capacity)
    ok = (torch.arange(cap, device=keys.device) <= q_pos[-1])[None, :]
    keys_ok = where.keys_ok(cap)
    if keys_ok is not None:
        ok = ok & keys_ok
    scores = scores.masked_fill(~ok[:, None, None, :], float("-inf"))
    probs = torch.softmax(scores, dim=-1).to(values.dtype)
    return torch.matmul(probs, values).reshape(b, 1, nq, d)


__all__ = ["decode_attention", "write_static"]
