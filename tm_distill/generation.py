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

from .chat import ChatTemplateError, render_chat
from .errors import UserError
from .models.cache import CACHE_KWARG, output_cache

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
    cache = output_cache(out)
    start = time.perf_counter()
    while len(tokens) < max_new_tokens and (eos_token_id is None or tokens[-1] != eos_token_id):
        out = model(input_ids=token, use_cache=True, **{CACHE_KWARG: cache})
        cache = output_cache(out)
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
    cache = output_cache(out)
    for _ in range(new_tokens - 1):
        out = model(input_ids=tokens[-1], use_cache=True, **{CACHE_KWARG: cache})
        cache = output_cache(out)
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
            raise ChatTemplateError("this model's tokenizer has no chat template: drop --chat")
        text = render_chat(tokenizer, [{"role": "user", "content": prompt}], add_generation_prompt=True)
        return tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids
    return tokenizer(prompt, return_tensors="pt").input_ids


class PromptTooLong(UserError, ValueError):
    pass


class PromptTooShort(UserError, ValueError):
    pass


@torch.no_grad()
def decode_cache(model, batch_size: int, max_length: int):
    """The cache generation should decode with: for a student, a static KV cache (fixed-shape steps) whose
    one-token steps replay CUDA graphs on a GPU; None for any other model (it makes its own)."""
    from .models import TransMambaCache, TransMambaForCausalLM  # noqa: PLC0415

    if not isinstance(model, TransMambaForCausalLM):
        return None
    graphs = model.device.type == "cuda" and not model.config.use_conv
    return TransMambaCache(model.config.num_hidden_layers, max_length=max_length, graphs=graphs)


@torch.no_grad()
def generate_texts(
    model, tokenizer, prompts: list[str], max_new_tokens: int = 64, chat: bool = False, temperature: float = 0.0,
    seed: int = 0,
) -> list[tuple[str, torch.Tensor]]:
    """Continue several prompts in one left-padded batch: [(text, new token ids (n,))] in prompt order.

    Each row's TransPoints count from its own first token, so a row continues exactly as its prompt alone.
    """
    if not prompts or any(not p.strip() for p in prompts):
        raise PromptTooShort("the prompt is empty: give the text to continue, e.g. --prompt \"Once upon a time\"")
    encoded = [encode_prompt(tokenizer, p, chat)[0] for p in prompts]
    for p, ids in zip(prompts, encoded):
        if ids.numel() == 0:
            raise PromptTooShort(f"the prompt {p!r} encodes to no tokens: give some text to continue")
    width = max(ids.numel() for ids in encoded)
    limit = model.config.max_position_embeddings
    if width >= limit:
        raise PromptTooLong(
            f"the prompt is {width} tokens but the model handles at most {limit} "
            "(max_position_embeddings): shorten it"
        )
    if width + max_new_tokens > limit:
        log.warning("only %d new tokens fit in the model's %d positions", limit - width, limit)
        max_new_tokens = limit - width
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    batch = torch.full((len(encoded), width), pad_id if pad_id is not None else 0, dtype=torch.long)
    mask = torch.zeros_like(batch)
    for r, ids in enumerate(encoded):  # left padding: every row ends at the same column
        batch[r, width - ids.numel():] = ids
        mask[r, width - ids.numel():] = 1
    batch, mask = batch.to(model.device), mask.to(model.device)
    torch.manual_seed(seed)
    sample = temperature > 0
    extra = {}
    cache = decode_cache(model, len(encoded), width + max_new_tokens)
    if cache is not None:
        extra[CACHE_KWARG] = cache
    out = model.generate(
        batch, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=sample,
        temperature=temperature if sample else None, top_p=None, top_k=None, pad_token_id=pad_id, **extra,
    )
    return [(tokenizer.decode(row[width:], skip_special_tokens=True), row[width:]) for row in out]


def generate_text(
    model, tokenizer, prompt: str, max_new_tokens: int = 64, chat: bool = False, temperature: float = 0.0,
    seed: int = 0,
) -> tuple[str, torch.Tensor]:
    """Greedy (temperature 0) or sampled continuation of ``prompt``. Returns (text, new token ids (n,))."""
    return generate_texts(model, tokenizer, [prompt], max_new_tokens, chat, temperature, seed)[0]


__all__ = ["GreedyResult", "PromptTooLong", "PromptTooShort", "cache_bytes", "encode_prompt", "generate_text",
           "greedy_generate", "sample_generate", "decode_cache", "generate_texts"]
