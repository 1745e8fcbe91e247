"""Inference paths: left-padded batches, the static KV cache and decode steps that cross TransPoints.

Every check is against the cache-free full forward of each prompt alone (tiny random Llama, fp32, 1e-5).
"""

from __future__ import annotations

import pytest
import torch

from tests.conftest import tiny_llama
from tm_distill.convert import seed_student
from tm_distill.models import ATTENTION_ONLY, TransMambaCache
from tm_distill.models.cache import CACHE_KWARG

TPS = [0, 3, 6, 11, ATTENTION_ONLY]  # prompts (4-7 tokens) cross some; decoding crosses the rest


@pytest.fixture(scope="module")
def student():
    teacher = tiny_llama(num_kv_heads=2, num_layers=len(TPS), seed=3)
    return seed_student(teacher, TPS, seed=4).eval()


def _prompts(lengths, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(1, 97, (n,), generator=g) for n in lengths]


def _left_pad(prompts):
    width = max(len(p) for p in prompts)
    ids = torch.zeros(len(prompts), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for r, p in enumerate(prompts):
        ids[r, width - len(p):], mask[r, width - len(p):] = p, 1
    return ids, mask


def _full_logits(model, seq):
    with torch.no_grad():
        return model(seq[None]).logits[0]


@pytest.mark.parametrize("max_length", [None, 40], ids=["dynamic", "static"])
def test_left_padded_generate_equals_each_prompt_alone(student, max_length):
    prompts = _prompts([7, 4, 5])
    ids, mask = _left_pad(prompts)
    new = 12
    cache = TransMambaCache(len(TPS), max_length=max_length)
    with torch.no_grad():
        out = student.generate(ids, attention_mask=mask, **{CACHE_KWARG: cache}, max_new_tokens=new,
                               do_sample=False, output_logits=True, return_dict_in_generate=True, pad_token_id=0,
                               eos_token_id=None)
    steps = torch.stack(out.logits, dim=1)  # (batch, new, vocab)
    for r, p in enumerate(prompts):
        tokens = out.sequences[r, ids.shape[1]:]
        with torch.no_grad():
            alone = student.generate(p[None], max_new_tokens=new, do_sample=False, pad_token_id=0,
                                     eos_token_id=None)
        assert torch.equal(tokens, alone[0, len(p):]), f"row {r} differs from its prompt alone"
        full = _full_logits(student, torch.cat([p, tokens]))[len(p) - 1 : -1]
        torch.testing.assert_close(steps[r], full, rtol=1e-5, atol=1e-5)
    for i, P in enumerate(TPS):  # KV is gone once every row is past the layer's TransPoint
        past = cache.seen_tokens - cache.max_pad >= P
        assert (cache.states[i].keys is None) == past, f"layer {i} (P={P})"


def test_padded_cache_free_forward_equals_each_prompt_alone(student):
    prompts = _prompts([9, 5, 2], seed=1)
    ids, mask = _left_pad(prompts)
    with torch.no_grad():
        got = student(ids, attention_mask=mask).logits
    for r, p in enumerate(prompts):
        torch.testing.assert_close(got[r, ids.shape[1] - len(p):], _full_logits(student, p), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("batch", [1, 3])
def test_static_cache_decode_across_transpoints_equals_full_forward(student, batch):
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(0, 97, (batch, 16), generator=g)
    cache = TransMambaCache(len(TPS), max_length=20)
    with torch.no_grad():
        full = student(ids).logits
        steps = [student(ids[:, :2], cache=cache, use_cache=True).logits]
        caps = [None if s.keys is None else s.keys.shape[2] for s in cache.states]
        buffers = [s.keys for s in cache.states]
        for t in range(2, 16):
            steps.append(student(ids[:, t : t + 1], cache=cache, use_cache=True).logits)
            for i, s in enumerate(cache.states):  # written in place, never re-allocated
                assert s.keys is None or s.keys is buffers[i]
    torch.testing.assert_close(torch.cat(steps, 1), full, rtol=1e-5, atol=1e-5)
    assert caps == [None, 3, 6, 11, 20]  # capacity: the TransPoint, or max_length for attention-only layers
    assert [cache.kv_length(i) for i in range(len(TPS))] == [0, 0, 0, 0, 16]
    with pytest.raises(ValueError, match="max_length"):
        student(ids[:, :5], cache=cache, use_cache=True)


def test_graphs_need_a_static_cache():
    with pytest.raises(ValueError, match="max_length"):
        TransMambaCache(2, graphs=True)


def test_cached_prefill_equals_cache_free_forward_exactly(student):
    """The prefill scans each switching layer once, as the cache-free forward does: bitwise the same."""
    ids = torch.randint(0, 97, (2, 9), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        full = student(ids).logits
        cached = student(ids, cache=TransMambaCache(len(TPS)), use_cache=True).logits
    assert torch.equal(full, cached)


def test_static_cache_skips_converters_it_never_reaches(student):
    """A layer whose TransPoint is past the static cache's max_length is attention only for the cache's life:
    its prefill and decode steps run no Memory Converter (no SSM state), and the logits stay the full forward's."""
    ids = torch.randint(0, 97, (2, 9), generator=torch.Generator().manual_seed(6))
    cache = TransMambaCache(len(TPS), max_length=10)  # reaches TransPoints 0, 3, 6; not 11, nor attention-only
    with torch.no_grad():
        full = student(ids).logits
        steps = [student(ids[:, :5], cache=cache, use_cache=True).logits]
        steps += [student(ids[:, t : t + 1], cache=cache, use_cache=True).logits for t in range(5, 9)]
    torch.testing.assert_close(torch.cat(steps, 1), full, rtol=1e-5, atol=1e-5)
    assert [s.ssm_state is not None for s in cache.states] == [True, True, True, False, False]
    assert [cache.reaches(p) for p in TPS] == [True, True, True, False, False]


def test_prefill_scans_its_memory_converters_together(student, monkeypatch):
    """Layers whose prompt stays before their TransPoint get their states from one scan after the last layer,
    equal to scanning each layer alone; a decode step (one token) collects nothing."""
    import tm_distill.models.converter as converter

    calls = []
    real_scan = converter.ssd_state
    monkeypatch.setattr(converter, "ssd_state", lambda x, *a, **k: calls.append(x.shape[2]) or real_scan(x, *a, **k))
    ids = torch.randint(0, 97, (2, 5), generator=torch.Generator().manual_seed(7))

    def prefill(max_elements):
        monkeypatch.setattr(converter.Converters.__init__, "__defaults__", (max_elements,))
        cache = TransMambaCache(len(TPS))
        with torch.no_grad():
            logits = student(ids, cache=cache, use_cache=True).logits
            student(ids[:, :1], cache=cache, use_cache=True)  # a decode step: the fused update, no scan
        return logits, [s.ssm_state for s in cache.states]

    together, states = prefill(2**27)
    assert calls == [8], "TransPoints 6 and 11 (4 heads each) in one scan"
    calls.clear()
    alone, states_alone = prefill(1)
    assert calls == [4, 4]
    assert torch.equal(together, alone)
    for a, b in zip(states, states_alone):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


def test_our_calls_print_no_cache_deprecation_line(student, monkeypatch):
    """transformers >= 5.24 warns once per process when a cache travels as `past_key_values` (argument, output
    field or attribute); our forward, generate() and decoding loops use its current name (CACHE_KWARG)."""
    import transformers.utils.generic as generic

    from tm_distill.generation import greedy_generate, sample_generate

    said = []
    monkeypatch.setattr(generic.logger, "warning_once", lambda msg, *a, **k: said.append(str(msg)))
    teacher = tiny_llama(num_kv_heads=2, num_layers=len(TPS), seed=3)
    prompt = _prompts([6])[0][None]
    with torch.no_grad():
        for model in (student, teacher):
            greedy_generate(model, prompt, 5)
            sample_generate(model, prompt, 3, generator=torch.Generator().manual_seed(0))
            model.generate(prompt, max_new_tokens=4, do_sample=False, pad_token_id=0, eos_token_id=None)
        student.generate(prompt, max_new_tokens=4, do_sample=False, pad_token_id=0, eos_token_id=None,
                         **{CACHE_KWARG: TransMambaCache(len(TPS), max_length=12)})
    assert not [m for m in said if "deprecated" in m], said
