"""A tiny but real distillation setup: a random 2-layer Llama with SmolLM2's tokenizer, saved as an HF
folder, and a few kilobytes of real Shakespeare, so whole recipe runs take seconds."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from tm_distill.convert.teacher import Teacher


def tiny_smol_teacher(tokenizer, seed: int = 0) -> Teacher:
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      tie_word_embeddings=True, eos_token_id=tokenizer.eos_token_id)
    return Teacher(LlamaForCausalLM(cfg).eval(), tokenizer, "tiny")


@pytest.fixture(scope="session")
def tiny_teacher_dir(smol, tmp_path_factory):
    """An HF folder holding a tiny random Llama teacher and SmolLM2's tokenizer."""
    teacher = tiny_smol_teacher(smol.tokenizer)
    path = tmp_path_factory.mktemp("tiny-teacher")
    teacher.model.save_pretrained(path)
    smol.tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_text_dir(shakespeare_files, tmp_path_factory):
    """Six short real documents (the opening 6000 characters of six plays)."""
    path = tmp_path_factory.mktemp("tiny-text")
    for i, f in enumerate(shakespeare_files[:6]):
        (path / f"{i}.txt").write_text(f.read_text()[:6000])
    return path


@pytest.fixture
def tiny_recipe(tiny_teacher_dir, tiny_text_dir, tmp_path):
    """A factory: tiny_recipe(**stage_fields) -> a raw recipe dict (one logits stage, output under tmp_path)."""
    return lambda **stage_overrides: _tiny_recipe_dict(tiny_teacher_dir, tiny_text_dir, tmp_path / "run",
                                                       **stage_overrides)


def _tiny_recipe_dict(teacher_dir, text_dir, output_dir, **stage_overrides) -> dict:
    stage = {"name": "logits", "steps": 6, "batch_size": 2, "lr": 1e-2, "checkpoint_every": 2, "keep_last": 2}
    stage.update(stage_overrides)
    return {"name": "tiny", "teacher": str(teacher_dir), "transpoints": "cycle=0,8", "output_dir": str(output_dir),
            "device": "cpu", "data": {"source": str(text_dir), "seq_len": 32, "heldout_fraction": 0.2,
                                      "heldout_windows": 4},
            "stages": [stage]}
