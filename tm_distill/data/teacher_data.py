"""Teacher-written training data at scale, with no dataset download: sampled once, stored with a manifest, reused.

Two kinds, each from the teacher itself (its own distribution, which a converted chat model has to keep):

- ``instructions``: the teacher first writes a user request from a seed topic and a task style ("a how-to
  question about beekeeping", ...), then answers it as a chat turn; the document is the rendered chat
  (request + answer). Topics are split once: every 8th topic is held out, for the eval's teacher-sample set
  only (``heldout=True``), so a held-out sample's prompt is one no run trained on.
- ``continuations``: the teacher continues a prefix (~64 tokens) of a training document of a corpus, as plain
  text — pseudo-labels of real text in the teacher's own words.

Samples are written in shards of ``shard_size`` under ``$TM_DISTILL_CACHE/teacher-data/<kind>-<key>/`` (key: a
hash of the teacher, the kind and every setting), each shard seeded on its own, so a stopped run resumes at the
first missing shard and a later run with the same settings reads them back. ``manifest.json`` records the
teacher, the prompt source, seed, count, tokens and the sampling speed.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import random
from dataclasses import asdict, dataclass
from pathlib import Path

from ..atomic import atomic_write_file
from ..errors import UserError
from ..runtime import cache_dir

log = logging.getLogger(__name__)

KINDS = ("instructions", "continuations")
HELDOUT_EVERY = 8  # topic i is held out when i % HELDOUT_EVERY == HELDOUT_EVERY - 1

# General topics; programming and software documentation are left out, so the held-out domain (the Python
# documentation, data/corpora.py) stays unseen by every training source.
SEED_TOPICS = tuple(
    "beekeeping, the French Revolution, volcanoes, sourdough bread, chess openings, the immune system, jazz, "
    "climate change, ancient Rome, photosynthesis, saving for retirement, marathon training, the Moon landing, "
    "origami, coral reefs, job interviews, the printing press, black holes, gardening tomatoes, the Silk Road, "
    "first aid, plate tectonics, impressionist painting, learning to swim, the water cycle, renting an apartment, "
    "dinosaurs, the Olympic Games, meditation, the human heart, classical music, recycling, the Great Wall of China, "
    "wind energy, public speaking, the Renaissance, honeybees, coffee, solar eclipses, the Roman alphabet, "
    "composting, electric cars, the Amazon rainforest, mountain climbing, the Industrial Revolution, vaccines, "
    "poetry, the ocean tides, baking cookies, chemistry of cooking, world maps, friendship, time management, "
    "ancient Egypt, bicycles, hurricanes, photography, the solar system, the stock market, birdwatching, "
    "knitting, earthquakes, the history of money, healthy sleep, Greek mythology, the telephone, glaciers, "
    "wolves, folk tales, nutrition, the Internet's history, camping, penguins, architecture, recipes with rice, "
    "the piano, deserts, team sports, dental care, the Vikings, elephants, moving to a new city, tea ceremonies, "
    "rainbows, volunteering, the theory of evolution, castles, minimalism, sharks, the metric system, "
    "writing a novel, rivers, the human brain, city planning, magnets, opera, table manners, kites, rain forests, "
    "the Arctic, languages of the world, mushrooms, train travel, lighthouses, the Middle Ages, dogs as pets, "
    "cats, fireworks, the periodic table, weaving, philosophy of happiness, Antarctica, budgeting for a family, "
    "the Wright brothers, snowflakes, roller coasters, democracy, the history of tea, caves, owls, Shakespeare's "
    "plays, the seasons, astronomy for beginners, bread baking at home, the Panama Canal, migration of birds, "
    "nuclear energy, board games, cheese making, the ozone layer, hiking safety, the history of medicine, "
    "sculpture, insects, negotiation, the Pyramids, house plants, bridges, puppetry, soap making, lakes, "
    "the Sahara, storytelling, ballet, the printing of books, robots in factories, letter writing, waterfalls"
    .split(", ")
)
TASK_STYLES = (
    "a question a curious person might ask about {topic}",
    "a request to explain {topic} to a beginner",
    "a request for a short story that involves {topic}",
    "a request for a list of practical tips about {topic}",
    "a request to compare two things related to {topic}",
    "a request for a short poem about {topic}",
    "a request to write a polite email that mentions {topic}",
    "a how-to question about {topic}",
)


class TeacherDataError(UserError, ValueError):
    pass


def topics(heldout: bool) -> list[str]:
    """The training topics (7 of every 8) or the held-out ones (every 8th)."""
    return [t for i, t in enumerate(SEED_TOPICS) if (i % HELDOUT_EVERY == HELDOUT_EVERY - 1) == heldout]


def request_prompts(count: int, seed: int, heldout: bool = False) -> list[str]:
    """``count`` prompts asking the teacher to write a user request (topic x style, seeded)."""
    rng = random.Random(f"requests|{seed}|{heldout}")
    pool = topics(heldout)
    return [f"Write {rng.choice(TASK_STYLES).format(topic=rng.choice(pool))}. Reply with the request only, as "
            "the user would type it, in one or two sentences." for _ in range(count)]


def clean_request(text: str, fallback: str) -> str:
    """The first non-empty line of a written request, without quotes or a "Request:" label; ``fallback`` if none."""
    for line in text.strip().splitlines():
        line = line.strip().strip('"').strip()
        if ":" in line[:12] and line.split(":", 1)[0].lower() in ("request", "user", "question", "prompt"):
            line = line.split(":", 1)[1].strip().strip('"')
        if len(line) >= 8:
            return line
    return fallback


@dataclass(frozen=True)
class TeacherDataSpec:
    kind: str  # one of KINDS
    count: int  # samples
    tokens: int  # new tokens per sample (the answer, or the continuation)
    seed: int = 0
    temperature: float = 1.0
    heldout: bool = False  # instructions: from the held-out topics (eval only)
    source: str | None = None  # continuations: the corpus or file whose training documents give the prefixes
    prefix_tokens: int = 64
    heldout_fraction: float = 0.05  # continuations: the source's held-out split (as the run's data) is never used

    def __post_init__(self):
        if self.kind not in KINDS:
            raise TeacherDataError(f"teacher data kind {self.kind!r} is unknown: choose {' or '.join(KINDS)}")
        if self.count < 1 or self.tokens < 1:
            raise TeacherDataError(f"teacher data needs count >= 1 and tokens >= 1, got {self.count}, {self.tokens}")
        if self.kind == "continuations" and not self.source:
            raise TeacherDataError("continuations need a source whose documents give the prefixes (e.g. wordnet)")


def _folder(teacher, spec: TeacherDataSpec) -> Path:
    config = {k: v for k, v in teacher.model.config.to_dict().items() if k not in ("dtype", "torch_dtype")}
    ident = json.dumps({"teacher": str(teacher.source), "config": config, "spec": asdict(spec), "format": 1},
                       sort_keys=True, default=str)  # the same samples serve a bf16 and an fp32 run
    return cache_dir() / "teacher-data" / f"{spec.kind}-{hashlib.sha256(ident.encode()).hexdigest()[:16]}"


def _prompts(teacher, spec: TeacherDataSpec, lo: int, hi: int, device, batch_size: int, stats: dict,
             prefixes: list[str] | None) -> tuple[list[str], bool]:
    """The prompts of samples [lo, hi) and whether they are chat turns."""
    from .selfgen import sample_from_teacher  # noqa: PLC0415

    if spec.kind == "continuations":
        return prefixes[lo:hi], False
    asks = request_prompts(spec.count, spec.seed, spec.heldout)[lo:hi]
    written = sample_from_teacher(teacher.model, teacher.tokenizer, len(asks), 48, seed=spec.seed * 7919 + lo,
                                  prompts=asks, batch_size=batch_size, temperature=0.8, device=device,
                                  include_prompt=False, stats=stats)
    fallback = [a.split("Write ", 1)[1].split(". Reply", 1)[0] for a in asks]
    return [clean_request(w, "Write " + f) for w, f in zip(written, fallback)], True


def _prefixes(teacher, spec: TeacherDataSpec) -> list[str]:
    """``spec.count`` prefixes of ~prefix_tokens tokens from the training documents of ``spec.source`` (seeded)."""
    from .loading import load_texts  # noqa: PLC0415
    from .tokens import training_documents  # noqa: PLC0415

    docs = training_documents(load_texts(spec.source), teacher.tokenizer, 2048,
                              heldout_fraction=spec.heldout_fraction, seed=spec.seed)
    rng = random.Random(f"prefixes|{spec.seed}")
    out = []
    for _ in range(spec.count):
        doc = docs[rng.randrange(len(docs))]
        start = rng.randrange(max(1, len(doc) - 8 * spec.prefix_tokens))
        start = doc.find(" ", start) + 1 if start else 0  # begin at a word
        ids = teacher.tokenizer(doc[start:start + 8 * spec.prefix_tokens], add_special_tokens=False)["input_ids"]
        out.append(teacher.tokenizer.decode(ids[:spec.prefix_tokens]))
    return out


def teacher_data(teacher, spec: TeacherDataSpec, device=None, batch_size: int | None = None,
                 shard_size: int = 512, progress: bool = True) -> list[str]:
    """The ``spec.count`` texts, sampled (or read back from the cache) shard by shard; see the module docstring.

    teacher: a ``convert.teacher.Teacher``; device: where to sample (default: the teacher's device); batch_size:
    rows per generate call (default 256 on CUDA, 8 elsewhere).
    """
    from .selfgen import sample_from_teacher  # noqa: PLC0415

    folder = _folder(teacher, spec)
    folder.mkdir(parents=True, exist_ok=True)
    device = device or next(teacher.model.parameters()).device
    batch_size = batch_size or (256 if str(device).startswith("cuda") else 8)
    prefixes = _prefixes(teacher, spec) if spec.kind == "continuations" else None
    texts, stats, reused = [], {}, 0
    for shard, lo in enumerate(range(0, spec.count, shard_size)):
        path = folder / f"part-{shard:05d}.jsonl"
        if path.exists():
            texts += [json.loads(line)["text"] for line in path.read_text().splitlines()]
            reused += 1
            continue
        hi = min(lo + shard_size, spec.count)
        prompts, chat = _prompts(teacher, spec, lo, hi, device, batch_size, stats, prefixes)
        got = sample_from_teacher(teacher.model, teacher.tokenizer, hi - lo, spec.tokens, seed=spec.seed * 104729 + lo,
                                  prompts=prompts, batch_size=batch_size, temperature=spec.temperature, device=device,
                                  chat=chat, stats=stats)
        atomic_write_file(path, lambda tmp, g=got: Path(tmp).write_text("".join(json.dumps({"text": t}) + "\n"
                                                                                 for t in g)))
        texts += got
    if not stats:  # every shard was already there: the manifest of the call that sampled them stays
        return texts
    rate = stats.get("new_tokens", 0) / stats["seconds"] if stats.get("seconds") else None
    manifest = {"teacher": str(teacher.source), "kind": spec.kind, "settings": asdict(spec), "count": len(texts),
                "prompt_source": _prompt_source(spec), "shards": -(-spec.count // shard_size),
                "shards_reused": reused, "sampled_tokens": stats.get("new_tokens", 0),
                "sampling_seconds": round(stats.get("seconds", 0.0), 2),
                "sampling_tokens_per_s": rate and round(rate), "device": str(device), "batch_size": batch_size,
                "date": datetime.date.today().isoformat()}
    atomic_write_file(folder / "manifest.json", lambda tmp: Path(tmp).write_text(json.dumps(manifest, indent=1)))
    if rate:
        log.info("teacher data %s: %d samples, %d new tokens at %.0f tokens/s", spec.kind, len(texts),
                 manifest["sampled_tokens"], rate)
    return texts


def _prompt_source(spec: TeacherDataSpec) -> str:
    if spec.kind == "continuations":
        return f"prefixes of {spec.prefix_tokens} tokens of {spec.source}'s training documents"
    which = "held-out" if spec.heldout else "training"
    return (f"requests the teacher wrote from {len(topics(spec.heldout))} {which} seed topics x "
            f"{len(TASK_STYLES)} task styles")


def manifest_of(teacher, spec: TeacherDataSpec) -> dict | None:
    path = _folder(teacher, spec) / "manifest.json"
    return json.loads(path.read_text()) if path.exists() else None


__all__ = ["HELDOUT_EVERY", "KINDS", "SEED_TOPICS", "TASK_STYLES", "TeacherDataError", "TeacherDataSpec",
           "clean_request", "manifest_of", "request_prompts", "teacher_data", "topics"]
