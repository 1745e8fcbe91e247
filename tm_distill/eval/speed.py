"""Speed and memory: prefill and decode tokens/s and peak memory at chosen prompt lengths.

Peak memory is ``torch.cuda.max_memory_allocated`` on CUDA (everything the pass allocated, weights included).
On other devices it is the parameter bytes plus the decoding cache's bytes after the last step
(``TransMambaCache.memory_bytes()`` for a student, the K/V tensors for the teacher): activations are not
counted there. ``memory_method`` in the result says which.

Each row also says how its model stands against the teacher timed in the same call (``speed_ratios``), and on
CUDA how a batch-1 decode step compares with the weight-read bound: the bytes of weights a step must read
over the device's copy bandwidth measured in the same call (the bound docs/benchmarks.md reports).
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


def read_bytes_per_step(model: torch.nn.Module) -> int:
    """Weight bytes one batch-1 decode step must read: all of them but an untied input embedding (one row)."""
    total = parameter_bytes(model)
    emb, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    if emb.data_ptr() != head.data_ptr():
        total -= (emb.shape[0] - 1) * emb.shape[1] * emb.element_size()
    return total


def copy_bandwidth(device: torch.device, size: int = 2**30, repeats: int = 10) -> float | None:
    """Bytes read + written per second by a device-to-device copy (median of ``repeats``); None off CUDA."""
    if device.type != "cuda":
        return None
    a = torch.empty(size, dtype=torch.uint8, device=device).random_()
    b = torch.empty_like(a)
    b.copy_(a)  # warm-up
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        b.copy_(a)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    del a, b
    return 2 * size / sorted(times)[len(times) // 2]


def speed_ratios(speed: dict, teacher: str = "teacher") -> dict[str, list[dict]]:
    """Each model's prefill and decode speed as a multiple of the teacher's at the same length (> 1: faster).

    speed: what :func:`measure_speed` returned, the teacher among its models. Returns {name: [row per length]}
    with rows {"length", "prefill_x_teacher", "decode_x_teacher"} (None where either timing is missing).
    """
    base = {row["length"]: row for row in speed["results"].get(teacher, [])}
    out = {}
    for name, rows in speed["results"].items():
        out[name] = []
        for row in rows:
            ref = base.get(row["length"], {})
            out[name].append({"length": row["length"], **{
                f"{kind}_x_teacher": row[f"{kind}_tokens_per_s"] / ref[f"{kind}_tokens_per_s"]
                if row[f"{kind}_tokens_per_s"] and ref.get(f"{kind}_tokens_per_s") else None
                for kind in ("prefill", "decode")}})
    return out


def _speed_row(model, ids: torch.Tensor, decode_tokens: int, bandwidth: float | None) -> dict:
    """One model at one prompt length: see :func:`measure_speed`'s rows."""
    dev = ids.device
    if dev.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(dev)
    gen = greedy_generate(model, ids, decode_tokens)
    steps = len(gen.tokens) - 1
    params, cache, reads = parameter_bytes(model), cache_bytes(gen.cache), read_bytes_per_step(model)
    bound_ms = reads / bandwidth * 1e3 if bandwidth else None
    step_ms = gen.decode_s / steps * 1e3 if steps and gen.decode_s > 0 else None
    return {
        "length": ids.shape[1],
        "prefill_tokens_per_s": ids.shape[1] / gen.prefill_s if gen.prefill_s > 0 else None,
        "decode_tokens_per_s": 1e3 / step_ms if step_ms else None,
        "peak_memory_bytes": int(torch.cuda.max_memory_allocated(dev)) if dev.type == "cuda" else params + cache,
        "parameter_bytes": params,
        "cache_bytes": cache,
        "read_bytes_per_step": reads,
        "bound_ms": bound_ms,
        "x_bound": step_ms / bound_ms if bound_ms and step_ms else None,
    }


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
    "parameter_bytes", "cache_bytes", "read_bytes_per_step", "bound_ms", "x_bound"}, and "copy_bytes_per_s".
    On CUDA ``bound_ms`` is ``read_bytes_per_step`` over the copy bandwidth and ``x_bound`` the measured decode
    step over it; elsewhere both are None (a CPU's timings under shared load say nothing about a bound).
    """
    if decode_tokens < 2:
        raise ValueError(f"decode_tokens={decode_tokens} must be >= 2 (one prefill token plus decode steps)")
    first = next(iter(models.values()))
    device = next(first.parameters()).device
    on_cuda = device.type == "cuda"
    generator = torch.Generator().manual_seed(seed)
    vocab = vocab_limit or first.config.vocab_size
    bandwidth = copy_bandwidth(device)
    prompts = {n: torch.randint(0, vocab, (1, n), generator=generator) for n in lengths}
    results: dict[str, list[dict]] = {}
    bar = tqdm(total=len(models) * len(lengths), desc="speed", disable=not progress, leave=False)
    for name, model in models.items():
        dev = next(model.parameters()).device
        if warmup:
            greedy_generate(model, prompts[min(lengths)][:, :16].to(dev), 2)
        results[name] = []
        for n in lengths:
            results[name].append(_speed_row(model, prompts[n].to(dev), decode_tokens, bandwidth))
            bar.update(1)
    bar.close()
    busy = None if on_cuda or not hasattr(os, "getloadavg") else os.getloadavg()[0]  # CPU timings share the cores
    return {
        "device": str(device) if not on_cuda else torch.cuda.get_device_name(device),
        "load_average": busy,
        "cpu_count": os.cpu_count(),
        "memory_method": "torch.cuda.max_memory_allocated" if on_cuda else "parameter bytes + cache bytes",
        "lengths": list(lengths),
        "decode_tokens": decode_tokens,
        "copy_bytes_per_s": bandwidth,
        "results": results,
    }


__all__ = ["copy_bandwidth", "measure_speed", "parameter_bytes", "read_bytes_per_step", "speed_ratios"]
