"""Packed documents: position_ids that restart inside a row keep documents apart (attention and SSM state)."""

from __future__ import annotations

import pytest
import torch

from tm_distill.convert import parse_transpoints, seed_student
from tm_distill.models.modeling import packed_seq_idx

from tests.conftest import tiny_llama


def _packed(lengths, vocab, seed=0):
    g = torch.Generator().manual_seed(seed)
    docs = [torch.randint(0, vocab, (1, n), generator=g) for n in lengths]
    ids = torch.cat(docs, 1)
    pos = torch.cat([torch.arange(n) for n in lengths])[None]
    seq = torch.cat([torch.full((n,), i) for i, n in enumerate(lengths)])[None]
    return docs, ids, pos, seq


def test_packed_seq_idx_from_position_ids():
    pos = torch.tensor([[0, 1, 2, 0, 1, 0, 1, 2, 3]])
    assert packed_seq_idx(pos).tolist() == [[0, 0, 0, 1, 1, 2, 2, 2, 2]]
    assert packed_seq_idx(torch.arange(5)[None]) is None
    assert packed_seq_idx(torch.arange(3, 9)[None]) is None  # a continuation, not a restart


@pytest.mark.parametrize("opts", [{}, {"use_conv": True, "use_z_gate": True}], ids=["plain", "conv+z"])
def test_packed_equals_documents_run_separately(opts):
    teacher = tiny_llama(num_kv_heads=2)
    student = seed_student(teacher, [0, 7, 16], **opts)
    docs, ids, pos, _ = _packed([10, 25, 5], teacher.config.vocab_size)
    with torch.no_grad():
        packed = student(ids, position_ids=pos).logits
        separate = torch.cat([student(d).logits for d in docs], 1)
    torch.testing.assert_close(packed, separate, atol=1e-5, rtol=1e-5)


def test_packed_all_attention_student_equals_teacher_with_block_mask(smol, real_text):
    """On the real teacher: a block-diagonal 4D mask is how the teacher sees the same packed documents."""
    tok = smol.tokenizer
    words = real_text.split()
    docs = [tok(" ".join(words[i * 40 : (i + 1) * 40]), return_tensors="pt").input_ids[:, :n]
            for i, n in enumerate([30, 50, 20])]
    ids = torch.cat(docs, 1)
    pos = torch.cat([torch.arange(d.shape[1]) for d in docs])[None]
    seq = torch.cat([torch.full((d.shape[1],), i) for i, d in enumerate(docs)])[None]
    t = ids.shape[1]
    mask = (torch.tril(torch.ones(t, t, dtype=torch.bool)) & (seq[:, :, None] == seq[:, None, :]))[:, None]
    n = smol.model.config.num_hidden_layers
    exact = seed_student(smol.model, parse_transpoints("attn", n))
    mixed = seed_student(smol.model, parse_transpoints("cycle=8,16,24", n))
    with torch.no_grad():
        teacher = smol.model(ids, position_ids=pos, attention_mask=mask).logits
        torch.testing.assert_close(exact(ids, position_ids=pos).logits, teacher, atol=1e-4, rtol=1e-5)
        got = mixed(ids, position_ids=pos).logits
        # In fp64 the packed row and the documents run one by one agree to rounding: any state, conv tap or
        # attention weight crossing a document boundary would show. (In fp32 a GEMM's blocking differs with the
        # row length, and 30 layers amplify that rounding to ~1e-3 of logits ~30: too coarse to see a leak.)
        wide = mixed.double()
        packed64 = wide(ids, position_ids=pos).logits
        separate64 = torch.cat([wide(d).logits for d in docs], 1)
    torch.testing.assert_close(packed64, separate64, atol=1e-9, rtol=1e-9)
    before = pos[0] < 8  # every document's first 8 tokens are before min P
    torch.testing.assert_close(got[:, before], teacher[:, before], atol=1e-4, rtol=1e-5)


def test_padded_batch_generate_is_not_taken_for_packing():
    """generate() derives position ids from a left-padding mask; those rows are not packed documents."""
    teacher = tiny_llama()
    student = seed_student(teacher, [4, 6, 8])
    ids = torch.randint(0, teacher.config.vocab_size, (2, 7))
    mask = torch.ones_like(ids)
    mask[0, :3] = 0
    out = student.generate(ids, attention_mask=mask, max_new_tokens=5, do_sample=False,
                           pad_token_id=0, eos_token_id=None)
    assert out.shape == (2, 12)
    with torch.no_grad():  # the unpadded row is what it would be alone
        alone = student.generate(ids[1:], max_new_tokens=5, do_sample=False, pad_token_id=0, eos_token_id=None)
    assert torch.equal(out[1:], alone)
