"""The memory formula used by `inspect` agrees with what the hybrid cache really holds."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import tiny_llama
from tm_distill.convert import parse_transpoints, seed_student
from tm_distill.models import ATTENTION_ONLY, TransMambaCache
from tm_distill.models.memory import added_parameters, check_cache_memory, format_bytes, layer_memory, memory_totals


def _prefill_then_decode(student, ids, n_prefill, check_every=1):
    """Prefill ``n_prefill`` tokens, then decode the rest one by one, checking the cache after each call."""
    cache = TransMambaCache(student.config.num_hidden_layers)
    checked = []
    with torch.no_grad():
        student(ids[:, :n_prefill], past_key_values=cache, use_cache=True)
        checked.append(check_cache_memory(cache, student.config, batch_size=ids.shape[0]))
        for i in range(n_prefill, ids.shape[1]):
            student(ids[:, i : i + 1], past_key_values=cache, use_cache=True)
            if (i + 1 - n_prefill) % check_every == 0:
                checked.append(check_cache_memory(cache, student.config, batch_size=ids.shape[0]))
    return cache, checked


@pytest.mark.parametrize("options", [{}, {"use_conv": True}], ids=["plain", "conv"])
def test_formula_matches_cache_tiny(tiny_teacher, options):
    teacher = tiny_llama(num_kv_heads=tiny_teacher.config.num_key_value_heads, num_layers=4)
    student = seed_student(teacher, [0, 3, 7, ATTENTION_ONLY], seed=0, **options)
    ids = torch.randint(0, 97, (2, 12), generator=torch.Generator().manual_seed(0))
    cache, checked = _prefill_then_decode(student, ids, n_prefill=2)
    assert len(checked) == 11
    # at 12 tokens: layers 0-2 are past their TransPoints (state only), layer 3 holds 12 tokens of KV
    assert [cache.kv_length(i) for i in range(4)] == [0, 0, 0, 12]
    assert cache.states[3].ssm_state is None


def test_formula_by_hand_and_bf16(tiny_teacher):
    student = seed_student(tiny_teacher, [0, 5, ATTENTION_ONLY], seed=0, dtype=torch.bfloat16)
    cfg = student.config
    kv_per_token = 2 * cfg.num_key_value_heads * cfg.head_dim * 2  # bf16
    state = cfg.num_attention_heads * cfg.head_dim * cfg.head_dim * 4  # fp32
    rows = layer_memory(cfg, 4, dtype=torch.bfloat16)
    assert [(r.kv_bytes, r.state_bytes) for r in rows] == [(0, state), (4 * kv_per_token, state), (4 * kv_per_token, 0)]
    assert all(r.teacher_kv_bytes == 4 * kv_per_token for r in rows)
    later = memory_totals(layer_memory(cfg, 100, dtype=torch.bfloat16))
    assert later["kv"] == 100 * kv_per_token and later["state"] == 2 * state
    ids = torch.randint(0, 97, (1, 9), generator=torch.Generator().manual_seed(1))
    _prefill_then_decode(student, ids, n_prefill=4)


def test_added_parameters_match_the_model(tiny_teacher):
    for options in ({}, {"use_z_gate": True, "use_conv": True}):
        student = seed_student(tiny_teacher, [0, 5, ATTENTION_ONLY], seed=0, **options)
        extra = student.num_parameters() - tiny_teacher.num_parameters()
        assert sum(added_parameters(student.config)) == extra > 0


def test_formula_matches_cache_real(smol, real_text):
    spec = "cycle=4,8,16,attn"
    student = seed_student(smol.model, parse_transpoints(spec, 30), spec, seed=0)
    ids = smol.tokenizer(real_text, return_tensors="pt").input_ids[:, :20]
    cache, checked = _prefill_then_decode(student, ids, n_prefill=14, check_every=3)
    assert len(checked) == 3
    kinds = {(cache.kv_length(i) > 0, cache.states[i].ssm_state is not None) for i in range(30)}
    assert kinds == {(False, True), (True, False)}  # switched layers: state only; attn layers: KV only
    n_attn = student.config.transpoints.count(ATTENTION_ONLY)
    assert check_cache_memory(cache, student.config)["kv"] == n_attn * 20 * 2 * 3 * 64 * 4  # 3 kv heads x head_dim 64, fp32
    long = memory_totals(layer_memory(student.config, 8192))
    assert long["student"] < long["teacher"] / 3  # a quarter of the layers keep KV at 8k tokens


def test_format_bytes():
    assert format_bytes(0) == "0 B"
    assert format_bytes(1536) == "1.5 KiB"
    assert format_bytes(3 * 1024**3) == "3.0 GiB"
