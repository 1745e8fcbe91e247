"""Synthetic recall sequences for training: a record list spread through real filler text, then questions.

A sequence of ``seq_len`` tokens holds ``records`` lines "record <item>: <code>" (an item is two words, a code
four digits and a letter), scattered at random depths through filler paragraphs, and ends with questions
"Q: the code of record <item>? A: <code>" about records from anywhere in it, so the answer tokens can only be
predicted by reading back across the sequence. Distilling on these teaches the student the teacher's recall at
the lengths it trains at.

The format is deliberately unlike the eval's probes (``eval/retrieval.py``: a five-digit pass key stated in
prose, "Name Surname: 555-0123" phone-book lines), so passkey and phonebook stay held-out measures.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

ADJECTIVES = ("amber azure bold brisk calm coral crisp dusky eager faint fern gentle gilded hazel hollow icy ivory "
              "jade keen lunar mellow misty noble ochre pale quiet rapid rustic sable silent slate solar stark "
              "tawny umber vivid wild woven young zesty").split()
NOUNS = ("anchor badger beacon canyon cedar comet dagger ember falcon fjord glacier harbor heron island jackal "
         "kestrel lantern maple meadow nectar orchid otter pebble quarry raven ridge saddle spruce tundra valley "
         "walrus willow yarrow zephyr").split()


@dataclass
class RecallSequence:
    input_ids: list[int]  # exactly seq_len tokens
    answer_spans: list[tuple[int, int]]  # [start, end) token positions of each answer (the code after "A:")


def _code(rng: random.Random) -> str:
    return f"{rng.randrange(1000, 10000)}{rng.choice('ABCDEFGHJKLMNPQRSTUVWXYZ')}"


def recall_sequence(tokenizer, filler_ids: Sequence[int], seq_len: int, seed: int, records: int = 12,
                    questions: int = 6) -> RecallSequence:
    """One sequence of exactly ``seq_len`` tokens (deterministic under ``seed``).

    filler_ids: real text token ids (no EOS), at least seq_len long. Raises ValueError when the records and
    questions alone do not fit in seq_len.
    """
    rng = random.Random(seed)
    encode = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    pairs = rng.sample([(a, n) for a in ADJECTIVES for n in NOUNS], records)
    items = [(f"{a} {n}", _code(rng)) for a, n in pairs]
    head = encode("Keep track of every record below; questions about them follow the text.\n\n")
    lines = [encode(f"\nrecord {item}: {code}\n") for item, code in items]
    asked = rng.sample(range(records), min(questions, records))
    qa, spans_rel = [], []
    for i in asked:
        prompt = encode(f"\nQ: the code of record {items[i][0]}? A:")
        answer = encode(f" {items[i][1]}")
        spans_rel.append((len(qa) + len(prompt), len(qa) + len(prompt) + len(answer)))
        qa += prompt + answer
    n_fill = seq_len - len(head) - sum(map(len, lines)) - len(qa)
    if n_fill < 0:
        raise ValueError(f"{records} records and {len(asked)} questions need {seq_len - n_fill} tokens, more than "
                         f"seq_len={seq_len}: use fewer records or a longer seq_len")
    if len(filler_ids) < n_fill:
        raise ValueError(f"filler text has {len(filler_ids)} tokens, a recall sequence of {seq_len} needs {n_fill}")
    start = rng.randrange(len(filler_ids) - n_fill + 1)
    fill = list(filler_ids[start:start + n_fill])
    cuts = sorted(rng.randrange(n_fill + 1) for _ in lines)
    ids, prev = list(head), 0
    for cut, line in zip(cuts, lines):
        ids += fill[prev:cut] + line
        prev = cut
    ids += fill[prev:]
    offset = len(ids)
    ids += qa
    return RecallSequence(ids, [(offset + a, offset + b) for a, b in spans_rel])


def recall_windows(tokenizer, filler_ids: Sequence[int], seq_len: int, count: int, seed: int = 0,
                   records: int | None = None) -> list[RecallSequence]:
    """``count`` sequences; records default to one per 170 tokens of seq_len (12 at 2048, 24 at 4096), at least 4."""
    records = records or max(4, seq_len // 170)
    return [recall_sequence(tokenizer, filler_ids, seq_len, seed * 1_000_003 + i, records=records,
                            questions=max(2, records // 2)) for i in range(count)]


__all__ = ["RecallSequence", "recall_sequence", "recall_windows"]
