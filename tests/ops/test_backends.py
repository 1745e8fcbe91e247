"""Backend dispatch on a machine without CUDA: clear errors for missing backends, reference fallbacks."""

from __future__ import annotations

import pytest
import torch

from tm_distill.convert import parse_transpoints, seed_student
from tm_distill.models import TransMambaCache
from tm_distill.ops import (
    BackendUnavailable, fused_update_available, resolve_backend, ssd_naive, ssd_scan, ssd_scan_ref, ssd_step,
    ssd_update,
)
from tm_distill.models.graphs import DecodeGraph, GraphCaptureError, capturable_reason

from tests.conftest import tiny_llama


def _inputs(b=2, t=37, h=4, p=8, n=8, g=2, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(b, t, h, p, generator=gen)
    dt = torch.nn.functional.softplus(torch.randn(b, t, h, generator=gen) - 1)
    A = -torch.rand(h, generator=gen) - 0.5
    B, C = torch.randn(b, t, g, n, generator=gen), torch.randn(b, t, g, n, generator=gen)
    return x, dt, A, B, C


def test_mamba_backend_on_cpu_raises_a_clear_error():
    x, dt, A, B, C = _inputs()
    with pytest.raises(BackendUnavailable, match="mamba_ssm"):
        ssd_scan(x, dt, A, B, C, backend="mamba_ssm")
    with pytest.raises(ValueError, match="choose one of"):
        resolve_backend("cuda-fast", torch.device("cpu"))


def test_auto_falls_back_to_the_reference_on_cpu():
    assert resolve_backend("auto", torch.device("cpu")) == "torch"
    x, dt, A, B, C = _inputs()
    y_auto, h_auto = ssd_scan(x, dt, A, B, C, chunk_size=16, return_final_states=True)
    y_ref, h_ref = ssd_scan_ref(x, dt, A, B, C, chunk_size=16, return_final_states=True)
    assert torch.equal(y_auto, y_ref) and torch.equal(h_auto, h_ref)
    y_naive, h_naive = ssd_naive(x, dt, A, B, C)
    torch.testing.assert_close(y_auto, y_naive, rtol=1e-4, atol=1e-4)


def test_ssd_update_on_cpu_is_the_reference_step_and_keeps_the_old_state():
    x, dt, A, B, C = _inputs(t=1)
    state = torch.randn(2, 4, 8, 8)
    before = state.clone()
    assert not fused_update_available(state)
    D = torch.randn(4)
    s_new, y = ssd_update(state, x[:, 0], dt[:, 0], A, B[:, 0], C[:, 0], D)
    s_ref, y_ref = ssd_step(before, x[:, 0], dt[:, 0], A, B[:, 0], C[:, 0], D)
    assert torch.equal(s_new, s_ref) and torch.equal(y, y_ref)
    assert torch.equal(state, before), "the reference step must not modify its input state"
    with pytest.raises(RuntimeError, match="fp32 CUDA state"):
        ssd_update(state, x[:, 0], dt[:, 0], A, B[:, 0], C[:, 0], D, fused=True)


def test_decode_graph_refuses_cpu_models_with_the_reason():
    teacher = tiny_llama(num_kv_heads=2, num_layers=2)
    student = seed_student(teacher, [0, 4], None, "tiny")
    cache = TransMambaCache(2)
    assert "CUDA" in capturable_reason(student, cache)
    with pytest.raises(GraphCaptureError, match="CUDA"):
        DecodeGraph(student, cache)


def test_real_teacher_cached_decode_through_ssd_update_equals_full_forward(smol, real_text):
    """SmolLM2-135M on Shakespeare: every layer switches inside the text; step decode == full forward."""
    tok = smol.tokenizer
    ids = tok(real_text[:600], return_tensors="pt").input_ids[:, :32]
    L = smol.model.config.num_hidden_layers
    student = seed_student(smol.model, parse_transpoints("cycle=0,4,8,16", L), "cycle=0,4,8,16", "smollm2")
    with torch.no_grad():
        full = student(ids).logits
        cache = TransMambaCache(L)
        steps = [student(ids[:, :2], past_key_values=cache, use_cache=True).logits]
        for t in range(2, ids.shape[1]):
            steps.append(student(ids[:, t : t + 1], past_key_values=cache, use_cache=True).logits)
    step = torch.cat(steps, dim=1)
    # fp32 chunked scan vs token steps over 30 layers: differences are accumulation order only
    assert ((step - full).norm() / full.norm()).item() < 1e-4
    assert torch.equal(step.argmax(-1), full.argmax(-1))
    assert cache.memory_bytes()["kv"] == 0, "every layer is past its TransPoint: no KV may remain"
