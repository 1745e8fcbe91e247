"""Teacher capture hooks, the teacher's attention matrix and the student's materialized SSM matrix."""

from __future__ import annotations

import pytest
import torch

from tm_distill.convert import seed_student
from tm_distill.models.capture import (
    capture_teacher,
    decoder_layers,
    record_activations,
    ssm_mixing_matrix,
    teacher_attention_matrix,
)
from tm_distill.models.configuration import ATTENTION_ONLY
from tm_distill.ops import ssd_scan_ref


def _attention_output(attn, hidden, pe, probs):
    """o_proj(P V) for a Llama attention block, from its probabilities P (b, nq, t, t)."""
    b, t, _ = hidden.shape
    d = attn.head_dim
    nkv = attn.k_proj.out_features // d
    nq = probs.shape[1]
    v = attn.v_proj(hidden).view(b, t, nkv, d).transpose(1, 2).repeat_interleave(nq // nkv, dim=1)
    out = torch.einsum("bhts,bhsd->bthd", probs, v).reshape(b, t, nq * d)
    return attn.o_proj(out)


def test_capture_records_inputs_outputs_and_removes_hooks(tiny_teacher):
    torch.manual_seed(0)
    ids = torch.randint(0, 97, (2, 24))
    acts = capture_teacher(tiny_teacher, ids, [0, 2])
    assert set(acts.attn_inputs) == {0, 2} and set(acts.attn_outputs) == {0, 2}
    for layer in decoder_layers(tiny_teacher):
        assert not layer._forward_hooks and not layer._forward_pre_hooks
        assert not layer.self_attn._forward_hooks and not layer.input_layernorm._forward_hooks
    # the recorded input of layer 0 is input_layernorm(embeddings); its output is the attention output
    with torch.no_grad():
        emb = tiny_teacher.model.embed_tokens(ids)
        h0 = tiny_teacher.model.layers[0].input_layernorm(emb)
        torch.testing.assert_close(acts.attn_inputs[0], h0)
        attn = tiny_teacher.model.layers[0].self_attn
        probs = teacher_attention_matrix(attn, h0, acts.position_embeddings)
        torch.testing.assert_close(_attention_output(attn, h0, acts.position_embeddings, probs),
                                   acts.attn_outputs[0], atol=1e-5, rtol=1e-4)


def test_hooks_removed_when_forward_fails(tiny_teacher):
    with pytest.raises(RuntimeError, match="boom"):
        with record_activations(tiny_teacher, [0, 1], residual=True):
            raise RuntimeError("boom")
    for layer in decoder_layers(tiny_teacher):
        assert not layer._forward_pre_hooks and not layer.input_layernorm._forward_hooks


def test_capture_rejects_bad_layer(tiny_teacher):
    with pytest.raises(ValueError, match="layer index 7 is out of range"):
        capture_teacher(tiny_teacher, torch.zeros(1, 4, dtype=torch.long), [0, 7])


def test_attention_matrix_is_causal_softmax_and_head_chunks_agree(tiny_teacher):
    ids = torch.randint(0, 97, (1, 16), generator=torch.Generator().manual_seed(1))
    acts = capture_teacher(tiny_teacher, ids, [1])
    attn = tiny_teacher.model.layers[1].self_attn
    full = teacher_attention_matrix(attn, acts.attn_inputs[1], acts.position_embeddings)
    assert full.shape == (1, 4, 16, 16) and full.dtype == torch.float32
    torch.testing.assert_close(full.sum(-1), torch.ones(1, 4, 16))
    assert torch.all(full.triu(1) == 0)
    parts = [teacher_attention_matrix(attn, acts.attn_inputs[1], acts.position_embeddings, slice(h, h + 1))
             for h in range(4)]
    torch.testing.assert_close(torch.cat(parts, dim=1), full)


@pytest.mark.parametrize("options", [{}, {"use_conv": True}, {"ssm_rope": True, "ssm_c_scale": True}])
def test_ssm_matrix_reproduces_reference_scan(tiny_teacher, options):
    student = seed_student(tiny_teacher, [0, 0, 0], seed=3, **options)
    mixer = student.model.layers[1].mixer
    with torch.no_grad():
        mixer.D.normal_()  # exercise the skip term too
    torch.manual_seed(0)
    hidden = torch.randn(2, 40, 64)
    pos = torch.arange(40).unsqueeze(0)
    pe = student.model.rotary_emb(hidden, position_ids=pos)
    M = ssm_mixing_matrix(mixer, hidden, pe)
    assert M.shape == (2, 4, 40, 40) and torch.all(M.triu(1) == 0)
    q = mixer.q_proj(hidden).view(2, 40, 4, 16)
    k = mixer.k_proj(hidden).view(2, 40, mixer.num_kv_heads, 16)
    v = mixer.v_proj(hidden).view(2, 40, mixer.num_kv_heads, 16)
    x, dt, A, B, C = mixer.ssm_inputs(hidden, q, k, v, pe)
    ref = ssd_scan_ref(x, dt, A, B, C, chunk_size=16, D=mixer.D)
    y = torch.einsum("bhts,bshp->bthp", M, x.float()) + x * mixer.D.view(1, 1, -1, 1)
    torch.testing.assert_close(y, ref, atol=1e-5, rtol=1e-4)
    chunks = torch.cat([ssm_mixing_matrix(mixer, hidden, pe, slice(h, h + 2)) for h in (0, 2)], dim=1)
    torch.testing.assert_close(chunks, M)


def test_hybrid_rows_after_transpoint_see_the_whole_prefix(tiny_teacher):
    """Rows t >= P of the hybrid mixer equal o_proj(M x + D x): the Memory Converter hands over the prefix."""
    P, t = 11, 30
    student = seed_student(tiny_teacher, [ATTENTION_ONLY, P, ATTENTION_ONLY], seed=0)
    mixer = student.model.layers[1].mixer
    hidden = torch.randn(1, t, 64, generator=torch.Generator().manual_seed(2))
    pe = student.model.rotary_emb(hidden, position_ids=torch.arange(t).unsqueeze(0))
    with torch.no_grad():
        out = mixer(hidden, pe)
        M = ssm_mixing_matrix(mixer, hidden, pe)
        v = mixer.v_proj(hidden).view(1, t, mixer.num_kv_heads, 16).repeat_interleave(4 // mixer.num_kv_heads, 2)
        y = torch.einsum("bhts,bshp->bthp", M, v) + v * mixer.D.view(1, 1, -1, 1)
        expect = mixer.o_proj(y.reshape(1, t, 64))
    torch.testing.assert_close(out[:, P:], expect[:, P:], atol=1e-5, rtol=1e-4)


def test_capture_real_teacher_matches_its_forward(smol, real_text):
    """On SmolLM2-135M: attention probabilities rebuild the recorded attention output of layers 0 and 15."""
    tok = smol.tokenizer
    ids = tok(real_text[5000:8000], return_tensors="pt", add_special_tokens=False).input_ids[:, :96]
    acts = capture_teacher(smol.model, ids, [0, 15])
    for layer in (0, 15):
        attn = smol.model.model.layers[layer].self_attn
        with torch.no_grad():
            probs = teacher_attention_matrix(attn, acts.attn_inputs[layer], acts.position_embeddings,
                                             slice(0, 9))
            out = _attention_output(attn, acts.attn_inputs[layer], acts.position_embeddings, probs)
        assert probs.shape == (1, 9, 96, 96)
        torch.testing.assert_close(out, acts.attn_outputs[layer], atol=2e-4, rtol=1e-3)


def test_capture_records_per_head_outputs_when_asked(tiny_teacher):
    ids = torch.randint(0, 97, (2, 16), generator=torch.Generator().manual_seed(0))
    acts = capture_teacher(tiny_teacher, ids, [0, 1], heads=True)
    assert set(acts.head_outputs) == {0, 1} and acts.head_outputs[0].shape == (2, 16, 64)
    for i in (0, 1):
        torch.testing.assert_close(tiny_teacher.model.layers[i].self_attn.o_proj(acts.head_outputs[i]),
                                   acts.attn_outputs[i])
    assert not capture_teacher(tiny_teacher, ids, [0]).head_outputs
    for layer in decoder_layers(tiny_teacher):
        assert not layer.self_attn.o_proj._forward_pre_hooks
