"""GPU path: mamba-ssm's Triton scan and our fused decode step against the PyTorch reference (needs CUDA).

Errors are relative Frobenius norms against the reference run in fp32 on upcast inputs; fp32 kernels use
tf32 dots inside Triton (~1e-3), bf16 inputs land near 1e-2.
"""

from __future__ import annotations

import pytest
import torch

from tm_distill.convert import seed_student
from tm_distill.models import TransMambaCache
from tm_distill.models import ATTENTION_ONLY
from tm_distill.models.cache import CACHE_KWARG
from tm_distill.ops import fused
from tm_distill.ops import (HAS_MAMBA_SSM, ssd_scan, ssd_scan_ref, ssd_state, ssd_step, ssd_update,
                            ssd_update_fused)

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
    from tm_distill.models.graphs import DecodeGraph

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


@needs_mamba
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_final_state_only_scan_matches_reference(dtype):
    inp = make_inputs(dtype, packed=True, g_b=2, g_c=8)
    with torch.no_grad():
        h = ssd_state(inp["x"], inp["dt"], inp["A"], inp["B"], 64, initial_states=inp["initial_states"],
                      seq_idx=inp["seq_idx"], backend="mamba_ssm")
        _, h_ref = ssd_scan_ref(**{k: v.float() if v.is_floating_point() else v for k, v in inp.items()},
                                chunk_size=64, return_final_states=True)
    assert h.dtype == torch.float32 and h.is_contiguous()
    assert rel(h, h_ref) < TOL[dtype]


INFER_TPS = [0, 3, 6, 11, ATTENTION_ONLY]  # prompts cross some TransPoints; decoding crosses the rest


@needs_mamba
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_static_cache_graph_decode_across_transpoints_equals_full_forward(dtype):
    """Every step a graph replay, from before the first TransPoint to past the last (a capture per phase)."""
    from tm_distill.models.graphs import DecodeGraph

    teacher = tiny_llama(num_kv_heads=2, num_layers=len(INFER_TPS), seed=1).to("cuda", dtype)
    model = seed_student(teacher, INFER_TPS, None, "tiny", seed=0, dtype=dtype).to("cuda").eval()
    ids = torch.randint(0, 97, (3, 20), device="cuda")
    with torch.no_grad():
        full = model(ids).logits
        eager_cache = TransMambaCache(len(INFER_TPS), max_length=24)
        graph_cache = TransMambaCache(len(INFER_TPS), max_length=24)
        model(ids[:, :2], past_key_values=eager_cache, use_cache=True)
        first = model(ids[:, :2], past_key_values=graph_cache, use_cache=True).logits
        step = DecodeGraph(model, graph_cache)
        graph_steps, eager_steps = [first], [first]
        for t in range(2, 20):
            eager_steps.append(model(ids[:, t : t + 1], past_key_values=eager_cache, use_cache=True).logits)
            graph_steps.append(step(ids[:, t : t + 1]).clone())
    g, e = torch.cat(graph_steps, 1), torch.cat(eager_steps, 1)
    assert rel(g, e) < (1e-5 if dtype == torch.float32 else 1e-2)
    assert rel(g, full) < (5e-3 if dtype == torch.float32 else 5e-2)
    assert step.captures >= 4, "each TransPoint crossed is a new phase"
    assert [graph_cache.kv_length(i) for i in range(len(INFER_TPS))] == [0, 0, 0, 0, 20]


@needs_mamba
def test_padded_generate_through_graphs_equals_each_prompt_alone():
    """model.generate with TransMambaCache(graphs=True): every decode step a replay, rows as if alone."""
    teacher = tiny_llama(num_kv_heads=2, num_layers=len(INFER_TPS), seed=1).to("cuda")
    model = seed_student(teacher, INFER_TPS, None, "tiny", seed=0).to("cuda").eval()
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(1, 97, (n,), generator=g).cuda() for n in (7, 4, 5)]
    width, new = 7, 12
    ids = torch.zeros(3, width, dtype=torch.long, device="cuda")
    mask = torch.zeros_like(ids)
    for r, p in enumerate(prompts):
        ids[r, width - len(p):], mask[r, width - len(p):] = p, 1
    cache = TransMambaCache(len(INFER_TPS), max_length=width + new, graphs=True)
    with torch.no_grad():
        out = model.generate(ids, attention_mask=mask, **{CACHE_KWARG: cache}, max_new_tokens=new,
                             do_sample=False, output_logits=True, return_dict_in_generate=True, pad_token_id=0,
                             eos_token_id=None)
        assert cache.decode_graph is not None and cache.decode_graph.captures >= 1
        for r, p in enumerate(prompts):
            tokens = out.sequences[r, width:]
            alone = model.generate(p[None], max_new_tokens=new, do_sample=False, pad_token_id=0, eos_token_id=None,
                                   output_logits=True, return_dict_in_generate=True)
            _same_tokens_up_to_a_near_tie(tokens, alone.sequences[0, len(p):], torch.stack(alone.logits, 1)[0])
            full = model(torch.cat([p, tokens])[None]).logits[0, len(p) - 1 : -1]
            assert rel(torch.stack(out.logits, 1)[r], full) < 5e-3


def _same_tokens_up_to_a_near_tie(got, want, want_logits, tie=1e-2):
    """Greedy tokens equal; the fast scan's tf32 rounding (~1e-3) may only flip a near tie of the logits."""
    differ = (got != want).nonzero()
    if len(differ):
        i = int(differ[0])
        top2 = want_logits[i].float().topk(2).values
        assert (top2[0] - top2[1]).item() < tie, f"tokens differ at step {i} without a near tie: {got} vs {want}"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_fused_decode_step_folds_dt_bias_softplus_A_log_and_grouped_x(dtype):
    """The mixer's decode step: raw Δ, its bias, A_log and x = V per KV head go into the kernel as they are."""
    b, h, g, p, n = 3, 8, 2, 64, 64
    gen = torch.Generator(device="cuda").manual_seed(0)
    r = lambda *s: torch.randn(*s, device="cuda", generator=gen)  # noqa: E731
    state, x = r(b, h, p, n), r(b, g, p).to(dtype)
    raw, bias, A_log = r(b, h).to(dtype), (r(h) - 4).to(dtype), (r(h) * 0.5).to(dtype)
    B, C, D = r(b, g, n).to(dtype), r(b, h, n).to(dtype), r(h).to(dtype)
    fold = dict(dt_bias=bias, dt_softplus=True, A_log=True, out_dtype=dtype)
    s_ref, y_ref = ssd_update(state.clone(), x, raw, A_log, B, C, D, fused=False, **fold)
    s_new, y = ssd_update(state, x, raw, A_log, B, C, D, fused=True, **fold)
    assert s_new.data_ptr() == state.data_ptr() and y.dtype == dtype
    assert rel(s_new, s_ref) < 1e-5 and rel(y, y_ref) < (1e-5 if dtype == torch.float32 else 1e-2)


@needs_mamba
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_mamba_scan_and_state_fold_dt_bias_and_softplus(dtype):
    inp = make_inputs(dtype, g_b=2, g_c=8, packed=True)  # documents (seq_idx): mamba-ssm's kernels
    gen = torch.Generator(device="cuda").manual_seed(1)
    raw = torch.randn(inp["dt"].shape, device="cuda", generator=gen).to(dtype)
    bias = (torch.randn(inp["dt"].shape[-1], device="cuda", generator=gen) - 3).to(dtype)
    soft = torch.nn.functional.softplus(raw.float() + bias.float())
    args = {k: inp[k] for k in ("x", "A", "B", "C", "D", "initial_states", "seq_idx")}
    with torch.no_grad():
        y, h = ssd_scan(**{**args, "dt": raw}, dt_bias=bias, dt_softplus=True, return_final_states=True,
                        backend="mamba_ssm")
        y_ref, h_ref = ssd_scan(**{**args, "dt": soft}, return_final_states=True, backend="mamba_ssm")
        s = ssd_state(inp["x"], raw, inp["A"], inp["B"], 64, initial_states=inp["initial_states"], dt_bias=bias,
                      dt_softplus=True, seq_idx=inp["seq_idx"], backend="mamba_ssm")
    assert rel(y, y_ref) < 1e-4 and rel(h, h_ref) < 1e-4 and rel(s, h_ref) < 1e-4


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_fused_llama_kernels_equal_transformers(dtype):
    """The fused RMSNorm and Liger's RoPE against transformers' functions; RoPE leaves its inputs unrotated."""
    from transformers.models.llama.modeling_llama import LlamaRMSNorm, apply_rotary_pos_emb

    gen = torch.Generator(device="cuda").manual_seed(0)
    r = lambda *s: torch.randn(*s, device="cuda", generator=gen).to(dtype)  # noqa: E731
    tol = 1e-6 if dtype == torch.float32 else 1e-2
    norm = LlamaRMSNorm(256, eps=1e-5).to("cuda", dtype)
    norm.weight.data = r(256)
    x = r(2, 37, 256)
    with torch.no_grad():
        assert fused.use_fused(x)
        assert rel(fused.rms_norm(x, norm.weight, norm.variance_epsilon), norm(x)) < tol
        q, k = r(2, 37, 8, 64), r(2, 37, 2, 64)  # (b, t, heads, d), as the mixer projects them
        angle = torch.arange(37, device="cuda")[:, None] * torch.rand(32, device="cuda", generator=gen)
        cos, sin = (torch.cat([f(angle)] * 2, -1)[None].to(dtype) for f in (torch.cos, torch.sin))
        q0, k0 = q.clone(), k.clone()
        got = fused.rotary(q.transpose(1, 2), k.transpose(1, 2), cos, sin)
        want = apply_rotary_pos_emb(q.transpose(1, 2), k.transpose(1, 2), cos, sin)
        assert torch.equal(q, q0) and torch.equal(k, k0), "the mixer's q and k (the SSM's C and B) must stay"
        assert all(g.shape == w.shape and rel(g, w) < tol for g, w in zip(got, want))
    assert not fused.use_fused(x), "with gradients (distillation) transformers' modules run"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_all_attention_student_on_the_inference_path_equals_teacher(dtype):
    """No gradient on CUDA: the student's fused norm/RoPE/MLP and cuDNN attention still give the teacher's logits."""
    teacher = tiny_llama(num_kv_heads=2, num_layers=3, seed=1).to("cuda", dtype).eval()
    student = seed_student(teacher, [ATTENTION_ONLY] * 3, None, "tiny", seed=0, dtype=dtype).to("cuda").eval()
    ids = torch.randint(0, 97, (2, 50), device="cuda")
    with torch.no_grad():
        want, got = teacher(ids).logits, student(ids).logits
        cached = student(ids, **{CACHE_KWARG: TransMambaCache(3, max_length=60)}, use_cache=True).logits
    assert rel(got, want) < (1e-5 if dtype == torch.float32 else 2e-2)
    assert rel(cached, want) < (1e-5 if dtype == torch.float32 else 2e-2)


@needs_mamba
@pytest.mark.parametrize("case", ["fp32-full", "bf16-full-short"])
def test_no_grad_scan_runs_mamba_kernels_without_their_wrapper_to_the_same_bits(case):
    """Without gradients ssd_scan calls mamba-ssm's five kernels itself: the combined function's exact output."""
    from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined

    dtype, kw = CASES[case]
    inp = make_inputs(dtype, **{**kw, "g_c": 2})
    with torch.no_grad():
        y, h = ssd_scan(**inp, chunk_size=64, return_final_states=True, backend="mamba_ssm")
        seq_idx = (inp["seq_idx"] - inp["seq_idx"][:, :1]).int().contiguous()
        y_ref, h_ref = mamba_chunk_scan_combined(**{**inp, "seq_idx": seq_idx}, chunk_size=64,
                                                 return_final_states=True)
    assert torch.equal(y, y_ref) and torch.equal(h, h_ref.float())
