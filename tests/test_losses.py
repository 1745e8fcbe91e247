"""The math of the distillation losses: zero on identical inputs, direct formulas, trl's JSD and its beta
limits, masking, temperature, chunked == unchunked (values and gradients), fp32 matrix loss from bf16."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F

from tm_distill.losses import (
    KINDS, ce_loss, chunked_ce_loss, chunked_distill_loss, distill_loss, hidden_loss, matrix_loss, token_divergence,
)


def _logits(*shape, seed=0, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g) * scale


def _kl(p_logits, q_logits):
    """KL(p || q) per row from the definition, in float64."""
    p = torch.softmax(p_logits.double(), -1)
    return (p * (torch.log(p) - torch.log_softmax(q_logits.double(), -1))).sum(-1)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_zero_on_identical_inputs(kind, temperature):
    x = _logits(2, 7, 13).requires_grad_()
    loss = distill_loss(x, x.detach().clone(), kind=kind, temperature=temperature)
    loss.backward()
    assert loss.item() == pytest.approx(0.0, abs=1e-6)
    assert x.grad.abs().max().item() < 1e-6


def test_forward_and_reverse_kl_match_the_definition():
    s, t = _logits(3, 5, 17, seed=1), _logits(3, 5, 17, seed=2)
    fwd = distill_loss(s, t, kind="forward_kl")
    rev = distill_loss(s, t, kind="reverse_kl")
    assert fwd.item() == pytest.approx(_kl(t, s).mean().item(), rel=1e-5)
    assert rev.item() == pytest.approx(_kl(s, t).mean().item(), rel=1e-5)
    assert fwd.item() != pytest.approx(rev.item(), rel=1e-2)  # KL is not symmetric
    assert fwd.dtype == torch.float32


def test_jsd_matches_its_definition_at_half():
    s, t = _logits(4, 11, seed=3), _logits(4, 11, seed=4)
    beta = 0.5
    p_s, p_t = torch.softmax(s.double(), -1), torch.softmax(t.double(), -1)
    m = beta * p_t + (1 - beta) * p_s
    ref = beta * (p_t * (p_t / m).log()).sum(-1) + (1 - beta) * (p_s * (p_s / m).log()).sum(-1)
    assert distill_loss(s, t, kind="jsd", beta=beta).item() == pytest.approx(ref.mean().item(), rel=1e-5)


@pytest.mark.parametrize("beta", [0.0, 0.1, 0.5, 0.9, 1.0])
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_jsd_matches_trl_gkd(beta, temperature):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from trl.experimental.gkd.gkd_trainer import GKDTrainer
    s, t = _logits(2, 9, 23, seed=5), _logits(2, 9, 23, seed=6)
    mask = torch.rand(2, 9, generator=torch.Generator().manual_seed(7)) > 0.3
    labels = torch.where(mask, torch.zeros(2, 9, dtype=torch.long), torch.full((2, 9), -100))
    ref = GKDTrainer.generalized_jsd_loss(s, t, labels=labels, beta=beta, temperature=temperature)
    ours = distill_loss(s, t, mask=mask, kind="jsd", beta=beta, temperature=temperature)
    assert ours.item() == pytest.approx(ref.item() * temperature**2, rel=1e-5)


def test_jsd_beta_limits():
    s, t = _logits(6, 19, seed=8, scale=1.0), _logits(6, 19, seed=9, scale=1.0)
    fwd, rev = distill_loss(s, t, kind="forward_kl"), distill_loss(s, t, kind="reverse_kl")
    assert distill_loss(s, t, kind="jsd", beta=0.0).item() == pytest.approx(fwd.item(), rel=1e-6)
    assert distill_loss(s, t, kind="jsd", beta=1.0).item() == pytest.approx(rev.item(), rel=1e-6)
    eps = 1e-4  # the continuous limits: JSD_beta / beta -> KL(T||S), JSD_beta / (1 - beta) -> KL(S||T)
    assert (distill_loss(s, t, kind="jsd", beta=eps) / eps).item() == pytest.approx(fwd.item(), rel=2e-3)
    assert (distill_loss(s, t, kind="jsd", beta=1 - eps) / eps).item() == pytest.approx(rev.item(), rel=2e-3)
    mid = distill_loss(s, t, kind="jsd", beta=0.5).item()
    assert 0 < mid <= 0.5 * torch.log(torch.tensor(2.0)).item() + 1e-6  # JSD(0.5) is bounded by log 2 / 2


@pytest.mark.parametrize("kind", KINDS)
def test_masked_positions_change_nothing(kind):
    s = _logits(2, 6, 13, seed=10).requires_grad_()
    t = _logits(2, 6, 13, seed=11)
    mask = torch.tensor([[1, 0, 1, 1, 0, 0], [0, 1, 1, 0, 1, 0]], dtype=torch.bool)
    loss = distill_loss(s, t, mask=mask, kind=kind)
    (grad,) = torch.autograd.grad(loss, s)
    s2, t2 = s.detach().clone(), t.clone()
    s2[~mask] = float("nan")
    t2[~mask] = float("inf")
    s2.requires_grad_()
    loss2 = distill_loss(s2, t2, mask=mask, kind=kind)
    (grad2,) = torch.autograd.grad(loss2, s2)
    assert loss2.item() == pytest.approx(loss.item(), rel=1e-6)
    assert torch.equal(grad2[mask], grad[mask]) and torch.all(grad2[~mask] == 0)
    # the mean is over masked positions only, and (n, V) with (n,) masks is the same thing flattened
    per_pos = token_divergence(s.detach(), t, kind)
    assert loss.item() == pytest.approx(per_pos[mask].mean().item(), rel=1e-6)
    flat = distill_loss(s.reshape(-1, 13), t.reshape(-1, 13), mask=mask.reshape(-1), kind=kind)
    assert flat.item() == pytest.approx(loss.item(), rel=1e-6)


def test_empty_mask_gives_zero_with_a_gradient_path():
    s = _logits(2, 3, 5).requires_grad_()
    loss = distill_loss(s, _logits(2, 3, 5, seed=1), mask=torch.zeros(2, 3, dtype=torch.bool))
    loss.backward()
    assert loss.item() == 0.0 and torch.all(s.grad == 0)


def test_temperature_scales_both_and_multiplies_by_t_squared():
    s, t = _logits(3, 4, 29, seed=12), _logits(3, 4, 29, seed=13)
    T = 3.0
    assert distill_loss(s, t, temperature=T).item() == pytest.approx(
        T**2 * _kl(t / T, s / T).mean().item(), rel=1e-5)
    # rescaling the logits by T and dividing them back by T is the identity, up to the T^2 factor
    assert distill_loss(s * T, t * T, temperature=T).item() == pytest.approx(
        T**2 * distill_loss(s, t).item(), rel=1e-5)


def test_bad_options_name_the_option():
    s = _logits(2, 5)
    with pytest.raises(ValueError, match="kind='kl'"):
        distill_loss(s, s, kind="kl")
    with pytest.raises(ValueError, match="beta=1.5"):
        distill_loss(s, s, kind="jsd", beta=1.5)
    with pytest.raises(ValueError, match="temperature=0"):
        distill_loss(s, s, temperature=0)
    with pytest.raises(ValueError, match="vocabulary"):
        distill_loss(s, _logits(2, 6))
    with pytest.raises(ValueError, match="mask"):
        distill_loss(s, s, mask=torch.ones(3, dtype=torch.bool))


def _unchunked_and_chunked(kind, beta, temperature, chunk_size, shared_head, as_weight):
    torch.manual_seed(0)
    H, V = 8, 37
    s_head = torch.nn.Linear(H, V, bias=False)
    t_head = s_head if shared_head else torch.nn.Linear(H, V, bias=False)
    hs = torch.randn(3, 5, H, requires_grad=True)
    ht = torch.randn(3, 5, H)
    mask = torch.rand(3, 5) > 0.4
    opts = dict(kind=kind, beta=beta, temperature=temperature)
    ref = distill_loss(s_head(hs), t_head(ht).detach(), mask=mask, **opts)
    ref_grads = torch.autograd.grad(ref, [hs, s_head.weight])
    heads = (s_head.weight, t_head.weight) if as_weight else (s_head, t_head)
    out = chunked_distill_loss(hs, ht, *heads, mask=mask, chunk_size=chunk_size, **opts)
    grads = torch.autograd.grad(out, [hs, s_head.weight])
    return ref, ref_grads, out, grads


@pytest.mark.parametrize("kind,beta", [("forward_kl", 0.5), ("reverse_kl", 0.5), ("jsd", 0.3)])
@pytest.mark.parametrize("chunk_size", [1, 4, 1024])
@pytest.mark.parametrize("shared_head,as_weight", [(False, False), (True, False), (False, True)])
def test_chunked_equals_unchunked(kind, beta, chunk_size, shared_head, as_weight):
    ref, ref_grads, out, grads = _unchunked_and_chunked(kind, beta, 1.5, chunk_size, shared_head, as_weight)
    assert out.item() == pytest.approx(ref.item(), rel=1e-5)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-7)


def test_chunked_never_builds_logits_for_the_whole_batch():
    """Every head call sees at most chunk_size positions, forward and recomputation in backward."""
    H, V, chunk = 8, 31, 4
    seen = []

    class Head(torch.nn.Linear):
        def forward(self, x):
            seen.append(x.shape[0])
            return super().forward(x)

    head = Head(H, V, bias=False)
    hs = torch.randn(2, 9, H, requires_grad=True)
    chunked_distill_loss(hs, torch.randn(2, 9, H), head, head, chunk_size=chunk).backward()
    assert max(seen) <= chunk and sum(seen) > 2 * 18  # teacher + student per chunk, plus recomputation
    assert hs.grad is not None and torch.isfinite(hs.grad).all()


def test_chunked_on_the_real_teacher(smol, real_text):
    """The real SmolLM2 head (vocab 49152) on real text: chunked == full logits, values and gradients."""
    model, tok = smol.model, smol.tokenizer
    ids = tok(real_text[:2000], return_tensors="pt")["input_ids"][:, :48]
    with torch.no_grad():
        teacher_hidden = model.model(ids).last_hidden_state
    student_hidden = (teacher_hidden + 0.3 * torch.randn_like(teacher_hidden)).requires_grad_()
    mask = torch.arange(ids.shape[1])[None] >= 16  # positions >= min P only
    head = model.lm_head
    with torch.no_grad():
        full_teacher = head(teacher_hidden)
    ref = distill_loss(head(student_hidden), full_teacher, mask=mask)
    (ref_grad,) = torch.autograd.grad(ref, student_hidden)
    out = chunked_distill_loss(student_hidden, teacher_hidden, head, head, mask=mask, chunk_size=10)
    (grad,) = torch.autograd.grad(out, student_hidden)
    assert ref.item() > 0.01
    assert out.item() == pytest.approx(ref.item(), rel=1e-5)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-4, atol=1e-3 * ref_grad.abs().max().item())
    assert torch.all(grad[:, :16] == 0)
    assert model.lm_head.weight.grad is None  # the teacher side is a target


def test_ce_loss_is_next_token_cross_entropy():
    logits, labels = _logits(2, 6, 11, seed=14), torch.randint(0, 11, (2, 6))
    ref = F.cross_entropy(logits[:, :-1].reshape(-1, 11), labels[:, 1:].reshape(-1))
    assert ce_loss(logits, labels).item() == pytest.approx(ref.item(), rel=1e-6)
    mask = torch.tensor([[1, 1, 0, 0, 1, 1], [0, 0, 0, 1, 1, 1]], dtype=torch.bool)
    labels_ignored = labels.clone()
    labels_ignored[:, 1:][~mask[:, :-1]] = -100
    assert ce_loss(logits, labels, mask).item() == pytest.approx(ce_loss(logits, labels_ignored).item(), rel=1e-6)
    sel = mask[:, :-1]
    ref_masked = F.cross_entropy(logits[:, :-1][sel], labels[:, 1:][sel])
    assert ce_loss(logits, labels, mask).item() == pytest.approx(ref_masked.item(), rel=1e-6)


@pytest.mark.parametrize("chunk_size", [1, 5, 1024])
@pytest.mark.parametrize("as_weight", [False, True])
def test_chunked_ce_equals_ce(chunk_size, as_weight):
    torch.manual_seed(1)
    head = torch.nn.Linear(8, 23, bias=False)
    hidden = torch.randn(2, 7, 8, requires_grad=True)
    labels = torch.randint(0, 23, (2, 7))
    labels[0, 3] = -100
    mask = torch.rand(2, 7) > 0.3
    ref = ce_loss(head(hidden), labels, mask)
    ref_grads = torch.autograd.grad(ref, [hidden, head.weight])
    out = chunked_ce_loss(hidden, head.weight if as_weight else head, labels, mask, chunk_size=chunk_size)
    grads = torch.autograd.grad(out, [hidden, head.weight])
    assert out.item() == pytest.approx(ref.item(), rel=1e-6)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-7)


def test_ce_loss_on_the_real_teacher(smol, real_text):
    ids = smol.tokenizer(real_text[:3000], return_tensors="pt")["input_ids"][:, :64]
    with torch.no_grad():
        logits = smol.model(ids).logits
    ce = ce_loss(logits, ids).item()
    uniform = torch.log(torch.tensor(float(logits.shape[-1]))).item()
    shuffled = ce_loss(logits, ids[:, torch.randperm(ids.shape[1], generator=torch.Generator().manual_seed(0))])
    assert ce < 0.6 * uniform  # the teacher predicts Shakespeare far better than chance
    assert ce < shuffled.item()
    with torch.no_grad():
        hidden = smol.model.model(ids).last_hidden_state
    assert chunked_ce_loss(hidden, smol.model.lm_head, ids, chunk_size=16).item() == pytest.approx(ce, rel=1e-5)


def test_hidden_loss():
    t = _logits(2, 5, 16, seed=15)
    s = (t + 0.1 * _logits(2, 5, 16, seed=16)).requires_grad_()
    assert hidden_loss(t, t).item() == 0.0
    rel = hidden_loss(s, t)
    assert rel.item() == pytest.approx(((s - t).pow(2).sum() / t.pow(2).sum()).item(), rel=1e-6)
    assert hidden_loss(s * 100, t * 100).item() == pytest.approx(rel.item(), rel=1e-5)  # scale-free
    assert hidden_loss(s, t, normalize=False).item() == pytest.approx(F.mse_loss(s, t).item(), rel=1e-6)
    assert hidden_loss(torch.zeros_like(t), t).item() == pytest.approx(1.0)
    mask = torch.tensor([[1, 1, 0, 0, 0], [0, 0, 1, 1, 1]], dtype=torch.bool)
    s_nan = s.detach().clone()
    s_nan[~mask] = float("nan")
    assert hidden_loss(s_nan, t, mask=mask).item() == pytest.approx(
        ((s[mask] - t[mask]).pow(2).sum() / t[mask].pow(2).sum()).item(), rel=1e-6)
    rel.backward()
    assert torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0
    bf = hidden_loss(s.detach().bfloat16(), t.bfloat16())
    assert bf.dtype == torch.float32 and bf.item() == pytest.approx(rel.item(), rel=0.1)


def _causal_softmax(b, h, t, seed, scale=1.0):
    scores = _logits(b, h, t, t, seed=seed, scale=scale)
    causal = torch.ones(t, t, dtype=torch.bool).tril()
    return torch.softmax(scores.masked_fill(~causal, float("-inf")), -1)


def test_matrix_loss_math():
    t = _causal_softmax(2, 3, 8, seed=17)
    s = (t + 0.05 * _logits(2, 3, 8, 8, seed=18)).requires_grad_()
    rows = torch.arange(8) >= 3
    loss, rel = matrix_loss(s, t, rows)
    diff = (s - t)[:, :, rows]
    assert loss.item() == pytest.approx(diff.pow(2).sum((-2, -1)).sqrt().mean().item(), rel=1e-6)
    assert rel.item() == pytest.approx((diff.norm() / t[:, :, rows].norm()).item(), rel=1e-6)
    assert not rel.requires_grad
    zero, zero_rel = matrix_loss(t, t.clone(), rows)
    assert zero.item() == 0.0 and zero_rel.item() == 0.0
    # rows outside the mask change nothing, even NaN
    s2 = s.detach().clone()
    s2[:, :, ~rows] = float("nan")
    assert matrix_loss(s2, t, rows)[0].item() == pytest.approx(loss.item(), rel=1e-6)
    loss.backward()
    assert torch.all(s.grad[:, :, ~rows] == 0) and torch.isfinite(s.grad).all()
    with pytest.raises(ValueError, match="row_mask"):
        matrix_loss(s, t, torch.ones(5, dtype=torch.bool))


def test_matrix_loss_in_bf16_is_computed_in_fp32_and_scale_aware():
    """bf16 Frobenius sums are wrong or explode; ours upcasts, and `relative` is scale-free."""
    t = _causal_softmax(1, 2, 256, seed=19, scale=4.0)
    s = t + 0.01 * _logits(1, 2, 256, 256, seed=20).tril()
    rows = torch.arange(256) >= 64
    for c in (1.0, 1e4):  # an unnormalized student matrix (large Δ) at a huge scale
        s_bf, t_bf = (s * c).bfloat16(), (t * c).bfloat16()
        loss, rel = matrix_loss(s_bf, t_bf, rows)
        ref_diff = (s_bf.double() - t_bf.double())[:, :, rows]
        ref_loss = ref_diff.pow(2).sum((-2, -1)).sqrt().mean()
        assert loss.dtype == torch.float32 and torch.isfinite(loss)
        assert loss.item() == pytest.approx(ref_loss.item(), rel=1e-5)
        assert rel.item() == pytest.approx((ref_diff.norm() / t_bf.double()[:, :, rows].norm()).item(), rel=1e-5)
    rel_1 = matrix_loss(s.bfloat16(), t.bfloat16(), rows)[1]
    rel_big = matrix_loss((s * 1e4).bfloat16(), (t * 1e4).bfloat16(), rows)[1]
    assert rel_big.item() == pytest.approx(rel_1.item(), rel=2e-2)


def test_matrix_loss_on_real_teacher_attention(smol, real_text):
    """Layer-0 softmax attention of the real teacher on real text vs a causal uniform mixer."""
    model = smol.model
    ids = smol.tokenizer(real_text[:2000], return_tensors="pt")["input_ids"][:, :40]
    impl = model.config._attn_implementation
    model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            attn = model(ids, output_attentions=True).attentions[0]  # (1, 9, t, t)
    finally:
        model.set_attn_implementation(impl)
    t = attn.shape[-1]
    uniform = torch.ones(t, t).tril()
    uniform = (uniform / uniform.sum(-1, keepdim=True)).expand_as(attn)
    rows = torch.arange(t) >= 8
    loss, rel = matrix_loss(uniform.bfloat16(), attn.bfloat16(), rows)
    assert torch.isfinite(loss) and 0 < rel.item() < 1.5
    same, same_rel = matrix_loss(attn.bfloat16(), attn.bfloat16(), rows)
    assert same.item() == 0.0 and same_rel.item() == 0.0
    closer = matrix_loss((0.5 * uniform + 0.5 * attn).bfloat16(), attn.bfloat16(), rows)[1]
    assert closer.item() == pytest.approx(0.5 * rel.item(), rel=0.05)
