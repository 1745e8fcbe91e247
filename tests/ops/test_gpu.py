"""GPU path: mamba-ssm's Triton scan and our fused decode step against the PyTorch reference (needs CUDA).

Errors are relative Frobenius norms against the reference run in fp32 on upcast inputs; fp32 kernels use
tf32 dots inside Triton (~1e-3), bf16 inputs land near 1e-2.
"""

from __future__ import annotations

import pytest
import torch

from tm_distill.convert import seed_student
from tm_distill.models import TransMambaCache
from tm_distill.ops import HAS_MAMBA_SSM, ssd_scan, ssd_scan_ref, ssd_step, ssd_update, ssd_update_fused

from tests.conftest import tiny_llama

pytestmark = pytest.mark.gpu
needs_mamba = pytest.mark.skipif(not HAS_MAMBA_SSM, reason="mamba-ssm not installed")
TOL = {torch.float32: 5e-3, torch.bfloat16: 4e-2}


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    assert torch.isfinite(a).all(), "non-finite values in the fast path"
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def make_inputs(dtype, b=2, seqlen=333, h=8, p=32, g_b=2, g_c=2, n=32, seed=0, packed=False, init=True):
    gen = torch.Generator(device="cuda").manual_seed(seed)

    def rnd(*s, scale=1.0):
        return (torch.randn(*s, device="cuda", generator=gen) * scale).to(dtype)

    inp = dict(
        x=rnd(b, seqlen, h, p),
        dt=torch.nn.functional.softplus(torch.randn(b, seqlen, h, device="cuda", generator=gen) - 2.0),
        A=-torch.rand(h, device="cuda", generator=gen) * 4 - 0.5,
        B=rnd(b, seqlen, g_b, n, scale=0.5),
        C=rnd(b, seqlen, g_c, n, scale=0.5),
        D=torch.randn(h, device="cuda", generator=gen),
    )
    if init:
        inp["initial_states"] = torch.randn(b, h, p, n, device="cuda", generator=gen) * 0.5
    if packed:
        cuts = torch.tensor([0, seqlen // 3, seqlen // 3 + 77], device="cuda")
        inp["seq_idx"] = (torch.arange(seqlen, device="cuda")[None, :] >= cuts[:, None]).sum(0).int() - 1
        inp["seq_idx"] = inp["seq_idx"].expand(b, seqlen).contiguous()
    return inp


# Each distinct (dtype, initial states, seq_idx) compiles and autotunes mamba-ssm's kernels anew (tens of
# seconds each on the device), so the features are combined: "full" has initial states, packed seq_idx, an odd
# length and the student's GQA layout (B per KV group, C per query head).
CASES = {
    "fp32-plain-odd": (torch.float32, dict(init=False)),
    "fp32-full": (torch.float32, dict(packed=True, g_b=2, g_c=8)),
    "fp32-full-short": (torch.float32, dict(packed=True, g_b=2, g_c=8, seqlen=17, b=3)),
    "bf16-full": (torch.bfloat16, dict(packed=True, g_b=2, g_c=8)),
    "bf16-full-short": (torch.bfloat16, dict(packed=True, g_b=2, g_c=8, seqlen=17, b=3)),
}


@needs_mamba
@pytest.mark.parametrize("case", list(CASES))
def test_mamba_scan_matches_reference_forward_and_grad(case):
    dtype, kw = CASES[case]
    inp = make_inputs(dtype, **kw)
    leaves = {k: v.detach().clone().requires_grad_(v.is_floating_point()) for k, v in inp.items()}
    ref_leaves = {k: v.detach().float().clone().requires_grad_(v.is_floating_point()) if v.is_floating_point()
                  else v for k, v in inp.items()}
    y, h = ssd_scan(**leaves, chunk_size=64, return_final_states=True, backend="mamba_ssm")
    y_ref, h_ref = ssd_scan_ref(**ref_leaves, chunk_size=64, return_final_states=True)
    errs = {"y": rel(y, y_ref), "final_state": rel(h, h_ref)}
    gy = torch.randn_like(y_ref)
    gh = torch.randn_like(h_ref)
    (y.float() * gy).sum().add_((h.float() * gh).sum()).backward()
    (y_ref * gy).sum().add_((h_ref * gh).sum()).backward()
    for k, v in leaves.items():
        if v.requires_grad:
            errs[f"grad_{k}"] = rel(v.grad, ref_leaves[k].grad)
    print(f"{case}: " + " ".join(f"{k}={e:.1e}" for k, e in errs.items()))
    bad = {k: e for k, e in errs.items() if e > TOL[dtype]}
    assert not bad, f"fast scan differs from the reference ({case}): {bad}"


@needs_mamba
def test_long_sequences_are_scanned_in_exact_segments(monkeypatch):
    import tm_distill.ops as ops

    inp = make_inputs(torch.float32, packed=True, g_b=2, g_c=8, seqlen=333)
    inp["seq_idx"][:, 128:] += 1  # a document boundary exactly on a segment boundary
    monkeypatch.setattr(ops, "_MAX_SEGMENT", 64)
    y, h = ssd_scan(**inp, return_final_states=True, backend="mamba_ssm")
    y_ref, h_ref = ssd_scan_ref(**inp, return_final_states=True)
    assert rel(y, y_ref) < 5e-3 and rel(h, h_ref) < 5e-3


@needs_mamba
def test_auto_backend_runs_mamba_on_cuda_and_split_scan_equals_whole():
    inp = make_inputs(torch.float32, init=False)
    y_whole, h_whole = ssd_scan(**inp, return_final_states=True)
    cut = 200  # the Memory Converter: scan the prefix, hand its state to the suffix
    pre = {k: v[:, :cut] if v.dim() >= 3 else v for k, v in inp.items()}
    post = {k: v[:, cut:] if v.dim() >= 3 else v for k, v in inp.items()}
    _, h_pre = ssd_scan(**pre, return_final_states=True)
    y_post, h_post = ssd_scan(**post, initial_states=h_pre, return_final_states=True)
    assert rel(y_post, y_whole[:, cut:]) < 5e-3 and rel(h_post, h_whole) < 5e-3


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("groups,p,n", [(8, 64, 64), (2, 128, 128), (1, 48, 40)])
def test_fused_decode_step_matches_ssd_step(dtype, groups, p, n):
    b, h = 3, 8
    state = torch.randn(b, h, p, n, device="cuda")
    x, dt = torch.randn(b, h, p, device="cuda").to(dtype), torch.rand(b, h, device="cuda") * 0.2
    A, D = -torch.rand(h, device="cuda") * 4, torch.randn(h, device="cuda")
    B = torch.randn(b, groups, n, device="cuda").to(dtype)
    C = torch.randn(b, h if groups == 2 else groups, n, device="cuda").to(dtype)  # groups=2: the student's GQA
    s_ref, y_ref = ssd_step(state.clone(), x, dt, A, B, C, D)
    poisoned = state.clone()
    s_new, y = ssd_update_fused(poisoned, x, dt, A, B, C, D)
    assert s_new.data_ptr() == poisoned.data_ptr(), "the fused step must update the state in place"
    assert rel(s_new, s_ref) < 1e-5 and rel(y, y_ref) < 1e-5
    _, y2 = ssd_update(state.clone(), x, dt, A, B, C, D.view(h, 1).expand(h, p).contiguous())
    assert rel(y2, y_ref) < 1e-5


def _student(num_kv_heads, transpoints, dtype):
    teacher = tiny_llama(num_kv_heads=num_kv_heads, num_layers=4, seed=1).to("cuda", dtype)
    return seed_student(teacher, transpoints, None, "tiny", seed=0, dtype=dtype).to("cuda").eval()


@needs_mamba
@pytest.mark.parametrize("kv", [4, 2], ids=["mha", "gqa"])
def test_student_cached_decode_equals_full_forward_on_gpu(kv):
    model = _student(kv, [0, 5, 12, 30], torch.float32)
    ids = torch.randint(0, 97, (2, 40), device="cuda")
    with torch.no_grad():
        full = model(ids).logits
        cache = TransMambaCache(4)
        out = [model(ids[:, :3], past_key_values=cache, use_cache=True).logits]
        for t in range(3, 40):
            out.append(model(ids[:, t : t + 1], past_key_values=cache, use_cache=True).logits)
    step = torch.cat(out, dim=1)
    assert rel(step, full) < 5e-3
    assert all(cache.kv_length(i) == 0 for i in range(4)), "layers past their TransPoint must drop their KV"


@needs_mamba
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_cuda_graph_decode_equals_eager_decode(dtype):
    from tm_distill.ops.graphs import DecodeGraph

    model = _student(2, [0, 4, 8, 16], dtype)
    ids = torch.randint(0, 97, (2, 48), device="cuda")
    with torch.no_grad():
        eager_cache, graph_cache = TransMambaCache(4), TransMambaCache(4)
        model(ids[:, :20], past_key_values=eager_cache, use_cache=True)
        model(ids[:, :20], past_key_values=graph_cache, use_cache=True)
        step = DecodeGraph(model, graph_cache)
        for t in range(20, 48):
            e = model(ids[:, t : t + 1], past_key_values=eager_cache, use_cache=True).logits
            g = step(ids[:, t : t + 1])
            assert rel(g, e) < 1e-5 if dtype == torch.float32 else rel(g, e) < 1e-2
        assert graph_cache.seen_tokens == eager_cache.seen_tokens == 48
        full = model(ids).logits[:, -1:]
    assert rel(g, full) < (5e-3 if dtype == torch.float32 else 5e-2)
