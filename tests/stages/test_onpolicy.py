"""The onpolicy stage (GKD): its loss is trl's generalized JSD on the generated positions (chunked == unchunked,
values and gradients), the beta limits, the evenly spread and resumable on-policy schedule, generation through
the hybrid cache (greedy == full-forward argmax across the TransPoints), and gradients only where they belong."""

from __future__ import annotations

import warnings

import pytest
import torch

from tests.conftest import tiny_llama
from tm_distill.convert import seed_student
from tm_distill.generation import sample_generate
from tm_distill.losses import distill_loss
from tm_distill.recipe import StageConfig, from_dict
from tm_distill.stages import get_stage_class, use_transpoints
from tm_distill.stages.logits import LogitsStage
from tm_distill.stages.onpolicy import OnPolicyStage, generated_tokens, on_policy_micro, on_policy_micro_batches

TPS = [0, 4, 8]  # tiny_llama has 3 layers; a prompt of 6 + 10 new tokens crosses P = 8 while decoding
PROMPT, NEW = 6, 10


@pytest.fixture
def teacher():
    """One tiny GQA teacher (the loss does not depend on the head layout; generation is tested with both)."""
    return tiny_llama(num_kv_heads=2)


def _trl_jsd():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from trl.experimental.gkd.gkd_trainer import GKDTrainer
    return GKDTrainer.generalized_jsd_loss


def _cfg(lmbda=1.0, beta=0.5, chunk_size=3, temperature=1.0, **kw) -> StageConfig:
    return from_dict(StageConfig, {"name": "onpolicy", "steps": 1, "loss": {"chunk_size": chunk_size}, **kw,
                                   "on_policy": {"lmbda": lmbda, "beta": beta, "prompt_tokens": PROMPT,
                                                 "new_tokens": NEW, "temperature": temperature}})


def _windows(seed=0, b=2, t=24):
    return torch.randint(0, 97, (b, t), generator=torch.Generator().manual_seed(seed))


def _stage_loss(stage, x, step=0):
    stage.begin_step(seed=0, stage_idx=1, step=step)
    with use_transpoints(stage.student, TPS):
        return stage.loss(x)


def _replay(stage, x, step=0, micro=0):
    """The sequences the stage generated for micro-batch ``micro`` of ``step`` (the draws are seeded)."""
    stage.begin_step(seed=0, stage_idx=1, step=step)
    with use_transpoints(stage.student, TPS):
        return stage.generate(x[:, :PROMPT], step * stage.cfg.grad_accum + micro)  # the run's micro-batch index


def test_registry_resolves_the_onpolicy_stage():
    assert get_stage_class("onpolicy") is OnPolicyStage


@pytest.mark.parametrize("beta", [0.0, 0.3, 1.0])
def test_loss_is_trls_generalized_jsd_on_the_generated_positions(teacher, beta):
    """Same value (fp32, 1e-5) and same gradient as trl's unchunked call on full logits, with GKD's label mask."""
    student = seed_student(teacher, TPS)
    stage = OnPolicyStage(_cfg(beta=beta, chunk_size=3, trainable="all"), student, teacher)
    params = [p for _, p in stage.trainable_parameters()]
    x = _windows()
    loss, metrics = _stage_loss(stage, x)
    ours = torch.autograd.grad(loss, params)
    seq = _replay(stage, x)
    assert seq.shape == (2, PROMPT + NEW) and torch.equal(seq[:, :PROMPT], x[:, :PROMPT])
    assert metrics["on_policy"] == 1.0 and metrics["positions"] == 2 * NEW and metrics["generated"] == 2 * NEW
    with use_transpoints(student, TPS):
        s_logits = student(seq).logits
    with torch.no_grad():
        t_logits = teacher(seq).logits
    labels = seq.clone()
    labels[:, :PROMPT] = -100  # GKD: the prompt is not scored; logits i predict token i + 1
    ref = _trl_jsd()(s_logits[:, :-1], t_logits[:, :-1], labels=labels[:, 1:], beta=beta)
    assert loss.item() == pytest.approx(ref.item(), abs=1e-5, rel=1e-5)
    theirs = torch.autograd.grad(ref, params)
    for g_ours, g_ref in zip(ours, theirs):
        torch.testing.assert_close(g_ours, g_ref, atol=1e-6, rtol=1e-4)
    # the chunking (3 positions per chunk) changes nothing: one chunk gives the same per-token mean
    whole = OnPolicyStage(_cfg(beta=beta, chunk_size=4096), student, teacher)
    assert _stage_loss(whole, x)[0].item() == pytest.approx(loss.item(), abs=1e-6, rel=1e-6)


def test_beta_limits_are_forward_and_reverse_kl(teacher):
    student = seed_student(teacher, TPS)
    x = _windows(1)
    fwd = OnPolicyStage(_cfg(beta=0.0), student, teacher)
    rev = OnPolicyStage(_cfg(beta=1.0), student, teacher)
    seq = _replay(fwd, x)
    assert torch.equal(seq, _replay(rev, x))  # the same draws: the seed does not depend on beta
    with use_transpoints(student, TPS), torch.no_grad():
        s_logits, t_logits = student(seq).logits, teacher(seq).logits
    scored = torch.zeros(seq.shape, dtype=torch.bool)
    scored[:, PROMPT - 1:PROMPT + NEW - 1] = True
    with torch.no_grad():
        assert _stage_loss(fwd, x)[0].item() == pytest.approx(
            distill_loss(s_logits, t_logits, scored, kind="forward_kl").item(), rel=1e-5)
        assert _stage_loss(rev, x)[0].item() == pytest.approx(
            distill_loss(s_logits, t_logits, scored, kind="reverse_kl").item(), rel=1e-5)


def test_off_policy_micro_batches_are_the_same_jsd_on_the_data(teacher):
    student = seed_student(teacher, TPS)
    x = _windows(2)
    loss, metrics = _stage_loss(OnPolicyStage(_cfg(lmbda=0.0, beta=0.3), student, teacher), x)
    assert metrics["on_policy"] == 0.0 and metrics["generated"] == 0.0 and metrics["positions"] == 2 * 24
    logits_cfg = from_dict(StageConfig, {"name": "logits", "steps": 1, "loss": {"kind": "jsd", "beta": 0.3}})
    with use_transpoints(student, TPS):
        ref, _ = LogitsStage(logits_cfg, student, teacher).loss(x)
    assert loss.item() == pytest.approx(ref.item(), rel=1e-6)


def test_on_policy_schedule_is_an_exact_even_fraction_and_depends_only_on_the_position():
    for lmbda in (0.0, 0.1, 0.25, 0.5, 1 / 3, 0.75, 1.0):
        flags = [on_policy_micro(k, lmbda) for k in range(120)]
        assert sum(flags) == on_policy_micro_batches(120, lmbda) == int(120 * lmbda + 1e-9)
        for n in range(1, 120):  # every prefix holds floor(n * lmbda) on-policy micro-batches: evenly spread
            assert sum(flags[:n]) == on_policy_micro_batches(n, lmbda)
    assert [on_policy_micro(k, 0.25) for k in range(8)] == [False, False, False, True] * 2
    cfg = _cfg(lmbda=0.25, batch_size=2, grad_accum=2)
    assert generated_tokens(cfg, steps=10) == 5 * 2 * NEW  # 20 micro-batches, a quarter on-policy


def test_micro_batch_choice_and_samples_follow_step_and_micro_index(teacher):
    """The k-th micro-batch of a stage is on-policy iff on_policy_micro(step * grad_accum + micro); a stage object
    built fresh (as after a resume) draws the same sequences for the same (seed, stage_idx, step, micro)."""
    student = seed_student(teacher, TPS)
    cfg = _cfg(lmbda=0.5, grad_accum=2)
    stage = OnPolicyStage(cfg, student, teacher)
    x = _windows(3)
    for step in range(3):
        stage.begin_step(0, 1, step)
        with use_transpoints(student, TPS), torch.no_grad():
            got = [stage.loss(x)[1]["on_policy"] for _ in range(2)]
        assert got == [0.0, 1.0]  # micro 1 of every step: k = 1, 3, 5
    fresh = OnPolicyStage(cfg, student, teacher)
    assert torch.equal(_replay(stage, x, step=2, micro=1), _replay(fresh, x, step=2, micro=1))
    assert not torch.equal(_replay(stage, x, step=2, micro=1), _replay(stage, x, step=3, micro=1))


@pytest.mark.parametrize("tps", [[0, 4, 8], [2, 7, 11], [30, 30, 30]])
def test_greedy_generation_through_the_hybrid_cache_is_the_full_forward_argmax(tiny_teacher, tps):
    """Temperature 0: each new token is the argmax of a cache-free full forward of the sequence so far, while
    layers cross their TransPoints during decoding (KV dropped, state carried); the prompt is kept."""
    student = seed_student(tiny_teacher, tps)
    prompt = _windows(4, b=3, t=PROMPT)
    with use_transpoints(student, tps), torch.no_grad():
        seq = sample_generate(student, prompt, NEW, temperature=0.0)
        assert torch.equal(seq[:, :PROMPT], prompt)
        ref = prompt
        for _ in range(NEW):
            ref = torch.cat([ref, student(ref).logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(seq, ref)


def test_sampling_is_seeded_by_its_generator_and_leaves_the_global_rng_alone(teacher):
    student = seed_student(teacher, TPS)
    prompt = _windows(5, b=4, t=PROMPT)
    state = torch.get_rng_state()
    with use_transpoints(student, TPS):
        a = sample_generate(student, prompt, NEW, 1.0, torch.Generator().manual_seed(7))
        b = sample_generate(student, prompt, NEW, 1.0, torch.Generator().manual_seed(7))
        c = sample_generate(student, prompt, NEW, 1.0, torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(torch.get_rng_state(), state)
    assert a.requires_grad is False and a.dtype == torch.long


def test_gradients_reach_only_the_trainable_parameters(teacher):
    student = seed_student(teacher, TPS)
    stage = OnPolicyStage(_cfg(trainable="ssm"), student, teacher)
    names = {n for n, _ in stage.trainable_parameters()}
    student.train()
    loss, _ = _stage_loss(stage, _windows(6))
    loss.backward()
    assert student.training  # generation ran in eval mode and put the mode back
    grads = {n: p.grad for n, p in student.named_parameters()}
    assert all(grads[n] is None for n in grads if n not in names)
    assert any(grads[n] is not None and grads[n].abs().sum() > 0 for n in names)
    assert not any(p.grad is not None for p in teacher.parameters())


def test_lora_is_allowed_and_trains_adapters(teacher):
    student = seed_student(teacher, TPS)
    stage = OnPolicyStage(_cfg(trainable="lora", lora={"r": 2, "alpha": 4}), student, teacher)
    names = [n for n, _ in stage.trainable_parameters()]
    assert any(".lora_A." in n for n in names)
    loss, metrics = _stage_loss(stage, _windows(7))
    loss.backward()
    assert metrics["on_policy"] == 1.0 and torch.isfinite(loss)
