"""Scan dispatch: mamba-ssm's Triton SSD kernel on CUDA when installed, the PyTorch reference elsewhere.

``ssd_scan`` takes the arguments of ``mamba_chunk_scan_combined`` (see ``ssd_ref`` for shapes) and a
``backend`` ("auto", "torch" or "mamba_ssm"). The reference is the spec; the fast path is tested against it.
``ssd_state`` is the final-state-only scan (the Memory Converter when no output row is needed: it skips
the output kernels). ``ssd_update`` is the one-token decode step (a fused Triton kernel on CUDA,
``ssd_step`` elsewhere); ``models.graphs.DecodeGraph`` captures whole decode steps in CUDA graphs.
"""

from __future__ import annotations

import importlib.util
import logging
from types import SimpleNamespace

import torch

from .decode import HAS_TRITON, fused_update_available, needs_grad, ssd_update, ssd_update_fused
from .feature_maps import FEATURE_MAPS
from .ssd_ref import ssd_naive, ssd_scan_ref, ssd_state_ref, ssd_step

HAS_MAMBA_SSM = importlib.util.find_spec("mamba_ssm") is not None

BACKENDS = ("auto", "torch", "mamba_ssm")
log = logging.getLogger(__name__)
# mamba-ssm's chunk kernels, called without its combined wrapper (``ssd_state``, and ``ssd_scan`` when nothing
# needs a gradient); False once they turned out not to match this code (their names are private).
_PRIVATE_KERNELS = True


class BackendUnavailable(RuntimeError):
    pass


def _kernels() -> SimpleNamespace:
    """mamba-ssm's Triton SSD modules, imported when a kernel first runs.

    The import sits in a try block on purpose: transformers' remote-code loader refuses a checkpoint from the Hub
    whose code imports a missing package outside one (``dynamic_module_utils.get_imports``), and this module is
    saved beside every student (``models/remote_code.py``), where mamba-ssm is optional.
    """
    try:
        from mamba_ssm.ops.triton import ssd_bmm, ssd_chunk_scan, ssd_chunk_state, ssd_combined, ssd_state_passing
    except ImportError as err:
        raise BackendUnavailable(f"mamba-ssm's kernels cannot be imported: {err}") from err
    return SimpleNamespace(bmm=ssd_bmm, chunk_scan=ssd_chunk_scan, chunk_state=ssd_chunk_state,
                           combined=ssd_combined, state_passing=ssd_state_passing)


def resolve_backend(backend: str, device: torch.device) -> str:
    """The backend that will actually run for tensors on ``device``."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown SSM backend {backend!r}: choose one of {', '.join(BACKENDS)}")
    if backend == "torch":
        return "torch"
    if backend == "mamba_ssm":
        if not HAS_MAMBA_SSM:
            raise BackendUnavailable(
                "SSM backend 'mamba_ssm' was requested but mamba-ssm is not installed: "
                "`pip install 'tm-distill[gpu]'` on a CUDA machine, or use backend 'torch'"
            )
        if device.type != "cuda":
            raise BackendUnavailable(f"SSM backend 'mamba_ssm' needs CUDA tensors, got device {device}")
        return "mamba_ssm"
    return "mamba_ssm" if (HAS_MAMBA_SSM and device.type == "cuda") else "torch"


def _dt_in(dt, dt_bias, dt_softplus: bool):
    """The reference paths' Δ: softplus(dt + dt_bias) when asked (mamba-ssm's kernels fold this in), fp32."""
    if dt_bias is not None:
        dt = dt.float() + dt_bias.float()
    return torch.nn.functional.softplus(dt.float()) if dt_softplus else dt


def _mamba_chunk_scan(x, dt, A, B, C, chunk_size, D, z, initial_states, seq_idx, return_final_states,
                      dt_bias=None, dt_softplus=False):
    h = x.shape[2]
    if B.shape[2] != C.shape[2]:  # the kernel wants one group count for B and C
        g = max(B.shape[2], C.shape[2])
        B = B.repeat_interleave(g // B.shape[2], dim=2) if B.shape[2] != g else B
        C = C.repeat_interleave(g // C.shape[2], dim=2) if C.shape[2] != g else C
    assert h % B.shape[2] == 0
    if seq_idx is not None:  # mamba-ssm hands initial_states only to document id 0: number documents from 0
        seq_idx = (seq_idx - seq_idx[:, :1]).to(torch.int32).contiguous()
    if x.shape[1] > _MAX_SEGMENT:
        return _segmented(x, dt, A, B, C, chunk_size, D, z, initial_states, seq_idx, return_final_states,
                          dt_bias, dt_softplus)
    if z is None and _PRIVATE_KERNELS and not needs_grad(x, dt, A, B, C, D, initial_states, dt_bias):
        try:
            out, final = _mamba_scan_no_grad(x, dt, A, B, C, chunk_size, D, initial_states, seq_idx, dt_bias,
                                             dt_softplus)
            return (out, final) if return_final_states else out
        except (AttributeError, TypeError) as err:
            _private_kernels_unusable(err)
    out = _kernels().combined.mamba_chunk_scan_combined(
        x.contiguous(),
        dt.contiguous(),
        A.float(),
        B.contiguous(),
        C.contiguous(),
        chunk_size,
        D=D,
        z=z,
        dt_bias=dt_bias,
        initial_states=initial_states,
        seq_idx=seq_idx,
        dt_softplus=dt_softplus,
        return_final_states=return_final_states,
    )
    return out


# mamba-ssm 2.3.2's kernels failed to launch ("Triton Error [CUDA]: invalid argument") on 131072 tokens on an
# H200 (2026-11-23) and ran at 32768. Longer sequences are scanned in segments, each handing its final state to
# the next as initial state: exact, by the same property the Memory Converter relies on.
_MAX_SEGMENT = 32768


def _segmented(x, dt, A, B, C, chunk_size, D, z, initial_states, seq_idx, return_final_states, dt_bias=None,
               dt_softplus=False):
    ys, state = [], initial_states
    for s in range(0, x.shape[1], _MAX_SEGMENT):
        sl = slice(s, s + _MAX_SEGMENT)
        if s > 0 and seq_idx is not None:  # a document starting here must not inherit the carried state
            same = (seq_idx[:, s] == seq_idx[:, s - 1]).to(state.dtype)
            state = state * same.view(-1, 1, 1, 1)
        y, state = _mamba_chunk_scan(
            x[:, sl], dt[:, sl], A, B[:, sl], C[:, sl], chunk_size, D, None if z is None else z[:, sl], state,
            None if seq_idx is None else seq_idx[:, sl], True, dt_bias, dt_softplus,
        )
        ys.append(y)
    y = torch.cat(ys, dim=1)
    return (y, state) if return_final_states else y


def ssd_scan(
    x,
    dt,
    A,
    B,
    C,
    chunk_size: int = 64,
    D=None,
    z=None,
    initial_states=None,
    seq_idx=None,
    return_final_states: bool = False,
    backend: str = "auto",
    dt_bias=None,
    dt_softplus: bool = False,
):
    """Run the SSD scan with the chosen backend. Same contract as :func:`ssd_scan_ref`, plus mamba-ssm's
    ``dt_bias`` (nheads,) and ``dt_softplus``: Δ = softplus(dt + dt_bias), folded into its kernels."""
    which = resolve_backend(backend, x.device)
    if which == "mamba_ssm":
        return _mamba_chunk_scan(x, dt, A, B, C, chunk_size, D, z, initial_states, seq_idx, return_final_states,
                                 dt_bias, dt_softplus)
    return ssd_scan_ref(
        x, _dt_in(dt, dt_bias, dt_softplus), A, B, C, chunk_size=chunk_size, D=D, z=z, initial_states=initial_states,
        seq_idx=seq_idx, return_final_states=return_final_states,
    )


def _private_kernels_unusable(err: Exception) -> None:
    global _PRIVATE_KERNELS
    log.warning("mamba-ssm's chunk kernels are unusable here (%s); the scan runs mamba_chunk_scan_combined", err)
    _PRIVATE_KERNELS = False


def _mamba_scan_no_grad(x, dt, A, B, C, chunk_size, D, initial_states, seq_idx, dt_bias, dt_softplus):
    """mamba-ssm's combined forward, its five kernels called directly: (out, final state fp32).

    What ``mamba_chunk_scan_combined`` runs when nothing needs a gradient, without its autograd Function and
    wrapper (einops rearranges, checks). On an H200 (2026-11-26) that wrapper took ~430 µs of host time per call
    of ~750 µs at 512 tokens, where the kernels take ~310 µs: a short prefill is host-bound, one scan per layer.
    """
    kernels = _kernels()
    b, _, h, p = x.shape
    n = B.shape[-1]
    x, B, C = x.contiguous(), B.contiguous(), C.contiguous()
    dA_cumsum, dt_c, states = _chunk_states(x, dt, A, B, chunk_size, seq_idx, dt_bias, dt_softplus)
    init = initial_states.reshape(b, h, p * n) if initial_states is not None else None
    states, final = kernels.state_passing._state_passing_fwd(
        states.reshape(*states.shape[:3], p * n), dA_cumsum[:, :, :, -1], initial_states=init, seq_idx=seq_idx,
        chunk_size=chunk_size, out_dtype=C.dtype,
    )
    states = states.reshape(*states.shape[:3], p, n)
    CB = kernels.bmm._bmm_chunk_fwd(C, B, chunk_size, seq_idx=seq_idx, output_dtype=torch.float32)
    out, _ = kernels.chunk_scan._chunk_scan_fwd(CB, x, dt_c, dA_cumsum, C, states, D=D, z=None, seq_idx=seq_idx)
    return out, final.reshape(b, h, p, n).float()


def _chunk_states(x, dt, A, B, chunk_size, seq_idx, dt_bias, dt_softplus):
    """mamba-ssm's first two kernels: (dA_cumsum, dt per chunk, each chunk's own state)."""
    kernels = _kernels()
    dA_cumsum, dt_c = kernels.chunk_state._chunk_cumsum_fwd(dt.contiguous(), A.float(), chunk_size, dt_bias=dt_bias,
                                        dt_softplus=dt_softplus)
    states = kernels.chunk_state._chunk_state_fwd(B, x, dt_c, dA_cumsum, seq_idx=seq_idx, states_in_fp32=True)
    return dA_cumsum, dt_c, states


def _mamba_final_state(x, dt, A, B, chunk_size, initial_states, seq_idx, dt_bias=None, dt_softplus=False):
    """mamba-ssm's forward without its output kernels: chunk cumsum, chunk states, state passing."""
    b, l, h, p = x.shape
    n = B.shape[-1]
    if seq_idx is not None:
        seq_idx = (seq_idx - seq_idx[:, :1]).to(torch.int32).contiguous()
    dA_cumsum, _, states = _chunk_states(x.contiguous(), dt, A, B.contiguous(), chunk_size, seq_idx, dt_bias,
                                         dt_softplus)
    init = initial_states.reshape(b, h, p * n) if initial_states is not None else None
    _, final = _kernels().state_passing._state_passing_fwd(
        states.reshape(*states.shape[:3], p * n), dA_cumsum[:, :, :, -1], initial_states=init, seq_idx=seq_idx,
        chunk_size=chunk_size, out_dtype=torch.float32,
    )
    return final.reshape(b, h, p, n).float()


def ssd_state(x, dt, A, B, chunk_size: int = 64, initial_states=None, seq_idx=None, backend: str = "auto",
              dt_bias=None, dt_softplus: bool = False):
    """The scan's final state only (b, h, p, n) fp32; same contract as :func:`ssd_state_ref` (``dt_bias``,
    ``dt_softplus`` as in :func:`ssd_scan`).

    On mamba-ssm it runs the chunk-state and state-passing kernels and skips the output ones (the combined
    scan's chunk_scan and bmm kernels), which is what a Memory Converter with no SSM row to emit needs.
    """
    which = resolve_backend(backend, x.device)
    if which == "mamba_ssm" and _PRIVATE_KERNELS and x.shape[1] <= _MAX_SEGMENT and not torch.is_grad_enabled():
        try:
            return _mamba_final_state(x, dt, A, B, chunk_size, initial_states, seq_idx, dt_bias, dt_softplus)
        except (AttributeError, TypeError) as err:  # mamba-ssm's private kernels moved: use the combined scan
            _private_kernels_unusable(err)
    if which == "mamba_ssm":  # long or differentiated: the full scan's state (segmented, autograd-aware)
        _, state = _mamba_chunk_scan(x, dt, A, B, B, chunk_size, None, None, initial_states, seq_idx, True,
                                     dt_bias, dt_softplus)
        return state
    return ssd_state_ref(x, _dt_in(dt, dt_bias, dt_softplus), A, B, chunk_size=chunk_size, initial_states=initial_states, seq_idx=seq_idx)


__all__ = ["BACKENDS", "FEATURE_MAPS", "HAS_MAMBA_SSM", "HAS_TRITON", "BackendUnavailable", "fused_update_available",
           "resolve_backend", "ssd_naive", "ssd_scan", "ssd_scan_ref", "ssd_state", "ssd_state_ref", "ssd_step",
           "ssd_update", "ssd_update_fused"]
