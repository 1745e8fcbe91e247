"""Greedy decoding with the model's own cache, shared by retrieval and the speed section.

A plain loop instead of ``model.generate`` so teacher and student decode the same way (no sampling
defaults from a generation_config) and the prefill and decode phases can be timed apart.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch


@dataclass
class GreedyResult:
    tokens: list[int]  # the generated token ids (without the prompt)
    prefill_s: float  # wall time of the prompt's forward pass
    decode_s: float  # wall time of the remaining steps (len(tokens) - 1 forward passes)
    cache: object  # the model's cache after the last step (TransMambaCache, DynamicCache, ...)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def greedy_generate(
    model: torch.nn.Module, input_ids: torch.Tensor, max_new_tokens: int, eos_token_id: int | None = None
) -> GreedyResult:
    """Greedy continuation of one prompt. input_ids: (1, seqlen) on the model's device.

    Stops after ``max_new_tokens`` tokens or at ``eos_token_id`` (which is kept in ``tokens``).
    """
    if input_ids.dim() != 2 or input_ids.shape[0] != 1:
        raise ValueError(f"input_ids must be (1, seqlen), got shape {tuple(input_ids.shape)}")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens} must be >= 1")
    device = input_ids.device
    _sync(device)
    start = time.perf_counter()
    out = model(input_ids=input_ids, use_cache=True, logits_to_keep=1)
    token = out.logits[:, -1].argmax(-1, keepdim=True)  # (1, 1)
    _sync(device)
    prefill = time.perf_counter() - start
    tokens = [int(token)]
    cache = out.past_key_values
    start = time.perf_counter()
    while len(tokens) < max_new_tokens and (eos_token_id is None or tokens[-1] != eos_token_id):
        out = model(input_ids=token, past_key_values=cache, use_cache=True)
        cache = out.past_key_values
        token = out.logits[:, -1].argmax(-1, keepdim=True)
        tokens.append(int(token))
    _sync(device)
    return GreedyResult(tokens=tokens, prefill_s=prefill, decode_s=time.perf_counter() - start, cache=cache)


def cache_bytes(cache) -> int:
    """Bytes a decoding cache holds: TransMambaCache.memory_bytes(), or the K/V tensors of an HF cache."""
    if cache is None:
        return 0
    if hasattr(cache, "memory_bytes"):
        return int(sum(cache.memory_bytes().values()))
    total = 0
    for layer in getattr(cache, "layers", []):
        for name in ("keys", "values"):
            t = getattr(layer, name, None)
            if isinstance(t, torch.Tensor):
                total += t.numel() * t.element_size()
    return total


__all__ = ["GreedyResult", "cache_bytes", "greedy_generate"]
