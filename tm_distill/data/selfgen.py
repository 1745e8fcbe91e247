"""Self-distillation data: text sampled from the teacher itself (on its own distribution, unlimited).

Fast on a GPU; on CPU fine for a few short samples. Sampling is plain ancestral sampling at
``temperature`` (no top-k / top-p truncation), so the text follows the teacher's distribution.
"""

from __future__ import annotations

import logging
import time
from typing import Sequence

import torch
from tqdm.auto import tqdm

from ..chat import render_chat

log = logging.getLogger(__name__)

# Diverse instructions used as prompts when none are given (rendered with the tokenizer's chat template).
DEFAULT_PROMPTS = (
    "Write a short story about a lighthouse keeper who finds a message in a bottle.",
    "Explain how vaccines train the immune system, in simple terms.",
    "What are the main causes of inflation? Give three examples.",
    "Write a Python function that checks whether a string is a palindrome, and explain it.",
    "Summarize the plot of Romeo and Juliet in one paragraph.",
    "Give me a recipe for a vegetarian pasta dinner for four people.",
    "Describe the water cycle step by step.",
    "Write a polite email asking a colleague to review a report by Friday.",
    "What is the difference between weather and climate?",
    "Compose a short poem about autumn leaves.",
    "How does a binary search work? Walk through an example.",
    "List five tips for learning a new language as an adult.",
    "Explain why the sky is blue.",
    "Write a dialogue between a customer and a librarian looking for a mystery novel.",
    "What were the main consequences of the invention of the printing press?",
    "Solve: a train travels 180 km in 2.5 hours. What is its average speed?",
    "Describe a typical day in the life of a honeybee.",
    "Give arguments for and against working from home.",
    "Explain what a neural network is to a ten-year-old.",
    "Write a product description for a reusable water bottle.",
    "How do I make a budget for my monthly expenses?",
    "Tell me about the history of the Olympic Games.",
    "What should I pack for a three-day hiking trip?",
    "Translate the phrase 'good morning, how are you?' into French and Spanish, and explain the grammar.",
)


def _render(tokenizer, prompts: Sequence[str], chat: bool = True) -> list[str]:
    if chat and getattr(tokenizer, "chat_template", None):
        return [render_chat(tokenizer, [{"role": "user", "content": p}], add_generation_prompt=True) for p in prompts]
    return list(prompts)


# Over 60 lines with its 10-line docstring; the body is 47 lines.
def sample_from_teacher(
    model, tokenizer, num_samples: int, max_new_tokens: int, *, seed: int = 0, prompts: Sequence[str] | None = None,
    batch_size: int = 8, temperature: float = 1.0, device: torch.device | str | None = None,
    include_prompt: bool = True, chat: bool = True, stats: dict | None = None,
) -> list[str]:
    """Sample ``num_samples`` texts from ``model`` (teacher or any HF causal LM).

    prompts: instructions, used in turn (a seeded shuffle of DEFAULT_PROMPTS when None), rendered with the
    tokenizer's chat template when it has one; max_new_tokens: tokens generated per sample (stops early at
    EOS); temperature: > 0 samples, 0 is greedy; device: where to run (default: the model's device);
    include_prompt: return the rendered prompt + completion (special tokens kept, so re-tokenizing restores
    the chat format) or the completion only. The trailing EOS is not included (tokenization appends one).
    chat: render prompts with the chat template (False: continue them as plain text); stats: a dict that gets
    "new_tokens" (sampled, EOS included) and "seconds" (wall time of the sampling) added to it.
    Deterministic under ``seed`` on a given device; the caller's RNG state is left untouched.
    Returns a list of num_samples strings.
    """
    if num_samples < 1 or max_new_tokens < 1 or batch_size < 1:
        raise ValueError(f"num_samples={num_samples}, max_new_tokens={max_new_tokens} and batch_size={batch_size} "
                         "must all be >= 1")
    if temperature < 0:
        raise ValueError(f"temperature={temperature} must be >= 0 (0 = greedy)")
    if prompts is not None and len(prompts) == 0:
        raise ValueError("prompts is empty: give at least one prompt, or None for the built-in instructions")
    if prompts is None:
        order = torch.randperm(len(DEFAULT_PROMPTS), generator=torch.Generator().manual_seed(seed)).tolist()
        prompts = [DEFAULT_PROMPTS[i] for i in order]
    device = torch.device(device) if device is not None else next(model.parameters()).device
    chosen = [prompts[i % len(prompts)] for i in range(num_samples)]
    rendered = _render(tokenizer, chosen, chat)
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    was_training, side, pad_token = model.training, tokenizer.padding_side, tokenizer.pad_token
    model.eval()
    tokenizer.padding_side = "left"  # generation continues from the right end of every row
    if pad_token is None:  # batches of prompts need padding; a GGUF tokenizer may have no pad token
        tokenizer.pad_token = tokenizer.eos_token
    out: list[str] = []
    sampling = {"do_sample": True, "temperature": temperature, "top_k": None, "top_p": None} if temperature > 0 \
        else {"do_sample": False}
    fork_devices = [device] if device.type == "cuda" else []
    new_tokens, start_time = 0, time.perf_counter()
    try:
        with tqdm(total=num_samples, desc="sampling from teacher", unit="sample") as bar, \
                torch.random.fork_rng(devices=fork_devices), torch.no_grad():
            for b, start in enumerate(range(0, num_samples, batch_size)):
                torch.manual_seed(seed * 1_000_003 + b)
                enc = tokenizer(rendered[start:start + batch_size], return_tensors="pt", padding=True,
                                add_special_tokens=False).to(device)
                gen = model.generate(**enc, max_new_tokens=max_new_tokens, pad_token_id=pad, eos_token_id=eos,
                                     **sampling)
                width = enc["input_ids"].shape[1]
                for row, mask in zip(gen, enc["attention_mask"]):
                    completion = row[width:].tolist()
                    if eos in completion:
                        completion = completion[:completion.index(eos)]
                    new_tokens += min(len(completion) + 1, len(row) - width)
                    ids = (row[:width][mask.bool()].tolist() if include_prompt else []) + completion
                    out.append(tokenizer.decode(ids, skip_special_tokens=False))
                bar.update(len(gen))
    finally:
        if stats is not None:
            stats["new_tokens"] = stats.get("new_tokens", 0) + new_tokens
            stats["seconds"] = stats.get("seconds", 0.0) + time.perf_counter() - start_time
        tokenizer.padding_side = side
        if pad_token is None:
            tokenizer.pad_token = None
        model.train(was_training)
    return out


__all__ = ["DEFAULT_PROMPTS", "sample_from_teacher"]
