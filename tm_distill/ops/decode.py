"""One decode step of the SSM state, fused into a single kernel on CUDA.

``ssd_update`` is what the mixer calls for one token: on CUDA (with Triton) one Triton launch reads the
state once, writes it back in place and emits ``y``; elsewhere it is :func:`ssd_step`, the spec. The eager
PyTorch step is a handful of launches per layer (decay, outer product, add, contraction, skip), which made
decode launch-bound; the fused kernel moves the state exactly once and is CUDA-graph capturable.

Shapes (as ``ssd_step``):
- ``state``: (batch, nheads, headdim, dstate), fp32, updated in place by the fused path
- ``x``: (batch, nheads or ngroups, headdim) (the student's x = V has one group per KV head); ``dt``: (batch, nheads);
  ``A``: (nheads,)
- ``B``, ``C``: (batch, ngroups, dstate), each group count dividing nheads (they may differ: B per KV head); ``D``: (nheads,) or (nheads, headdim)
- ``dt_bias`` (nheads,) and ``dt_softplus``: dt becomes softplus(dt + dt_bias), as in mamba-ssm's
  ``selective_state_update``; ``A_log``: A given as the module's log(-A), so A = -exp(A_log). Folding these into
  the kernel saves a decode step ~8 launches per layer (what the profile of 2026-11-26 showed the step was made of).
- returns (state, y) with y (batch, nheads, headdim), fp32 unless ``out_dtype`` says otherwise.
"""

from __future__ import annotations

import torch

from .ssd_ref import ssd_step

# Triton is optional. The import sits in a try block on purpose: transformers' remote-code loader refuses a
# checkpoint from the Hub whose code imports a missing package outside one (``dynamic_module_utils.get_imports``),
# and this module is saved beside every student (``models/remote_code.py``).
try:
    import triton
    import triton.language as tl
except ImportError:
    triton = tl = None
HAS_TRITON = triton is not None

if HAS_TRITON:  # pragma: no cover - needs a GPU

    @triton.jit
    def _ssd_update_kernel(
        state_ptr, x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, dt_bias_ptr, y_ptr,
        nheads, headdim, dstate, heads_per_group_x, heads_per_group_b, heads_per_group_c,
        s_sb, s_sh, s_sp, s_sn,
        s_xb, s_xh, s_xp,
        s_dtb, s_dth,
        s_Bb, s_Bg, s_Bn,
        s_Cb, s_Cg, s_Cn,
        s_Dh, s_Dp,
        s_yb, s_yh, s_yp,
        HAS_D: tl.constexpr, HAS_DT_BIAS: tl.constexpr, DT_SOFTPLUS: tl.constexpr, A_IS_LOG: tl.constexpr,
        BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr,
    ):
        pid_p = tl.program_id(0)
        pid_bh = tl.program_id(1)
        b = pid_bh // nheads
        h = pid_bh % nheads
        gx = h // heads_per_group_x
        gb = h // heads_per_group_b
        gc = h // heads_per_group_c
        offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
        offs_n = tl.arange(0, BLOCK_N)
        mask_p = offs_p < headdim
        mask_n = offs_n < dstate
        dt = tl.load(dt_ptr + b * s_dtb + h * s_dth).to(tl.float32)
        if HAS_DT_BIAS:
            dt += tl.load(dt_bias_ptr + h).to(tl.float32)
        if DT_SOFTPLUS:  # torch's softplus: linear above 20
            dt = tl.where(dt > 20.0, dt, tl.log(1.0 + tl.exp(tl.minimum(dt, 20.0))))
        a = tl.load(A_ptr + h).to(tl.float32)
        if A_IS_LOG:
            a = -tl.exp(a)
        decay = tl.exp(a * dt)
        x = tl.load(x_ptr + b * s_xb + gx * s_xh + offs_p * s_xp, mask=mask_p, other=0.0).to(tl.float32)
        Bv = tl.load(B_ptr + b * s_Bb + gb * s_Bg + offs_n * s_Bn, mask=mask_n, other=0.0).to(tl.float32)
        Cv = tl.load(C_ptr + b * s_Cb + gc * s_Cg + offs_n * s_Cn, mask=mask_n, other=0.0).to(tl.float32)
        sp = state_ptr + b * s_sb + h * s_sh + offs_p[:, None] * s_sp + offs_n[None, :] * s_sn
        m2 = mask_p[:, None] & mask_n[None, :]
        s = tl.load(sp, mask=m2, other=0.0)
        s = s * decay + (dt * x)[:, None] * Bv[None, :]
        tl.store(sp, s, mask=m2)
        y = tl.sum(s * Cv[None, :], axis=1)
        if HAS_D:
            d = tl.load(D_ptr + h * s_Dh + offs_p * s_Dp, mask=mask_p, other=0.0).to(tl.float32)
            y += d * x
        tl.store(y_ptr + b * s_yb + h * s_yh + offs_p * s_yp, y, mask=mask_p)


def needs_grad(*tensors) -> bool:
    """Whether autograd would record an op on these tensors (None entries allowed): the fused paths skip it."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def fused_update_available(state: torch.Tensor) -> bool:
    """Whether :func:`ssd_update` will take the fused in-place path for this state tensor."""
    return HAS_TRITON and state.is_cuda and state.dtype == torch.float32


def ssd_update_fused(state, x, dt, A, B, C, D=None, dt_bias=None, dt_softplus=False, A_log=False, out_dtype=None):
    """The fused step: updates ``state`` in place (it must be fp32 on CUDA) and returns (state, y)."""
    if not fused_update_available(state):
        raise RuntimeError(
            f"the fused SSM decode step needs an fp32 CUDA state and Triton; got {state.dtype} on {state.device} "
            f"(Triton installed: {HAS_TRITON}); use ssd_update, which falls back to ssd_step"
        )
    b, h, p, n = state.shape
    if h % B.shape[1] or h % C.shape[1] or h % x.shape[1]:
        raise ValueError(f"x, B and C group counts must divide nheads={h}, got {x.shape[1]}, {B.shape[1]} and "
                         f"{C.shape[1]}")
    y = torch.empty(b, h, p, device=state.device, dtype=out_dtype or torch.float32)
    if D is not None:
        Dm = D if D.dim() == 2 else D.view(h, 1).expand(h, p)
        d_strides = (Dm.stride(0), Dm.stride(1))
    else:
        Dm, d_strides = state, (0, 0)
    block_n = triton.next_power_of_2(n)
    block_p = min(triton.next_power_of_2(p), max(1, 8192 // block_n), 64)
    grid = (triton.cdiv(p, block_p), b * h)
    _ssd_update_kernel[grid](
        state, x, dt, A, B, C, Dm, A if dt_bias is None else dt_bias, y,
        h, p, n, h // x.shape[1], h // B.shape[1], h // C.shape[1],
        *state.stride(), *x.stride(), *dt.stride(), *B.stride(), *C.stride(), *d_strides, *y.stride(),
        HAS_D=D is not None, HAS_DT_BIAS=dt_bias is not None, DT_SOFTPLUS=dt_softplus, A_IS_LOG=A_log,
        BLOCK_P=block_p, BLOCK_N=block_n, num_warps=4,
    )
    return state, y


def ssd_update(state, x, dt, A, B, C, D=None, fused: bool | None = None, dt_bias=None, dt_softplus: bool = False,
               A_log: bool = False, out_dtype=None):
    """One SSM decode step. Returns (new_state, y); see the module docstring for shapes and options.

    fused: None picks the fused in-place kernel when available and no gradient is needed through the step;
    True demands it; False forces the reference :func:`ssd_step` (which returns a new state tensor).
    """
    if fused is None:
        fused = (fused_update_available(state) and state.is_contiguous()
                 and not needs_grad(state, x, dt, A, B, C, D, dt_bias))
    if fused:
        return ssd_update_fused(state, x, dt, A, B, C, D, dt_bias, dt_softplus, A_log, out_dtype)
    h = state.shape[1]
    if dt_bias is not None:
        dt = dt.float() + dt_bias.float()
    if dt_softplus:
        dt = torch.nn.functional.softplus(dt.float())
    if A_log:
        A = -torch.exp(A.float())
    if x.shape[1] != h:
        x = x.repeat_interleave(h // x.shape[1], dim=1)
    new_state, y = ssd_step(state, x, dt, A, B, C, D)
    return new_state, y if out_dtype is None else y.to(out_dtype)


__all__ = ["HAS_TRITON", "fused_update_available", "needs_grad", "ssd_update", "ssd_update_fused"]
