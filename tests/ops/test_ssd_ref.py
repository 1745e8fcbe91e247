"""The reference SSD scan against the naive recurrence: forward, gradients, states, resets, chunking."""

from __future__ import annotations

import pytest
import torch

from tm_distill.ops import ssd_naive, ssd_scan, ssd_scan_ref, ssd_state, ssd_state_ref, ssd_step


def _inputs(b=2, l=37, h=4, p=8, n=6, g=2, dtype=torch.float64, seed=0, grad=False):
    gen = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=gen, dtype=dtype)  # noqa: E731
    x, B, C = r(b, l, h, p), r(b, l, g, n), r(b, l, g, n)
    dt = torch.nn.functional.softplus(r(b, l, h) - 1.0)
    A = -torch.exp(r(h) * 0.5)
    D = r(h)
    tensors = [x, dt, A, B, C, D]
    if grad:
        for t in tensors:
            t.requires_grad_(True)
    return tensors


@pytest.mark.parametrize("length,chunk", [(37, 8), (64, 16), (5, 64), (1, 4), (33, 32)])
def test_scan_equals_naive_forward(length, chunk):
    x, dt, A, B, C, D = _inputs(l=length)
    y, h = ssd_scan_ref(x, dt, A, B, C, chunk, D=D, return_final_states=True)
    y_ref, h_ref = ssd_naive(x, dt, A, B, C, D=D)
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(h, h_ref, rtol=1e-10, atol=1e-10)


def test_scan_equals_naive_gradients_fp64():
    ins = _inputs(l=23, grad=True)
    h0 = torch.randn(2, 4, 8, 6, dtype=torch.float64, requires_grad=True)
    z = torch.randn(2, 23, 4, 8, dtype=torch.float64, requires_grad=True)
    leaves = [*ins, h0, z]
    x, dt, A, B, C, D = ins
    w_y, w_h = torch.randn(2, 23, 4, 8, dtype=torch.float64), torch.randn(2, 4, 8, 6, dtype=torch.float64)

    y, h = ssd_scan_ref(x, dt, A, B, C, 7, D=D, z=z, initial_states=h0, return_final_states=True)
    g_scan = torch.autograd.grad((y * w_y).sum() + (h * w_h).sum(), leaves)
    y2, h2 = ssd_naive(x, dt, A, B, C, D=D, z=z, initial_states=h0)
    g_naive = torch.autograd.grad((y2 * w_y).sum() + (h2 * w_h).sum(), leaves)
    for name, a, b in zip(["x", "dt", "A", "B", "C", "D", "h0", "z"], g_scan, g_naive):
        assert a.abs().sum() > 0, name
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9, msg=f"grad of {name}")


def test_initial_state_and_split_scan_equals_whole():
    x, dt, A, B, C, D = _inputs(l=41)
    y_whole, h_whole = ssd_scan_ref(x, dt, A, B, C, 8, D=D, return_final_states=True)
    for split in (1, 13, 16, 40):
        y1, h1 = ssd_scan_ref(x[:, :split], dt[:, :split], A, B[:, :split], C[:, :split], 8, D=D,
                              return_final_states=True)
        y2, h2 = ssd_scan_ref(x[:, split:], dt[:, split:], A, B[:, split:], C[:, split:], 8, D=D,
                              initial_states=h1, return_final_states=True)
        torch.testing.assert_close(torch.cat([y1, y2], 1), y_whole, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(h2, h_whole, rtol=1e-10, atol=1e-10)


def test_initial_state_matches_naive():
    x, dt, A, B, C, D = _inputs(l=19)
    h0 = torch.randn(2, 4, 8, 6, dtype=torch.float64)
    y, h = ssd_scan_ref(x, dt, A, B, C, 6, D=D, initial_states=h0, return_final_states=True)
    y_ref, h_ref = ssd_naive(x, dt, A, B, C, D=D, initial_states=h0)
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(h, h_ref, rtol=1e-10, atol=1e-10)


def test_seq_idx_resets_equal_separate_documents():
    x, dt, A, B, C, D = _inputs(b=1, l=30)
    h0 = torch.randn(1, 4, 8, 6, dtype=torch.float64)
    bounds = [0, 7, 19, 30]  # three packed documents; boundaries not on chunk edges (chunk 8)
    seq_idx = torch.zeros(1, 30, dtype=torch.long)
    for i, (s, e) in enumerate(zip(bounds, bounds[1:])):
        seq_idx[:, s:e] = i
    y, h = ssd_scan_ref(x, dt, A, B, C, 8, D=D, initial_states=h0, seq_idx=seq_idx, return_final_states=True)
    y_naive, h_naive = ssd_naive(x, dt, A, B, C, D=D, initial_states=h0, seq_idx=seq_idx)
    torch.testing.assert_close(y, y_naive, rtol=1e-10, atol=1e-10)
    for i, (s, e) in enumerate(zip(bounds, bounds[1:])):
        y_doc, h_doc = ssd_naive(x[:, s:e], dt[:, s:e], A, B[:, s:e], C[:, s:e], D=D,
                                 initial_states=h0 if i == 0 else None)
        torch.testing.assert_close(y[:, s:e], y_doc, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(h, h_doc, rtol=1e-10, atol=1e-10)
    # gradients stay finite through the -inf log-decays of the resets
    xg = x.clone().requires_grad_(True)
    dtg = dt.clone().requires_grad_(True)
    ssd_scan_ref(xg, dtg, A, B, C, 8, seq_idx=seq_idx).sum().backward()
    assert torch.isfinite(xg.grad).all() and torch.isfinite(dtg.grad).all()


def test_step_equals_scan_token_by_token():
    x, dt, A, B, C, D = _inputs(l=9)
    y_scan, h_scan = ssd_scan_ref(x, dt, A, B, C, 4, D=D, return_final_states=True)
    h = torch.zeros(2, 4, 8, 6, dtype=torch.float64)
    for t in range(9):
        h, y = ssd_step(h, x[:, t], dt[:, t], A, B[:, t], C[:, t], D)
        torch.testing.assert_close(y, y_scan[:, t], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(h, h_scan, rtol=1e-10, atol=1e-10)


def test_fp32_and_bf16_inputs_compute_in_fp32():
    x, dt, A, B, C, D = _inputs(l=20, dtype=torch.float32)
    y32 = ssd_scan_ref(x, dt, A, B, C, 8, D=D)
    y64, _ = ssd_naive(*(t.double() for t in (x, dt, A, B, C)), D=D.double())
    torch.testing.assert_close(y32.double(), y64, rtol=1e-4, atol=1e-4)
    y_bf = ssd_scan_ref(x.bfloat16(), dt, A, B.bfloat16(), C.bfloat16(), 8, D=D)
    assert y_bf.dtype == torch.bfloat16
    torch.testing.assert_close(y_bf.float(), y32, rtol=0.05, atol=0.1)


def test_dispatch_torch_backend_is_the_reference():
    x, dt, A, B, C, D = _inputs(l=12)
    torch.testing.assert_close(ssd_scan(x, dt, A, B, C, 4, D=D, backend="torch"), ssd_scan_ref(x, dt, A, B, C, 4, D=D))
    with pytest.raises(ValueError, match="unknown SSM backend"):
        ssd_scan(x, dt, A, B, C, 4, backend="cuda-magic")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize("packed", [False, True], ids=["plain", "packed"])
def test_final_state_only_scan_is_the_full_scans_state(dtype, packed):
    """The Memory Converter's final-state-only scan: bitwise the full scan's final state, no outputs computed."""
    x, dt, A, B, C, _ = _inputs(l=45, dtype=dtype)
    h0 = torch.randn(2, 4, 8, 6, generator=torch.Generator().manual_seed(1), dtype=dtype)
    seq_idx = (torch.arange(45) >= 20).int().expand(2, 45).contiguous() if packed else None
    _, h = ssd_scan_ref(x, dt, A, B, C, 16, initial_states=h0, seq_idx=seq_idx, return_final_states=True)
    assert torch.equal(ssd_state_ref(x, dt, A, B, 16, initial_states=h0, seq_idx=seq_idx), h)
    assert torch.equal(ssd_state(x, dt, A, B, 16, initial_states=h0, seq_idx=seq_idx, backend="torch"), h)


def test_folded_dt_bias_softplus_and_A_log_equal_the_unfolded_inputs():
    """dt_bias/dt_softplus (scan, state, step) and A_log, grouped x (step): the same as passing the results."""
    x, dt, A, B, C, D = _inputs(dtype=torch.float32)
    raw, bias = torch.randn(dt.shape, generator=torch.Generator().manual_seed(1)), torch.randn(dt.shape[-1])
    soft = torch.nn.functional.softplus(raw + bias)
    y, h = ssd_scan(x, raw, A, B, C, 8, D=D, return_final_states=True, dt_bias=bias, dt_softplus=True)
    y_ref, h_ref = ssd_scan_ref(x, soft, A, B, C, chunk_size=8, D=D, return_final_states=True)
    assert torch.equal(y, y_ref) and torch.equal(h, h_ref)
    assert torch.equal(ssd_state(x, raw, A, B, 8, dt_bias=bias, dt_softplus=True), ssd_state_ref(x, soft, A, B, 8))
    from tm_distill.ops import ssd_update

    state = torch.randn(2, 4, 8, 6)
    A_log = torch.log(-A)
    xg = x[:, 0, ::2]  # (b, 2 groups, p): heads 0-1 read group 0, heads 2-3 group 1
    s_new, y1 = ssd_update(state, xg, raw[:, 0], A_log, B[:, 0], C[:, 0], D, dt_bias=bias, dt_softplus=True,
                           A_log=True, out_dtype=torch.bfloat16)
    s_ref, y_ref1 = ssd_step(state, xg.repeat_interleave(2, dim=1), soft[:, 0], -torch.exp(A_log), B[:, 0], C[:, 0], D)
    assert y1.dtype == torch.bfloat16  # same math; einsum may contract strided and contiguous inputs in another order
    torch.testing.assert_close(s_new, s_ref, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(y1, y_ref1.to(torch.bfloat16), rtol=1e-2, atol=1e-2)
