"""Teacher folders on disk for the conversion tests."""

from __future__ import annotations

import pytest
from transformers import GPT2Config, GPT2LMHeadModel

from tests.conftest import tiny_llama


@pytest.fixture(scope="session", params=[4, 2], ids=["mha", "gqa"])
def tiny_teacher_dir(request, tmp_path_factory, smol):
    """A tiny random Llama saved as an HF folder, with the real tokenizer (and its chat template)."""
    path = tmp_path_factory.mktemp(f"tiny-teacher-{request.param}")
    tiny_llama(num_kv_heads=request.param).save_pretrained(path)
    smol.tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def gpt2_dir(tmp_path_factory, smol):
    """A tiny model of an unsupported family (GPT-2)."""
    path = tmp_path_factory.mktemp("gpt2")
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=97, n_positions=64)).save_pretrained(path)
    smol.tokenizer.save_pretrained(path)
    return path
