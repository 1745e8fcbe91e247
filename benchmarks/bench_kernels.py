"""The scan and the decode step alone, against the device's measured ceilings (bf16, CUDA).

    python benchmarks/bench_kernels.py --out results/kernels.json

Prefill: ``ssd_scan(backend="mamba_ssm")`` for one mixer (32 heads; head dim 64 = 1B shape, 128 = 8B shape;
B given per KV group and repeated as the mixer does) vs PyTorch SDPA causal attention with GQA, forward and
forward+backward. Achieved bandwidth counts the fewest bytes the scan must move (x, B, C, dt read once, y
written once); FLOPs count the chunked SSD algorithm (per token and head 2QN + 2QP + 4PN with chunk Q).
Decode: one state update of every head: eager ``ssd_step``, our fused Triton ``ssd_update_fused``, and
mamba-ssm's ``selective_state_update`` (recorded as failed if it raises), each also inside a CUDA graph.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import ResultFile, capture_graph, ceilings, ints, parser, run_meta, timed  # noqa: E402
from tm_distill.ops import ssd_scan, ssd_step, ssd_update_fused  # noqa: E402

HEADS, KV_HEADS, CHUNK = 32, 8, 64


def scan_inputs(T, d, batch=1, grad=False):
    dev, bf = "cuda", torch.bfloat16
    x = torch.randn(batch, T, HEADS, d, device=dev, dtype=bf)
    dt = F.softplus(torch.randn(batch, T, HEADS, device=dev) - 3)
    A = -torch.rand(HEADS, device=dev) * 4 - 0.5
    B = torch.randn(batch, T, KV_HEADS, d, device=dev, dtype=bf) * 0.1
    C = torch.randn(batch, T, HEADS, d, device=dev, dtype=bf) * 0.1
    ts = [x, dt, B, C]
    if grad:
        for t in ts:
            t.requires_grad_(True)
    return x, dt, A, B, C


def bench_scan(rec, T, d, ceil):
    x, dt, A, B, C = scan_inputs(T, d)
    with torch.no_grad():
        ms = timed(lambda: ssd_scan(x, dt, A, B, C, CHUNK, backend="mamba_ssm"), 3, 10)
    nbytes = T * HEADS * (d * 2 + d * 2 + d * 2 + 4) + T * KV_HEADS * d * 2  # x, C, y, dt; B per KV group
    flops = T * HEADS * (2 * CHUNK * d + 2 * CHUNK * d + 4 * d * d)
    q = torch.randn(1, HEADS, T, d, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(1, KV_HEADS, T, d, device="cuda", dtype=torch.bfloat16)
    v = torch.randn_like(k)
    with torch.no_grad():
        ms_attn = timed(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True), 3, 10)
    rec.add(kind="scan_fwd", head_dim=d, context=T, ms=ms, sdpa_ms=ms_attn, bytes=nbytes, flops=flops,
            bytes_per_s=nbytes / ms * 1e3, flops_per_s=flops / ms * 1e3,
            frac_bw=nbytes / ms * 1e3 / ceil["copy_bytes_per_s"],
            frac_flops=flops / ms * 1e3 / ceil["bf16_matmul_flops"], attn_over_scan=ms_attn / ms)
    if T <= 32768:
        xg, dtg, Ag, Bg, Cg = scan_inputs(T, d, grad=True)
        gy = torch.randn_like(xg)

        def fb():
            y = ssd_scan(xg, dtg, Ag, Bg, Cg, CHUNK, backend="mamba_ssm")
            y.backward(gy)

        ms_fb = timed(fb, 2, 5)
        qg, kg, vg = (t.clone().requires_grad_(True) for t in (q, k, v))
        go = torch.randn_like(qg)

        def fb_attn():
            F.scaled_dot_product_attention(qg, kg, vg, is_causal=True, enable_gqa=True).backward(go)

        ms_fb_attn = timed(fb_attn, 2, 5)
        rec.add(kind="scan_fwd_bwd", head_dim=d, context=T, ms=ms_fb, sdpa_ms=ms_fb_attn,
                attn_over_scan=ms_fb_attn / ms_fb)


def bench_decode_step(rec, batch, d, T_attn=32768):
    dev = "cuda"
    state = torch.randn(batch, HEADS, d, d, device=dev)
    x = torch.randn(batch, HEADS, d, device=dev, dtype=torch.bfloat16)
    dt = torch.rand(batch, HEADS, device=dev) * 0.1
    A, D = -torch.rand(HEADS, device=dev), torch.randn(HEADS, device=dev)
    B = torch.randn(batch, KV_HEADS, d, device=dev, dtype=torch.bfloat16)
    C = torch.randn(batch, HEADS, d, device=dev, dtype=torch.bfloat16)
    Bh = B.repeat_interleave(HEADS // KV_HEADS, dim=1)
    state_bytes = 2 * state.numel() * 4  # read + write once
    variants = {
        "eager ssd_step": lambda: ssd_step(state, x, dt, A, Bh, C, D),
        "fused ssd_update_fused": lambda: ssd_update_fused(state, x, dt, A, Bh, C, D),
    }
    try:
        from mamba_ssm.ops.triton.selective_state_update import selective_state_update

        A_full = A[:, None, None].expand(HEADS, d, d)
        dt_full = dt[..., None].expand(batch, HEADS, d)
        D_full = D[:, None].expand(HEADS, d)
        variants["mamba_ssm selective_state_update"] = lambda: selective_state_update(
            state, x, dt_full, A_full, Bh, C, D_full
        )
    except Exception as err:  # noqa: BLE001
        rec.add(kind="decode_step", variant="mamba_ssm selective_state_update", status=f"import failed: {err}")
    for name, fn in variants.items():
        for mode in ("launch", "cuda_graph"):
            try:
                run = capture_graph(fn, warmup=1).replay if mode == "cuda_graph" else fn
                us = timed(lambda: [run() for _ in range(100)], 2, 5) * 10  # ms per 100 -> us per call
                rec.add(kind="decode_step", variant=name, mode=mode, batch=batch, head_dim=d, us=us,
                        bytes_per_s=state_bytes / us * 1e6, status="ok")
            except Exception as err:  # noqa: BLE001 - recorded, e.g. the TypeError seen under triton 3.6
                torch.cuda.synchronize()
                rec.add(kind="decode_step", variant=name, mode=mode, batch=batch, head_dim=d,
                        status=f"failed: {type(err).__name__}: {str(err)[:160]}")
    q = torch.randn(batch, HEADS, 1, d, device=dev, dtype=torch.bfloat16)
    k = torch.randn(batch, KV_HEADS, T_attn, d, device=dev, dtype=torch.bfloat16)
    v = torch.randn_like(k)
    fn = capture_graph(lambda: F.scaled_dot_product_attention(q, k, v, enable_gqa=True), warmup=1).replay
    us = timed(lambda: [fn() for _ in range(100)], 2, 5) * 10
    rec.add(kind="decode_step", variant=f"SDPA over {T_attn // 1024}k KV", mode="cuda_graph", batch=batch,
            head_dim=d, us=us, bytes_per_s=2 * k.numel() * 2 / us * 1e6, status="ok")


def main(argv=None):
    ap = parser(__doc__)
    ap.add_argument("--contexts", default="2048,8192,32768,131072")
    ap.add_argument("--head-dims", default="64,128")
    ap.add_argument("--out", default="kernels.json")
    args = ap.parse_args(argv)
    meta = {**run_meta(__file__, argv, "cuda"), **ceilings()}
    rec = ResultFile(args.out, meta)
    print(json.dumps(meta), flush=True)
    for d in ints(args.head_dims):
        for T in ints(args.contexts):
            bench_scan(rec, T, d, meta)
        for b in (1, 16):
            bench_decode_step(rec, b, d)


if __name__ == "__main__":
    main()
