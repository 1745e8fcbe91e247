"""Fused inference kernels for a student's Llama parts (RMSNorm, RoPE): one launch where transformers makes many.

A short prefill or a batch-1 decode step is launch-bound (``benchmarks/profile_speed.py``, H200, 2026-11-26:
a 1B-shape prefill of 512 tokens keeps the GPU busy 3.9 ms of 14.6 ms; a graph-replayed decode step was 40
kernels per layer). transformers' RMSNorm is eight kernels and its rotary embedding about fourteen:
- RMSNorm: torch's own ``rms_norm`` (one fused CUDA kernel, ~10 µs of host time per call on the device, where
  Liger-Kernel's Triton RMSNorm took ~65 µs: a 512-token prefill is host-bound). It multiplies by the weight
  before rounding to the input dtype, where ``LlamaRMSNorm`` rounds first: bf16 outputs may differ by one rounding.
- RoPE: Liger-Kernel's Triton kernel (one launch for q and k).
The MLP keeps transformers' two kernels for silu(gate) * up: a Triton launch costs more host time than both.

They run only where no gradient is recorded, on CUDA (``use_fused``): distillation keeps transformers' modules,
so training computes what the teacher computes. The references are transformers' own functions;
``tests/ops/test_gpu.py`` checks each kernel against its reference.
"""

from __future__ import annotations

import importlib.util

import torch
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

HAS_LIGER = importlib.util.find_spec("liger_kernel") is not None


def use_fused(x: torch.Tensor) -> bool:
    """Whether the fused kernels run for ``x``: a CUDA tensor, no gradient recorded."""
    return x.is_cuda and not torch.is_grad_enabled()


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """``LlamaRMSNorm``'s weight * (x / rms(x)), statistic in fp32, one kernel. x: (..., hidden)."""
    return torch.nn.functional.rms_norm(x, (x.shape[-1],), weight, eps)


def rotary(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
    """``apply_rotary_pos_emb`` on copies of q (b, nq, t, d) and k (b, nkv, t, d); cos, sin: (b or 1, t, d).

    Liger's kernel rotates in place, and the mixer still needs the unrotated q and k (the SSM's C and B), so
    it rotates copies. Returns (q_rot, k_rot) as (b, heads, t, d) views of (b, t, heads, d) tensors.
    """
    if not HAS_LIGER:  # liger-kernel is the `gpu` extra; without it, transformers' rotation
        return apply_rotary_pos_emb(q, k, cos, sin)
    try:  # a try block: transformers' remote-code loader requires a package imported outside one (see decode.py)
        from liger_kernel.ops.rope import rope_forward  # noqa: PLC0415  (CUDA only)
    except ImportError:  # installed but unusable here: transformers' rotation, as without it
        return apply_rotary_pos_emb(q, k, cos, sin)

    q_rot = q.transpose(1, 2).clone(memory_format=torch.contiguous_format)
    k_rot = k.transpose(1, 2).clone(memory_format=torch.contiguous_format)
    q_rot, k_rot, _, _ = rope_forward(q_rot.transpose(1, 2), k_rot.transpose(1, 2), cos, sin)
    return q_rot, k_rot


__all__ = ["HAS_LIGER", "rms_norm", "rotary", "use_fused"]
