"""The student computes the teacher before its TransPoints, the SSM after them, and decodes like a full forward.

Acceptance items 1 (all-attention == teacher), 2 (mixed schedules), 3 (Memory Converter) and 4 (hybrid cache).
"""

from __future__ import annotations

import pytest
import torch

from tests.conftest import tiny_llama
from tm_distill.convert import parse_transpoints, seed_student
from tm_distill.models import ATTENTION_ONLY, TransMambaCache
from tm_distill.ops import ssd_naive

V9 = "cycle=0,128,256,512,1024,2048,4096,8192"


def _ids(vocab: int, length: int, seed: int = 0, batch: int = 1) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(seed))


def _student(teacher, spec: str, **options):
    tps = parse_transpoints(spec, teacher.config.num_hidden_layers)
    return seed_student(teacher, tps, spec, "test", seed=1, **options)


@pytest.fixture(scope="module")
def real_ids(smol, real_text):
    return smol.tokenizer(real_text, return_tensors="pt").input_ids[:, :256]


# ------------------------------------------------------------------ 1. every P >= T: the teacher exactly
@pytest.mark.parametrize("spec", ["attn", "all=48", "cycle=48,100,attn"])
def test_all_attention_equals_teacher_tiny(tiny_teacher, spec):
    ids = _ids(97, 48, batch=2)
    student = _student(tiny_teacher, spec)
    with torch.no_grad():
        diff = (student(ids).logits - tiny_teacher(ids).logits).abs().max().item()
    assert diff <= 1e-5


def test_all_attention_equals_teacher_real(smol, real_ids):
    student = _student(smol.model, f"all={real_ids.shape[1]}")
    with torch.no_grad():
        want = smol.model(real_ids).logits
        got = student(real_ids).logits
    assert (got - want).abs().max().item() <= 1e-5
    assert student.num_parameters() > smol.model.num_parameters()  # SSM additions exist but are unused


# ------------------------------------------------------------------ 2. mixed schedules
@pytest.mark.parametrize("options", [{}, {"use_z_gate": True, "use_conv": True, "bc_feature_map": "silu",
                                          "ssm_c_scale": True, "ssm_rope": True}], ids=["plain", "all-options"])
def test_mixed_schedule_prefix_exact_suffix_differs_tiny(tiny_teacher, options):
    ids = _ids(97, 40)
    student = _student(tiny_teacher, "cycle=8,16,32", **options)
    with torch.no_grad():
        got, want = student(ids).logits, tiny_teacher(ids).logits
    assert (got[:, :8] - want[:, :8]).abs().max().item() <= 1e-5
    assert torch.isfinite(got).all()
    assert (got[:, 8:] - want[:, 8:]).abs().amax(-1).min().item() > 1e-4  # every later position differs


def test_mixed_schedule_real(smol, real_ids):
    ids = real_ids[:, :48]
    student = _student(smol.model, "cycle=8,16,32,64")
    with torch.no_grad():
        got, want = student(ids).logits, smol.model(ids).logits
    assert (got[:, :8] - want[:, :8]).abs().max().item() <= 1e-4
    assert torch.isfinite(got).all()
    assert (got[:, 8:] - want[:, 8:]).abs().amax(-1).min().item() > 1e-3


def test_v9_schedule_runs_end_to_end_real(smol, real_ids):
    student = _student(smol.model, V9)
    assert student.config.transpoints[:8] == [0, 128, 256, 512, 1024, 2048, 4096, 8192]
    ids = real_ids[:, :132]  # crosses the TransPoints 0 and 128
    for name, param in student.named_parameters():  # gradients for the SSM additions only (cheaper)
        param.requires_grad_(name.endswith(("dt_bias", "A_log", "dt_proj.weight", ".D")))
    out = student(ids, labels=ids)
    assert torch.isfinite(out.logits).all() and torch.isfinite(out.loss)
    out.loss.backward()
    for i, layer in enumerate(student.model.layers):  # layers that switched inside the sequence learn
        grad = layer.mixer.dt_bias.grad
        if student.config.transpoints[i] < ids.shape[1]:
            assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0, f"layer {i}"
        else:
            assert grad is None or not grad.any(), f"layer {i} is attention-only here"
    student.zero_grad(set_to_none=True)
    with torch.no_grad():
        gen = student.generate(ids[:, :8], max_new_tokens=3, do_sample=False)
    assert gen.shape == (1, 11)


# ------------------------------------------------------------------ 3. Memory Converter
def _layer_inputs(student, ids, layer):
    """The normed hidden states entering ``layer``'s mixer and that mixer's output (no cache)."""
    seen = {}
    mixer = student.model.layers[layer].mixer
    handle = mixer.register_forward_hook(lambda m, args, out: seen.update(h=args[0], pe=args[1], y=out))
    with torch.no_grad():
        student(ids)
    handle.remove()
    return mixer, seen["h"], seen["pe"], seen["y"]


@pytest.mark.parametrize("transpoint", [1, 10, 29])
def test_memory_converter_state_is_the_prefix_scan(tiny_teacher, transpoint):
    layer, t = 1, 30
    tps = [ATTENTION_ONLY] * tiny_teacher.config.num_hidden_layers
    tps[layer] = transpoint
    student = seed_student(tiny_teacher, tps, seed=3)
    ids = _ids(97, t, seed=4)
    mixer, h, pe, y = _layer_inputs(student, ids, layer)
    b = h.shape[0]
    with torch.no_grad():
        q = mixer.q_proj(h).view(b, t, mixer.num_heads, mixer.head_dim)
        k = mixer.k_proj(h).view(b, t, mixer.num_kv_heads, mixer.head_dim)
        v = mixer.v_proj(h).view(b, t, mixer.num_kv_heads, mixer.head_dim)
        x, dt, A, B, C = mixer.ssm_inputs(h, q, k, v, pe)
        P = transpoint
        _, h_P = ssd_naive(x[:, :P], dt[:, :P], A, B[:, :P], C[:, :P])  # the definition, token by token
        y_suffix, _ = ssd_naive(x[:, P:], dt[:, P:], A, B[:, P:], C[:, P:], D=mixer.D, initial_states=h_P)
        want = mixer.o_proj(y_suffix.reshape(b, t - P, -1))
        # the no-cache forward: SSM tokens continue from the converted state
        torch.testing.assert_close(y[:, P:], want, rtol=1e-4, atol=1e-5)
        # the cache after exactly P tokens holds that state
        cache = TransMambaCache(student.config.num_hidden_layers)
        student(ids[:, :P], past_key_values=cache, use_cache=True)
        torch.testing.assert_close(cache.states[layer].ssm_state, h_P, rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------ 4. hybrid-cache generation
def _check_kv_dropped(cache, transpoints):
    n = cache.seen_tokens
    for i, p in enumerate(transpoints):
        if p <= n:
            assert cache.states[i].keys is None and cache.kv_length(i) == 0, f"layer {i} (P={p}) kept KV"
        else:
            assert cache.kv_length(i) == n
        if p < ATTENTION_ONLY:
            assert cache.states[i].ssm_state is not None


@pytest.mark.parametrize("options", [{}, {"use_conv": True, "use_z_gate": True}], ids=["plain", "conv-z"])
def test_greedy_generate_matches_full_forward_tiny(tiny_teacher, options):
    teacher = tiny_llama(num_kv_heads=tiny_teacher.config.num_key_value_heads, num_layers=4)
    tps = [0, 3, 9, 17]  # the prompt (5 tokens) crosses P=3; decoding crosses 9 and 17
    student = seed_student(teacher, tps, seed=2, **options)
    ids = _ids(97, 5, seed=5)
    with torch.no_grad():
        out = student.generate(ids, max_new_tokens=20, do_sample=False, output_logits=True,
                               return_dict_in_generate=True, pad_token_id=0)
        seq = out.sequences
        full = student(seq).logits[0, ids.shape[1] - 1 : -1]
    steps = torch.stack(out.logits, dim=1)[0]  # (20, vocab)
    torch.testing.assert_close(steps, full, rtol=1e-4, atol=1e-4)
    _check_kv_dropped(out.past_key_values, tps)
    assert out.past_key_values.seen_tokens == seq.shape[1] - 1  # the last token is never fed back


def test_decode_token_by_token_equals_full_forward_tiny(tiny_teacher):
    student = _student(tiny_teacher, "cycle=0,4,11")
    ids = _ids(97, 16, seed=6, batch=2)
    cache = TransMambaCache(student.config.num_hidden_layers)
    with torch.no_grad():
        full = student(ids).logits
        steps = [student(ids[:, i : i + 1], past_key_values=cache, use_cache=True).logits for i in range(16)]
    torch.testing.assert_close(torch.cat(steps, 1), full, rtol=1e-4, atol=1e-5)
    _check_kv_dropped(cache, student.config.transpoints)


def test_greedy_generate_matches_argmax_real(smol, real_ids):
    student = _student(smol.model, "cycle=4,8,16,24")
    prompt = real_ids[:, :6]  # prefill crosses P=4; decoding crosses 8, 16 and 24
    with torch.no_grad():
        out = student.generate(prompt, max_new_tokens=22, do_sample=False, min_new_tokens=22,
                               return_dict_in_generate=True)
        seq = out.sequences
        full = student(seq).logits[0, prompt.shape[1] - 1 : -1]
    assert torch.equal(full.argmax(-1), seq[0, prompt.shape[1]:])  # each token is the full forward's argmax
    _check_kv_dropped(out.past_key_values, student.config.transpoints)
    assert all(out.past_key_values.states[i].keys is None for i in range(30))  # 27 tokens > every P
