"""Load training text through `datasets`: local txt / JSONL / JSON / parquet, folders and globs, the shipped
corpora ("shakespeare"), and hub datasets ("org/name" or "org/name:config").

Every source becomes a plain ``list[str]`` of documents. A text file (``.txt``, ``.text``, ``.md``, ``.rst``)
is ONE document (read with ``sample_by="document"``), so document boundaries survive into tokenization (EOS
after each document). A source that gives a single long document (one text file, say) is split into
documents of consecutive paragraphs (``split_document``), so part of it can be held out.
"""

from __future__ import annotations

import contextlib
import glob
import logging
import re
from collections import defaultdict
from pathlib import Path
from typing import Iterable, Sequence

from ..chat import render_chat
from ..errors import UserError
from .corpora import CORPORA, corpus_files

log = logging.getLogger(__name__)

# file suffix -> datasets builder
BUILDERS = {".txt": "text", ".text": "text", ".md": "text", ".rst": "text", ".jsonl": "json", ".json": "json",
            ".parquet": "parquet"}
DOCUMENT_CHARS = 4000  # the size a single long document is split into (about 1000 tokens of English)
_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n\s*")
_GLOB_CHARS = set("*?[")


class DataSourceError(UserError, ValueError):
    """A data source that does not exist, is empty, or lacks the requested field."""


def _expand(source: str | Path) -> list[Path] | None:
    """Local files for one source string (file, folder or glob), or None if it is not a local path."""
    text = str(source)
    if _GLOB_CHARS & set(text):
        matches = sorted(Path(p) for p in glob.glob(str(Path(text).expanduser()), recursive=True))
        files = [p for p in matches if p.is_file() and p.suffix in BUILDERS]
        if not files:
            raise DataSourceError(f"glob {text!r} matches no {'/'.join(BUILDERS)} files")
        return files
    path = Path(text).expanduser()
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in BUILDERS)
        if not files:
            raise DataSourceError(f"folder {str(path)!r} holds no {'/'.join(BUILDERS)} files")
        return files
    if path.is_file():
        if path.suffix not in BUILDERS:
            raise DataSourceError(f"{str(path)!r}: unsupported file type {path.suffix!r}; use one of {', '.join(BUILDERS)}")
        return [path]
    return None


def _looks_like_hub_name(text: str) -> bool:
    name = text.split(":", 1)[0]
    return name.count("/") == 1 and not text.startswith((".", "/", "~")) and Path(name).suffix not in BUILDERS


def looks_like_hub_dataset(source: str | Path) -> bool:
    """Whether ``source`` names a hub dataset (not a shipped corpus, a local path or a glob)."""
    text = str(source)
    if text in CORPORA or _GLOB_CHARS & set(text) or Path(text).expanduser().exists():
        return False
    return _looks_like_hub_name(text)


def _extract(dataset, text_field: str, chat_field: str | None, tokenizer, where: str) -> list[str]:
    """Documents from a `datasets.Dataset`: the text column, or chat messages rendered with the template."""
    columns = list(dataset.column_names)
    field = chat_field or text_field
    if field not in columns:
        hint = "set text_field" if chat_field is None else "set chat_field"
        raise DataSourceError(f"{where} has no field {field!r} (its columns: {', '.join(columns) or 'none'}); {hint}")
    if chat_field is not None:
        if tokenizer is None or not getattr(tokenizer, "chat_template", None):
            raise DataSourceError(f"chat_field={chat_field!r} needs a tokenizer with a chat template to render {where}")
        return [render_chat(tokenizer, list(m)) for m in dataset[chat_field] if m]
    docs, missing = [], 0
    for value in dataset[text_field]:
        if value is None:
            missing += 1
            continue
        if not isinstance(value, str):
            raise DataSourceError(
                f"{where}: field {text_field!r} holds {type(value).__name__}, not text; for chat messages pass "
                f"chat_field={text_field!r} and a tokenizer"
            )
        docs.append(value)
    if missing:
        log.warning("%s: %d of %d rows have no %r (missing or null): dropped", where, missing, len(dataset), text_field)
    return docs


def _not_utf8(path: Path) -> str | None:
    """Why the file at ``path`` is not UTF-8 text (UTF-16, or its first bad byte), or None when it is."""
    with path.open("rb") as f:
        if f.read(2) in (b"\xff\xfe", b"\xfe\xff"):
            return "it is UTF-16 text; convert it to UTF-8 (e.g. iconv -f UTF-16 -t UTF-8)"
        f.seek(0)
        carried, offset = b"", 0
        while True:
            chunk = f.read(1 << 20)
            data = carried + chunk
            try:
                data.decode("utf-8")
                carried = b""
            except UnicodeDecodeError as err:
                if not (chunk and err.reason == "unexpected end of data"):  # else: a character split across reads
                    where = f"byte 0x{data[err.start]:02x} at offset {offset + err.start}"
                    return f"{where} is not UTF-8; convert the file to UTF-8 (e.g. iconv -f LATIN1 -t UTF-8)"
                carried = data[err.start:]
            offset += len(data) - len(carried)
            if not chunk:
                return None


def _cause(err: BaseException) -> str:
    """The first line of the innermost error (datasets wraps the real one in "An error occurred ...")."""
    while err.__cause__ is not None or err.__context__ is not None:
        err = err.__cause__ or err.__context__
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0] if text else ''}"[:300]


@contextlib.contextmanager
def _quiet_datasets(datasets):
    """No "Generating train split" bar for a local file: reading it takes a moment, and the command's own
    progress already shows the step. The user's setting comes back afterwards."""
    was_enabled = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if was_enabled:
            datasets.enable_progress_bars()


def _load_group(builder: str, paths: list[str], split: str, fields: dict) -> list[str]:
    """Documents of ``paths``, all read by one datasets builder; a failure names the file and the reason."""
    import datasets

    extra = {"sample_by": "document"} if builder == "text" else {}
    where = paths[0] if len(paths) == 1 else f"{len(paths)} {builder} files ({paths[0]}, ...)"
    try:
        with _quiet_datasets(datasets):
            ds = datasets.load_dataset(builder, data_files={split: paths}, split=split, **extra)
        return _extract(ds, where=where, **fields)
    except DataSourceError:
        raise
    except Exception as err:  # datasets raises many types; find the file and the reason
        for path in paths if builder != "parquet" else []:
            if (why := _not_utf8(Path(path))) is not None:
                raise DataSourceError(f"{path} is not UTF-8 text: {why}") from None
        if len(paths) > 1:  # e.g. files whose columns differ: each on its own, so a failure names its file
            log.warning("%s do not read as one table (%s): reading them one by one", where, _cause(err))
            return [doc for path in paths for doc in _load_group(builder, [path], split, fields)]
        raise DataSourceError(f"could not read {where} as {builder}: {_cause(err)}") from None


def _load_files(files: Sequence[Path], split: str, **fields) -> list[str]:
    by_builder: dict[str, list[str]] = defaultdict(list)
    for f in files:
        by_builder[BUILDERS[f.suffix]].append(str(f))
    docs: list[str] = []
    for builder, paths in by_builder.items():
        docs.extend(_load_group(builder, paths, split, fields))
    return docs


def _load_hub(name: str, split: str, **fields) -> list[str]:
    import datasets

    repo, _, config = name.partition(":")
    try:
        ds = datasets.load_dataset(repo, config or None, split=split)
    except Exception as err:
        raise DataSourceError(
            f"could not load hub dataset {repo!r} (config {config or 'default'}, split {split!r}): {err}. "
            "Check the name and network access, or download it and pass the local files"
        ) from err
    return _extract(ds, where=f"hub dataset {name!r}", **fields)


def _cut(text: str, start: int, target: int) -> int:
    """Where the document starting at ``start`` ends: the first paragraph break past ``target`` characters, else
    the first line break, else the first space, within twice that; else exactly ``target`` characters."""
    lo, hi = start + target, start + 2 * target
    m = _PARAGRAPH_BREAK.search(text, lo, hi)
    if m:
        return m.end()
    for sep in ("\n", " "):
        i = text.find(sep, lo, hi)
        if i >= 0:
            return i + 1
    return lo


def split_document(text: str, target_chars: int = DOCUMENT_CHARS) -> list[str]:
    """Cut one long text into documents of about ``target_chars``..2x characters at paragraph breaks (at line
    breaks or spaces when it has none). The pieces join back to ``text``; a text under 2x stays whole."""
    if target_chars < 1:
        raise ValueError(f"target_chars={target_chars} must be >= 1")
    pieces, start = [], 0
    while len(text) - start >= 2 * target_chars:
        end = _cut(text, start, target_chars)
        pieces.append(text[start:end])
        start = end
    pieces.append(text[start:])
    return [p for p in pieces if p.strip()] or [text]


def load_texts(
    source: str | Path | Iterable[str | Path], *, text_field: str = "text", split: str = "train",
    limit: int | None = None, tokenizer=None, chat_field: str | None = None, split_single: bool = True,
) -> list[str]:
    """Documents from a data source, in a stable order.

    source: a .txt/.jsonl/.json/.parquet file, a folder (searched recursively) or glob of them, a list of
    such, a shipped corpus name ("shakespeare"), or a hub dataset "org/name" / "org/name:config".
    text_field: the column holding text (JSON/parquet/hub); split: the split to read (local files are all
    one split); limit: keep at most this many documents; chat_field: a column of chat messages
    (list of {"role", "content"}) rendered with ``tokenizer``'s chat template instead of text_field.
    split_single: a source that gives one document is split into paragraphs-sized documents
    (``split_document``) so the document-level held-out split works on a single file.
    Empty documents are dropped. Raises DataSourceError naming the missing file, the missing field and the
    columns that exist, or the source that gave no text.
    """
    if limit is not None and limit < 1:
        raise DataSourceError(f"limit={limit} must be >= 1 (or None for all documents)")
    fields = {"text_field": text_field, "chat_field": chat_field, "tokenizer": tokenizer}
    sources = [source] if isinstance(source, (str, Path)) else list(source)
    if not sources:
        raise DataSourceError("empty data source list: give at least one file, folder, corpus or dataset name")
    docs: list[str] = []
    for src in sources:
        text = str(src)
        if text in CORPORA and not Path(text).exists():
            got = _load_files(corpus_files(text), split, **fields)
        elif (files := _expand(text)) is not None:
            got = _load_files(files, split, **fields)
        elif _looks_like_hub_name(text):
            got = _load_hub(text, split, **fields)
        else:
            raise DataSourceError(
                f"data source {text!r} does not exist: give a .txt/.jsonl/.json/.parquet file, a folder or glob of "
                f"them, a corpus ({', '.join(CORPORA)}), or a hub dataset 'org/name[:config]'"
            )
        got = [d for d in got if d.strip()]
        log.info("loaded %d documents from %s", len(got), text)
        docs.extend(got)
        if limit is not None and len(docs) >= limit:
            break
    if not docs:
        raise DataSourceError(f"data source {source!r} gave no text (every document is empty)")
    if split_single and len(docs) == 1 and len(pieces := split_document(docs[0])) > 1:
        log.info("%s is one document of %d characters: split at paragraph breaks into %d documents", source,
                 len(docs[0]), len(pieces))
        docs = pieces
    return docs[:limit] if limit is not None else docs


__all__ = ["BUILDERS", "DOCUMENT_CHARS", "DataSourceError", "load_texts", "looks_like_hub_dataset", "split_document"]
