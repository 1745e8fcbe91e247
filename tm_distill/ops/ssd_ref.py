"""Pure-PyTorch reference of the Mamba-2 SSD scan: the spec every fast kernel is tested against.

Shapes follow mamba-ssm's ``mamba_chunk_scan_combined`` so the two are interchangeable:

- ``x``:  (batch, seqlen, nheads, headdim)        the SSM input (our V, repeated to the query heads)
- ``dt``: (batch, seqlen, nheads)                 step sizes, already positive (softplus applied by the caller)
- ``A``:  (nheads,)                               negative decay rates
- ``B``:  (batch, seqlen, ngroups, dstate)        our K (groups broadcast over heads)
- ``C``:  (batch, seqlen, ngroups, dstate)        our Q
- ``D``:  (nheads,) or (nheads, headdim)          skip term, optional
- ``z``:  (batch, seqlen, nheads, headdim)        gate, optional: ``y * silu(z)``
- state:  (batch, nheads, headdim, dstate)

The recurrence is ``h_t = exp(A dt_t) h_{t-1} + dt_t x_t B_tᵀ``, ``y_t = h_t C_t + D x_t``.
``seq_idx`` (batch, seqlen) marks packed documents: the state is reset where it changes, so nothing leaks
between documents; an initial state only reaches the first document.

The chunked scan never subtracts cumulative sums (it only adds log-decays forward inside a chunk and carries
the state across chunks in a loop), so a reset (log-decay ``-inf``) is exact and gradients stay finite.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _expand_groups(t: torch.Tensor, nheads: int) -> torch.Tensor:
    """(b, l, g, n) -> (b, l, h, n) by repeating each group over its heads."""
    groups = t.shape[2]
    if groups == nheads:
        return t
    if nheads % groups:
        raise ValueError(f"nheads={nheads} is not a multiple of ngroups={groups}")
    return t.repeat_interleave(nheads // groups, dim=2)


def _log_decay(dt: torch.Tensor, A: torch.Tensor, seq_idx: torch.Tensor | None) -> torch.Tensor:
    """Per-token log-decay ``A dt`` (b, l, h), ``-inf`` at the first token of every new document."""
    a = dt * A.view(1, 1, -1)
    if seq_idx is not None:
        starts = torch.zeros_like(seq_idx, dtype=torch.bool)
        starts[:, 1:] = seq_idx[:, 1:] != seq_idx[:, :-1]
        a = a.masked_fill(starts.unsqueeze(-1), float("-inf"))
    return a


def _segsum(a: torch.Tensor) -> torch.Tensor:
    """a: (..., q) -> (..., q, q) with out[i, j] = sum_{j<r<=i} a_r for j <= i, -inf above the diagonal."""
    q = a.shape[-1]
    a = a.unsqueeze(-1).expand(*a.shape, q)  # [..., r, j] = a_r
    strict = torch.tril(torch.ones(q, q, dtype=torch.bool, device=a.device), diagonal=-1)
    a = a.masked_fill(~strict, 0.0)
    out = torch.cumsum(a, dim=-2)
    causal = torch.tril(torch.ones(q, q, dtype=torch.bool, device=a.device))
    return out.masked_fill(~causal, float("-inf"))


def ssd_scan_ref(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    chunk_size: int = 64,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    initial_states: torch.Tensor | None = None,
    seq_idx: torch.Tensor | None = None,
    return_final_states: bool = False,
):
    """Chunked SSD scan in fp32 (fp64 for fp64 inputs). Returns ``y`` (b, l, h, p) in x's dtype, and the final state if asked."""
    out_dtype = x.dtype
    cd = torch.promote_types(x.dtype, torch.float32)  # fp32, or fp64 when given fp64
    b, l, h, p = x.shape
    xf, dtf, Af = x.to(cd), dt.to(cd), A.to(cd)
    Bf = _expand_groups(B.to(cd), h)
    Cf = _expand_groups(C.to(cd), h)
    n = Bf.shape[-1]
    a = _log_decay(dtf, Af, seq_idx)  # (b, l, h)
    state = initial_states.to(cd) if initial_states is not None else x.new_zeros(b, h, p, n, dtype=cd)
    ys = []
    for start in range(0, l, chunk_size):
        sl = slice(start, min(start + chunk_size, l))
        xc, dtc, ac, Bc, Cc = xf[:, sl], dtf[:, sl], a[:, sl], Bf[:, sl], Cf[:, sl]
        ah = ac.transpose(1, 2)  # (b, h, q)
        # Inside the chunk: y_t += sum_{s<=t} exp(sum_{s<r<=t} a_r) (C_t . B_s) dt_s x_s
        L = torch.exp(_segsum(ah))  # (b, h, q, q)
        scores = torch.einsum("bthn,bshn->bhts", Cc, Bc) * L
        y = torch.einsum("bhts,bsh,bshp->bthp", scores, dtc, xc)
        # From the carried state: y_t += exp(sum_{r<=t} a_r) h_prev C_t
        decay_in = torch.exp(torch.cumsum(ah, dim=-1))  # (b, h, q)
        y = y + torch.einsum("bhpn,bthn,bht->bthp", state, Cc, decay_in)
        ys.append(y)
        state = _carry(state, ah, decay_in, dtc, xc, Bc)
    y = torch.cat(ys, dim=1)
    if D is not None:
        Df = D.to(cd)
        y = y + xf * (Df.view(1, 1, h, -1) if Df.dim() == 2 else Df.view(1, 1, h, 1))
    if z is not None:
        y = y * F.silu(z.to(cd))
    y = y.to(out_dtype)
    return (y, state) if return_final_states else y


def _carry(state, ah, decay_in, dtc, xc, Bc):
    """The state after a chunk: h = exp(sum a) h_prev + sum_s exp(sum_{s<r<=end} a_r) dt_s x_s B_sᵀ."""
    return state * decay_in[..., -1, None, None] + torch.einsum(
        "bhs,bsh,bshp,bshn->bhpn", _decay_after(ah), dtc, xc, Bc
    )


def ssd_state_ref(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    chunk_size: int = 64,
    initial_states: torch.Tensor | None = None,
    seq_idx: torch.Tensor | None = None,
) -> torch.Tensor:
    """Only the final state of :func:`ssd_scan_ref` (the Memory Converter's state), no outputs: (b, h, p, n).

    The same chunk loop and carry as the full scan, so the state is bitwise the one ``ssd_scan_ref`` returns.
    """
    cd = torch.promote_types(x.dtype, torch.float32)
    b, l, h, p = x.shape
    xf, dtf = x.to(cd), dt.to(cd)
    Bf = _expand_groups(B.to(cd), h)
    a = _log_decay(dtf, A.to(cd), seq_idx)
    state = initial_states.to(cd) if initial_states is not None else x.new_zeros(b, h, p, Bf.shape[-1], dtype=cd)
    for start in range(0, l, chunk_size):
        sl = slice(start, min(start + chunk_size, l))
        ah = a[:, sl].transpose(1, 2)
        state = _carry(state, ah, torch.exp(torch.cumsum(ah, dim=-1)), dtf[:, sl], xf[:, sl], Bf[:, sl])
    return state


def _decay_after(ah: torch.Tensor) -> torch.Tensor:
    """exp(sum_{s<r<=end} a_r) per s, exact with -inf entries (no subtraction of infinities)."""
    shifted = torch.cat([ah[..., 1:], torch.zeros_like(ah[..., :1])], dim=-1)  # a_{s+1}, 0 at the end
    return torch.exp(torch.flip(torch.cumsum(torch.flip(shifted, [-1]), dim=-1), [-1]))


def ssd_naive(x, dt, A, B, C, D=None, z=None, initial_states=None, seq_idx=None):
    """Token-by-token recurrence, the definition itself. Returns (y, final_state); slow, for tests only."""
    b, l, h, p = x.shape
    cd = torch.promote_types(x.dtype, torch.float32)
    Bf = _expand_groups(B.to(cd), h)
    Cf = _expand_groups(C.to(cd), h)
    state = initial_states.to(cd) if initial_states is not None else x.new_zeros(b, h, p, Bf.shape[-1], dtype=cd)
    ys = []
    for t in range(l):
        decay = torch.exp(dt[:, t].to(cd) * A.to(cd))  # (b, h)
        if seq_idx is not None and t > 0:
            decay = decay * (seq_idx[:, t] == seq_idx[:, t - 1]).to(cd).unsqueeze(-1)
        state, y = ssd_step(state, x[:, t], dt[:, t], A, Bf[:, t], Cf[:, t], D, decay=decay)
        ys.append(y)
    y = torch.stack(ys, dim=1)
    if z is not None:
        y = y * F.silu(z.to(cd))
    return y.to(x.dtype), state


def ssd_step(state, x, dt, A, B, C, D=None, decay=None):
    """One recurrent step. state (b, h, p, n); x (b, h, p); dt (b, h); B, C (b, h or g, n).

    Returns (new_state, y) with y (b, h, p) in fp32 (fp64 for fp64 inputs). ``decay`` overrides
    ``exp(A dt)`` (used for resets).
    """
    h = x.shape[1]
    cd = torch.promote_types(x.dtype, torch.float32)
    Bf = B.to(cd) if B.shape[1] == h else B.to(cd).repeat_interleave(h // B.shape[1], dim=1)
    Cf = C.to(cd) if C.shape[1] == h else C.to(cd).repeat_interleave(h // C.shape[1], dim=1)
    dtf = dt.to(cd)
    if decay is None:
        decay = torch.exp(dtf * A.to(cd))
    new_state = state.to(cd) * decay[..., None, None] + torch.einsum("bh,bhp,bhn->bhpn", dtf, x.to(cd), Bf)
    y = torch.einsum("bhpn,bhn->bhp", new_state, Cf)
    if D is not None:
        Df = D.to(cd)
        y = y + x.to(cd) * (Df.view(1, h, -1) if Df.dim() == 2 else Df.view(1, h, 1))
    return new_state, y
