"""Fixtures of the CLI tests."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM


@pytest.fixture(scope="module")
def root(smol, shakespeare_files, tmp_path_factory):
    """teacher/ (tiny random Llama), text/ (five 5,000-character plays) and my.txt (one 45,000-character file)."""
    root = tmp_path_factory.mktemp("reliability")
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(smol.tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      tie_word_embeddings=True)
    LlamaForCausalLM(cfg).save_pretrained(root / "teacher")
    smol.tokenizer.save_pretrained(root / "teacher")
    (root / "text").mkdir()
    for i, f in enumerate(shakespeare_files[:5]):
        (root / "text" / f"{i}.txt").write_text(f.read_text()[:5000])
    (root / "my.txt").write_text(shakespeare_files[1].read_text()[:45000])  # one file, as a new user has
    return root
