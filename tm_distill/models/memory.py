"""Inference memory of a student vs its teacher: KV cache and SSM state per layer at N tokens.

The formula follows the hybrid cache (``cache.py``) exactly:

- a layer holds KV for its N tokens while N < P (its TransPoint); once N >= P the prefix is folded into
  the SSM state and the layer holds no KV at all;
- a layer that ever switches (P < ``ATTENTION_ONLY``) holds its SSM state, (n_q, head_dim, head_dim) in
  fp32, from the first token on (the Memory Converter runs during the attention phase too), plus the conv
  state (channels, conv_kernel - 1) when ``use_conv`` is on;
- the teacher holds KV for all N tokens in every layer.

``check_cache_memory`` compares the formula with ``TransMambaCache.memory_bytes()`` after a real forward.
The formula is the dynamic cache's (the default); a static cache (``max_length=N``) holds each attention-phase
layer's buffer at its capacity, min(P + left padding, N) tokens, from the prefill on.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .cache import TransMambaCache
from .configuration import ATTENTION_ONLY, TransMambaConfig

STATE_DTYPE = torch.float32  # the scan keeps its state in fp32 whatever the model's dtype


@dataclass(frozen=True)
class LayerMemory:
    """Bytes one layer holds at ``n_tokens`` tokens (batch included)."""

    layer: int
    transpoint: int
    n_tokens: int
    kv_bytes: int  # student KV cache
    state_bytes: int  # student SSM (+ conv) state
    teacher_kv_bytes: int  # the teacher's KV cache for the same layer

    @property
    def student_bytes(self) -> int:
        return self.kv_bytes + self.state_bytes


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def config_dtype(config: TransMambaConfig) -> torch.dtype:
    """The dtype a checkpoint was saved in (``config.dtype``), float32 if it does not say."""
    dtype = getattr(config, "dtype", None) or torch.float32
    return getattr(torch, dtype) if isinstance(dtype, str) else dtype


def kv_tokens(transpoint: int, n_tokens: int) -> int:
    """Tokens of KV a layer holds after ``n_tokens`` tokens: all of them before its TransPoint, none after."""
    return n_tokens if n_tokens < transpoint else 0


def layer_memory(
    config: TransMambaConfig, n_tokens: int, batch_size: int = 1, dtype: torch.dtype | None = None
) -> list[LayerMemory]:
    """Per-layer memory at ``n_tokens`` tokens. dtype: of the KV cache (default: the config's dtype)."""
    if n_tokens < 0 or batch_size < 1:
        raise ValueError(f"need n_tokens >= 0 and batch_size >= 1, got {n_tokens} and {batch_size}")
    kv_size = _itemsize(dtype or config_dtype(config))
    nq, nkv, d = config.num_attention_heads, config.num_key_value_heads, config.head_dim
    kv_per_token = 2 * nkv * d * kv_size * batch_size
    state = nq * d * d * _itemsize(STATE_DTYPE) * batch_size
    if config.use_conv:
        state += (2 * nkv + nq) * d * (config.conv_kernel - 1) * kv_size * batch_size
    rows = []
    for i, p in enumerate(config.transpoints):
        switches = p < ATTENTION_ONLY
        rows.append(LayerMemory(
            layer=i,
            transpoint=p,
            n_tokens=n_tokens,
            kv_bytes=kv_tokens(p, n_tokens) * kv_per_token,
            state_bytes=state if switches and n_tokens > 0 else 0,
            teacher_kv_bytes=n_tokens * kv_per_token,
        ))
    return rows


def memory_totals(rows: list[LayerMemory]) -> dict[str, int]:
    """{"kv", "state", "student", "teacher"} summed over layers."""
    return {
        "kv": sum(r.kv_bytes for r in rows),
        "state": sum(r.state_bytes for r in rows),
        "student": sum(r.student_bytes for r in rows),
        "teacher": sum(r.teacher_kv_bytes for r in rows),
    }


def added_parameters(config: TransMambaConfig) -> list[int]:
    """Parameters each layer adds to the teacher's (Δ projection and bias, A_log, D, and the options)."""
    from .mixer import TransMambaMixer  # noqa: PLC0415  (avoids a cycle: mixer imports ops)

    with torch.device("meta"):
        mixer = TransMambaMixer(config, 0)
    shared = ("q_proj.", "k_proj.", "v_proj.", "o_proj.")
    per_layer = sum(p.numel() for n, p in mixer.named_parameters() if not n.startswith(shared))
    return [per_layer] * config.num_hidden_layers


def check_cache_memory(cache: TransMambaCache, config: TransMambaConfig, batch_size: int = 1) -> dict[str, int]:
    """Compare ``cache.memory_bytes()`` with the formula at ``cache.seen_tokens`` tokens.

    Returns the formula's totals; raises AssertionError naming the layer that disagrees.
    """
    n = cache.seen_tokens
    first = next((t for s in cache.states for t in (s.keys, s.values) if t is not None), None)
    rows = layer_memory(config, n, batch_size, dtype=first.dtype if first is not None else None)
    for row, st in zip(rows, cache.states):
        kv = sum(t.numel() * t.element_size() for t in (st.keys, st.values) if t is not None)
        state = sum(t.numel() * t.element_size() for t in (st.ssm_state, st.conv_state) if t is not None)
        if kv != row.kv_bytes or state != row.state_bytes:
            raise AssertionError(
                f"layer {row.layer} (TransPoint {row.transpoint}) at {n} tokens holds kv={kv}, state={state} "
                f"bytes; the formula says kv={row.kv_bytes}, state={row.state_bytes}"
            )
    totals = memory_totals(rows)
    held = cache.memory_bytes()
    if held != {"kv": totals["kv"], "state": totals["state"]}:
        raise AssertionError(f"cache.memory_bytes()={held} disagrees with the formula {totals}")
    return totals


def format_bytes(n: int) -> str:
    """Human-readable bytes: '0 B', '1.5 KiB', '12.0 MiB'."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


__all__ = ["LayerMemory", "added_parameters", "check_cache_memory", "config_dtype", "format_bytes", "kv_tokens",
           "layer_memory", "memory_totals"]
