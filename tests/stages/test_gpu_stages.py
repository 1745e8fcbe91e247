"""The fast GPU path of every stage against the reference path (bf16 tolerances; needs CUDA).

Fast: mamba-ssm's Triton scan and Liger-Kernel's fused linear JSD under bf16 autocast. Reference: the PyTorch
scan (``ssm_backend: torch``) and ``chunked_distill_loss``, same weights, same batch. Errors are relative norms.
"""

from __future__ import annotations

import pytest
import torch

from tm_distill.convert import seed_student
from tm_distill.losses import HAS_LIGER, chunked_distill_loss, fused_distill_loss
from tm_distill.ops import HAS_MAMBA_SSM
from tm_distill.recipe import LossConfig, StageConfig
from tm_distill.stages import get_stage_class

from tests.conftest import tiny_llama

pytestmark = pytest.mark.gpu


def rel(a, b) -> float:
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


@pytest.mark.skipif(not HAS_LIGER, reason="liger-kernel not installed")
@pytest.mark.parametrize("kind,beta,temperature", [("forward_kl", 0.5, 1.0), ("reverse_kl", 0.5, 2.0),
                                                    ("jsd", 0.3, 1.0)])
def test_liger_fused_loss_matches_chunked(kind, beta, temperature):
    g = torch.Generator(device="cuda").manual_seed(0)
    s = torch.randn(700, 96, device="cuda", generator=g).bfloat16().requires_grad_(True)
    t = torch.randn(700, 96, device="cuda", generator=g).bfloat16()
    ws = (torch.randn(3000, 96, device="cuda", generator=g) * 0.2).requires_grad_(True)
    wt = torch.randn(3000, 96, device="cuda", generator=g) * 0.2
    opts = dict(kind=kind, beta=beta, temperature=temperature)
    fast = fused_distill_loss(s, t, ws, wt, backend="liger", **opts)
    gf = torch.autograd.grad(fast, [s, ws])
    ref = chunked_distill_loss(s.float(), t.float(), ws, wt.bfloat16().float(), chunk_size=256, **opts)
    gr = torch.autograd.grad(ref, [s, ws])
    assert abs(float(fast) - float(ref)) / abs(float(ref)) < 2e-2
    assert rel(gf[0], gr[0]) < 5e-2 and rel(gf[1], gr[1]) < 5e-2


@pytest.mark.skipif(not HAS_MAMBA_SSM, reason="mamba-ssm not installed")
@pytest.mark.parametrize("name", ["matrix", "hidden", "logits"])
def test_stage_fast_path_matches_reference(name):
    torch.manual_seed(0)
    teacher = tiny_llama(num_kv_heads=2, num_layers=3).cuda()
    ids = torch.randint(0, 97, (2, 160), device="cuda")
    results = []
    for backend in ("auto", "torch"):
        student = seed_student(teacher, [0, 40, 100], seed=1, ssm_backend=backend, dtype=torch.float32).cuda()
        cfg = StageConfig(name=name, steps=1, trainable="ssm" if name != "logits" else "all",
                          precision="bf16", loss=LossConfig(chunk_size=64))
        stage = get_stage_class(name)(cfg, student, teacher)
        params = [p for _, p in stage.trainable_parameters()]
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss, _ = stage.loss(ids)
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        results.append((loss.detach(), [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]))
    (fast, gf), (ref, gr) = results
    assert abs(float(fast) - float(ref)) <= 3e-2 * abs(float(ref)) + 1e-6
    flat_f = torch.cat([g.flatten().float() for g in gf])
    flat_r = torch.cat([g.flatten().float() for g in gr])
    assert rel(flat_f, flat_r) < 8e-2
