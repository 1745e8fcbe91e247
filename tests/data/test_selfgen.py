"""sample_from_teacher on the real teacher, tiny sizes (2 samples x 16 tokens): seeded, chat-formatted,
RNG-neutral, and usable as training text."""

from __future__ import annotations

import pytest
import torch

from tm_distill.data.selfgen import DEFAULT_PROMPTS, sample_from_teacher

ASSISTANT = "<|im_start|>assistant\n"


@pytest.fixture(scope="module")
def samples(smol):
    torch.manual_seed(123)
    before = torch.get_rng_state()
    texts = sample_from_teacher(smol.model, smol.tokenizer, 2, 16, seed=0, batch_size=2)
    return texts, before, torch.get_rng_state()


def test_samples_are_chat_formatted_and_leave_the_rng_alone(smol, samples):
    texts, before, after = samples
    tok = smol.tokenizer
    assert torch.equal(after, before)  # the caller's RNG is untouched
    assert len(texts) == 2 and len(set(texts)) == 2
    for text in texts:
        prompt, completion = text.split(ASSISTANT, 1)
        assert prompt.startswith("<|im_start|>") and any(p in prompt for p in DEFAULT_PROMPTS)
        n = len(tok(completion, add_special_tokens=False)["input_ids"])
        assert 1 <= n <= 17 and tok.eos_token not in completion
    assert not smol.model.training


def test_samples_are_deterministic_under_seed(smol, samples):
    texts = samples[0]
    assert sample_from_teacher(smol.model, smol.tokenizer, 2, 16, seed=0, batch_size=2) == texts
    other = sample_from_teacher(smol.model, smol.tokenizer, 2, 16, seed=1, batch_size=2)
    assert other != texts


def test_given_prompts_greedy_and_completion_only(smol):
    model, tok = smol.model, smol.tokenizer
    prompts = ["What is the capital of France?"]
    greedy = sample_from_teacher(model, tok, 2, 6, prompts=prompts, temperature=0.0, include_prompt=False)
    assert greedy[0] == greedy[1]  # greedy decoding is deterministic and ignores the seed
    assert "Paris" in greedy[0] and "France?" not in greedy[0]
    with pytest.raises(ValueError, match="prompts is empty"):
        sample_from_teacher(model, tok, 1, 4, prompts=[])
    with pytest.raises(ValueError, match="num_samples=0"):
        sample_from_teacher(model, tok, 0, 4)


def test_samples_feed_the_token_pipeline(smol, samples, tmp_path):
    from tm_distill.data.tokens import build_token_dataset

    data = build_token_dataset(samples[0], smol.tokenizer, 16, heldout_fraction=0.5, cache_dir=tmp_path)
    assert data.train.shape[1] == 16 and data.train.shape[0] >= 1 and data.heldout.shape[0] >= 1
    assert smol.tokenizer.decode(data.train[0].tolist()).startswith("<|im_start|>")
