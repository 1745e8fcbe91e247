"""Long generation on a GPU through the paths users take: ``model.generate`` with the hybrid cache (every decode
step a CUDA-graph replay, a new capture at each TransPoint crossed) and `tm-distill generate --device cuda`.

Greedy tokens must equal the eager path's: the same static cache with ``graphs=False`` runs the same kernels one
step at a time, so in fp32 the two agree exactly.
"""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner

from tests.conftest import tiny_llama
from tm_distill.checkpoint import load_student
from tm_distill.cli import cli
from tm_distill.convert import seed_student
from tm_distill.conversion import convert
from tm_distill.models import ATTENTION_ONLY, TransMambaCache
from tm_distill.models.cache import CACHE_KWARG
from tm_distill.ops import HAS_MAMBA_SSM

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not HAS_MAMBA_SSM, reason="mamba-ssm not installed")]

NEW = 128
# Tiny students: one whose TransPoints decoding crosses (a capture per phase), one with attention-only layers.
TINY = {
    "crossing": [0, 9, 24, 60, 100, 150],
    "attention-layers": [ATTENTION_ONLY, 0, ATTENTION_ONLY, 40, ATTENTION_ONLY, 0],
}
# The real teacher's students: the schedule the crash was first seen with, and a Mamba-in-the-Llama one.
SMOL = {
    "crossing": "cycle=0,8,16,32,64,128,256,512",
    "attention-layers": "attn=0,8,16,24;ssm=rest",
}
PROMPTS = ["Write a haiku about the sea.", "What is the capital of France?", "Give me three colors.",
           "Explain in two sentences why the sky is blue."]


def _tiny_student(transpoints):
    teacher = tiny_llama(num_kv_heads=2, num_layers=len(transpoints), seed=1).to("cuda")
    return seed_student(teacher, transpoints, None, "tiny", seed=0).to("cuda").eval()


def _padded(prompts):
    width = max(len(p) for p in prompts)
    ids = torch.zeros(len(prompts), width, dtype=torch.long, device="cuda")
    mask = torch.zeros_like(ids)
    for r, p in enumerate(prompts):
        ids[r, width - len(p):], mask[r, width - len(p):] = p, 1
    return ids, mask


def _generate(model, ids, mask, graphs):
    cache = TransMambaCache(model.config.num_hidden_layers, max_length=ids.shape[1] + NEW, graphs=graphs)
    with torch.no_grad():
        out = model.generate(ids, attention_mask=mask, **{CACHE_KWARG: cache}, max_new_tokens=NEW, do_sample=False,
                             pad_token_id=0, eos_token_id=None, output_logits=True, return_dict_in_generate=True)
    return out.sequences[:, ids.shape[1]:], torch.stack(out.logits, 1), cache


@pytest.mark.parametrize("schedule", TINY)
@pytest.mark.parametrize("batch", [1, 4], ids=["batch1", "padded4"])
def test_generate_long_through_graphs_equals_eager(schedule, batch):
    model = _tiny_student(TINY[schedule])
    g = torch.Generator().manual_seed(batch)
    ids, mask = _padded([torch.randint(1, 97, (n,), generator=g).cuda() for n in (11, 5, 8, 3)[:batch]])
    tokens, logits, cache = _generate(model, ids, mask, graphs=True)
    want, want_logits, _ = _generate(model, ids, mask, graphs=False)
    assert tokens.shape == (batch, NEW)
    assert cache.decode_graph is not None, "decoding must run through graphs"
    if schedule == "crossing":
        assert cache.decode_graph.captures >= 4, "every TransPoint crossed during decoding is a new capture"
    assert torch.equal(tokens, want)
    assert torch.allclose(logits, want_logits, rtol=1e-5, atol=1e-5)


def test_a_held_step_output_survives_the_next_capture():
    """A caller keeping a step's logits (a block of the graphs' pool) across a TransPoint crossing: the next
    capture joins the pool while the earlier graph still holds it (an orphaned pool with a live block made the
    caching allocator assert `use_count > 0`)."""
    from tm_distill.models.graphs import DecodeGraph

    model = _tiny_student(TINY["crossing"])
    ids = torch.randint(1, 97, (2, 40), device="cuda")
    with torch.no_grad():
        cache = TransMambaCache(len(TINY["crossing"]), max_length=40)
        model(ids[:, :5], **{CACHE_KWARG: cache}, use_cache=True)
        step = DecodeGraph(model, cache)
        held = [step(ids[:, t : t + 1]) for t in range(5, 40)]  # not cloned: each phase's output buffer
    assert step.captures >= 3
    assert all(torch.isfinite(h).all() for h in held)


@pytest.fixture(scope="module")
def smol_students(tmp_path_factory, smol):
    root = tmp_path_factory.mktemp("gpu-students")
    return {name: convert("smollm2-135m", root / name, spec, progress=False) for name, spec in SMOL.items()}


def _eager_texts(path, prompts, monkeypatch):
    import tm_distill.generation as generation

    real = generation.decode_cache

    def without_graphs(model, batch_size, max_length):
        cache = real(model, batch_size, max_length)
        cache.graphs = False
        return cache

    monkeypatch.setattr(generation, "decode_cache", without_graphs)
    model, tokenizer = load_student(path, device="cuda")
    return [text for text, _ in generation.generate_texts(model, tokenizer, prompts, NEW, chat=True)]


@pytest.mark.parametrize("schedule", SMOL)
@pytest.mark.parametrize("batch", [1, 4], ids=["batch1", "padded4"])
def test_cli_generate_on_gpu_equals_eager(smol_students, schedule, batch, monkeypatch):
    """`tm-distill generate --device cuda` as a user runs it: 128 new tokens, one prompt or four left-padded."""
    prompts = PROMPTS[:batch]
    args = ["generate", str(smol_students[schedule]), "--chat", "--max-new-tokens", str(NEW), "--device", "cuda"]
    for p in prompts:
        args += ["--prompt", p]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    want = _eager_texts(smol_students[schedule], prompts, monkeypatch)
    printed = result.stdout.rstrip("\n")
    assert printed == (want[0] if batch == 1 else "\n".join(f"--- {i}\n{t}" for i, t in enumerate(want)))
