"""Generating text: prompts (plain or as a chat turn), ``generate_text`` behind `tm-distill generate`, and
``greedy_generate``, the decoding loop the eval's retrieval and speed sections share, and ``sample_generate``,
the onpolicy stage's seeded sampling.

Plain loops instead of ``model.generate``, driving the same path (one prefill, then one-token steps through the
model's cache: for the student the hybrid TransMambaCache), so teacher and student decode the same way (no
defaults from a generation_config, no EOS stop or padding), the prefill and decode phases can be timed apart,
and sampling draws from a caller's ``torch.Generator`` (not the global RNG).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import torch

log = logging.getLogger(__name__)


@dataclass
class GreedyResult:
    tokens: list[int]  # the generated token ids (without the prompt)
    prefill_s: float  # wall time of the prompt's forward pass
    decode_s: float  # wall time of the remaining steps (len(tokens) - 1 forward passes)
    cache: object  # the model's cache after the last step (TransMambaCache, DynamicCache, ...)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def greedy_generate(
    model: torch.nn.Module, input_ids: torch.Tensor, max_new_tokens: int, eos_token_id: int | None = None
) -> GreedyResult:
    """Greedy continuation of one prompt. input_ids: (1, seqlen) on the model's device.

    Stops after ``max_new_tokens`` tokens or at ``eos_token_id`` (which is kept in ``tokens``).
    """
    if input_ids.dim() != 2 or input_ids.shape[0] != 1:
        raise ValueError(f"input_ids must be (1, seqlen), got shape {tuple(input_ids.shape)}")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens} must be >= 1")
    device = input_ids.device
    _sync(device)
    start = time.perf_counter()
    out = model(input_ids=input_ids, use_cache=True, logits_to_keep=1)
    token = out.logits[:, -1].argmax(-1, keepdim=True)  # (1, 1)
    _sync(device)
    prefill = time.perf_counter() - start
    tokens = [int(token)]
    cache = out.past_key_values
    start = time.perf_counter()
    while len(tokens) < max_new_tokens and (eos_token_id is None or tokens[-1] != eos_token_id):
        out = model(input_ids=token, past_key_values=cache, use_cache=True)
        cache = out.past_key_values
        token = out.logits[:, -1].argmax(-1, keepdim=True)
        tokens.append(int(token))
    _sync(device)
    return GreedyResult(tokens=tokens, prefill_s=prefill, decode_s=time.perf_counter() - start, cache=cache)


@torch.no_grad()
def sample_generate(
    model: torch.nn.Module, input_ids: torch.Tensor, new_tokens: int, temperature: float = 1.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Continue every row of ``input_ids`` (batch, prompt) by exactly ``new_tokens`` sampled tokens.

    Ancestral sampling from softmax(logits / temperature), no top-k/top-p; temperature 0 is greedy (argmax).
    EOS does not stop a row: every row gets ``new_tokens`` tokens. ``generator`` (on the model's device) makes
    the draws reproducible without touching the global RNG. Returns (batch, prompt + new_tokens) token ids
    whose first ``prompt`` columns are ``input_ids``.
    """
    if input_ids.dim() != 2 or input_ids.shape[1] < 1:
        raise ValueError(f"input_ids must be (batch, prompt) with prompt >= 1, got shape {tuple(input_ids.shape)}")
    if new_tokens < 1 or temperature < 0:
        raise ValueError(f"need new_tokens >= 1 and temperature >= 0 (0: greedy), got {new_tokens}, {temperature}")

    def draw(logits: torch.Tensor) -> torch.Tensor:  # logits: (batch, V) -> (batch, 1)
        if temperature == 0:
            return logits.argmax(-1, keepdim=True)
        probs = torch.softmax(logits.float() / temperature, dim=-1)
        return torch.multinomial(probs, 1, generator=generator)

    out = model(input_ids=input_ids, use_cache=True, logits_to_keep=1)
    tokens = [draw(out.logits[:, -1])]
    cache = out.past_key_values
    for _ in range(new_tokens - 1):
        out = model(input_ids=tokens[-1], past_key_values=cache, use_cache=True)
        cache = out.past_key_values
        tokens.append(draw(out.logits[:, -1]))
    return torch.cat([input_ids, *tokens], dim=1)


def cache_bytes(cache) -> int:
    """Bytes a decoding cache holds: TransMambaCache.memory_bytes(), or the K/V tensors of an HF cache."""
    if cache is None:
        return 0
    if hasattr(cache, "memory_bytes"):
        return int(sum(cache.memory_bytes().values()))
    total = 0
    for layer in getattr(cache, "layers", []):
        for name in ("keys", "values"):
            t = getattr(layer, name, None)
            if isinstance(t, torch.Tensor):
                total += t.numel() * t.element_size()
    return total


def encode_prompt(tokenizer, prompt: str, chat: bool = False) -> torch.Tensor:
    """Token ids (1, t) of ``prompt``; with ``chat`` as a user turn in the tokenizer's chat template."""
    if chat:
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError("this model's tokenizer has no chat template: drop --chat")
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
        )
        return tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids
    return tokenizer(prompt, return_tensors="pt").input_ids


class PromptTooLong(ValueError):
    pass


class PromptTooShort(ValueError):
    pass


@torch.no_grad()
def generate_text(
    model, tokenizer, prompt: str, max_new_tokens: int = 64, chat: bool = False, temperature: float = 0.0,
    seed: int = 0,
) -> tuple[str, torch.Tensor]:
    """Greedy (temperature 0) or sampled continuation of ``prompt``. Returns (text, new token ids (n,))."""
    if not prompt.strip():
        raise PromptTooShort("the prompt is empty: give the text to continue, e.g. --prompt \"Once upon a time\"")
    ids = encode_prompt(tokenizer, prompt, chat).to(model.device)
    if ids.shape[1] == 0:
        raise PromptTooShort(f"the prompt {prompt!r} encodes to no tokens: give some text to continue")
    limit = model.config.max_position_embeddings
    if ids.shape[1] >= limit:
        raise PromptTooLong(
            f"the prompt is {ids.shape[1]} tokens but the model handles at most {limit} "
            "(max_position_embeddings): shorten it"
        )
    if ids.shape[1] + max_new_tokens > limit:
        log.warning("only %d new tokens fit in the model's %d positions", limit - ids.shape[1], limit)
        max_new_tokens = limit - ids.shape[1]
    torch.manual_seed(seed)
    sample = temperature > 0
    out = model.generate(
        ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens, do_sample=sample,
        temperature=temperature if sample else None, top_p=None, top_k=None,
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
    )
    new = out[0, ids.shape[1]:]
    return tokenizer.decode(new, skip_special_tokens=True), new


__all__ = ["GreedyResult", "PromptTooLong", "PromptTooShort", "cache_bytes", "encode_prompt", "generate_text",
           "greedy_generate", "sample_generate"]
