"""The corpora beside Shakespeare: WordNet (general English) and the Python docs (the held-out domain), from
Debian packages read without dpkg."""

from __future__ import annotations

import io
import shutil
import tarfile

import pytest

from tm_distill.data.corpora import CORPORA, CorpusUnavailable, deb_members, fetch_corpus, wordnet_entry

LINE = ("01500370 05 n 02 heron 0 grey_heron 0 002 @ 01503061 n 0000 #m 01501010 n 0000 | grey or white wading "
        "bird with long neck and long legs and (usually) long bill; \"the heron stood still\"  ")


def _deb(files: dict[str, bytes]) -> bytes:
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w:gz") as tar:
        for name, body in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))
    out = b"!<arch>\n"
    for name, body in (("debian-binary", b"2.0\n"), ("data.tar.gz", data.getvalue())):
        out += f"{name + '/':<16}{0:<12}{0:<6}{0:<6}{'100644':<8}{len(body):<10}`\n".encode() + body
        out += b"\n" if len(body) % 2 else b""
    return out


def test_wordnet_line_becomes_an_entry_and_headers_are_skipped():
    assert wordnet_entry(LINE) == (5, "heron, grey heron (noun): grey or white wading bird with long neck and long "
                                      "legs and (usually) long bill; \"the heron stood still\"")
    assert wordnet_entry("  1 This software and database is being provided to you") is None


def test_deb_members_reads_the_data_archive():
    files = {"./usr/share/doc/python3.11/html/_sources/library/heapq.rst.txt": b"heapq --- Heap queue",
             "./usr/share/doc/x/copyright": b"PSF"}
    members = dict(deb_members(_deb(files)))
    assert members == files
    docs = dict(CORPORA["python-docs"].convert(iter(members.items())))
    assert docs == {"library__heapq.txt": "heapq --- Heap queue"}
    with pytest.raises(CorpusUnavailable, match="not a Debian package"):
        list(deb_members(b"PK\x03\x04 a zip file"))


@pytest.mark.skipif(shutil.which("apt-get") is None, reason="needs apt-get (Debian or Ubuntu)")
def test_wordnet_corpus_is_fetched_once_with_its_license(tmp_path, monkeypatch):
    monkeypatch.setenv("TM_DISTILL_CACHE", str(tmp_path))
    path = fetch_corpus("wordnet")
    files = sorted(path.glob("*.txt"))
    assert len(files) > 100 and (path / "LICENSE").read_text().count("WordNet 3.0 license")
    text = (path / "noun.animal.000.txt").read_text()
    assert "(noun):" in text and len(text.splitlines()) == 400
    assert fetch_corpus("wordnet") == path  # a second call finds it
