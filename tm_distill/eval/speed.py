"""Speed and memory: prefill and decode tokens/s and peak memory at chosen prompt lengths.

Peak memory is ``torch.cuda.max_memory_allocated`` on CUDA (everything the pass allocated, weights included).
On other devices it is the parameter bytes plus the decoding cache's bytes after the last step
(``TransMambaCache.memory_bytes()`` for a student, the K/V tensors for the teacher): activations are not
counted there. ``memory_method`` in the result says which.
"""

from __future__ import annotations

import os

import torch
from tqdm.auto import tqdm

from ..generation import cache_bytes, greedy_generate


def parameter_bytes(model: torch.nn.Module) -> int:
    """Bytes of the model's parameters and buffers (tied weights once)."""
    seen, total = set(), 0
    for t in list(model.parameters()) + list(model.buffers()):
        if t.data_ptr() in seen:
            continue
        seen.add(t.data_ptr())
        total += t.numel() * t.element_size()
    return total


@torch.no_grad()
def measure_speed(
    models: dict[str, torch.nn.Module], lengths: list[int], decode_tokens: int = 16, vocab_limit: int | None = None,
    seed: int = 0, warmup: bool = True, progress: bool = True,
) -> dict:
    """Prefill and decode throughput per model and prompt length, on each model's own device.

    models: name -> causal LM; lengths: prompt lengths in tokens; decode_tokens: tokens generated after the
    prompt (greedy; decode speed counts decode_tokens - 1 single-token steps).
    Returns {"device", "load_average" (1-minute, on a CPU; None on CUDA), "cpu_count", "memory_method",
    "lengths", "decode_tokens", "results": {name: [row per length]}}
    with rows {"length", "prefill_tokens_per_s", "decode_tokens_per_s", "peak_memory_bytes",
    "parameter_bytes", "cache_bytes"}.
    """
    if decode_tokens < 2:
        raise ValueError(f"decode_tokens={decode_tokens} must be >= 2 (one prefill token plus decode steps)")
    first = next(iter(models.values()))
    device = next(first.parameters()).device
    on_cuda = device.type == "cuda"
    generator = torch.Generator().manual_seed(seed)
    vocab = vocab_limit or first.config.vocab_size
    prompts = {n: torch.randint(0, vocab, (1, n), generator=generator) for n in lengths}
    results: dict[str, list[dict]] = {}
    bar = tqdm(total=len(models) * len(lengths), desc="speed", disable=not progress, leave=False)
    for name, model in models.items():
        dev = next(model.parameters()).device
        if warmup:
            greedy_generate(model, prompts[min(lengths)][:, :16].to(dev), 2)
        rows = []
        for n in lengths:
            ids = prompts[n].to(dev)
            if on_cuda:
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(dev)
            gen = greedy_generate(model, ids, decode_tokens)
            steps = len(gen.tokens) - 1
            params = parameter_bytes(model)
            cache = cache_bytes(gen.cache)
            rows.append({
                "length": n,
                "prefill_tokens_per_s": n / gen.prefill_s if gen.prefill_s > 0 else None,
                "decode_tokens_per_s": steps / gen.decode_s if steps and gen.decode_s > 0 else None,
                "peak_memory_bytes": int(torch.cuda.max_memory_allocated(dev)) if on_cuda else params + cache,
                "parameter_bytes": params,
                "cache_bytes": cache,
            })
            bar.update(1)
        results[name] = rows
    bar.close()
    busy = None if on_cuda or not hasattr(os, "getloadavg") else os.getloadavg()[0]  # CPU timings share the cores
    return {
        "device": str(device) if not on_cuda else torch.cuda.get_device_name(device),
        "load_average": busy,
        "cpu_count": os.cpu_count(),
        "memory_method": "torch.cuda.max_memory_allocated" if on_cuda else "parameter bytes + cache bytes",
        "lengths": list(lengths),
        "decode_tokens": decode_tokens,
        "results": results,
    }


__all__ = ["measure_speed", "parameter_bytes"]
