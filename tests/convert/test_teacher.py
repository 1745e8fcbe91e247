"""Teacher loading: the shipped GGUF, local folders, and clear errors for everything else."""

from __future__ import annotations

import pytest

from tm_distill.convert import TeacherNotFound, UnsupportedTeacher, load_teacher
from tm_distill.convert.teacher import UnreadableModel


def test_shipped_teacher(smol):
    cfg = smol.model.config
    assert (cfg.model_type, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_key_value_heads) == (
        "llama", 30, 9, 3)
    assert cfg.hidden_size == 576 and cfg.vocab_size == 49152
    assert smol.tokenizer.chat_template and smol.source.endswith(".gguf")


def test_local_folder(tiny_teacher_dir):
    teacher = load_teacher(str(tiny_teacher_dir))
    assert teacher.model.config.num_key_value_heads in (2, 4) and not teacher.model.training


@pytest.mark.parametrize("kind,fragment", [
    ("missing", "does not exist"),
    ("missing.gguf", "does not exist"),
    ("text-file", "not a .gguf"),
    ("no-config", "has no config.json"),
])
def test_bad_sources(tmp_path, kind, fragment):
    source = tmp_path / kind
    if kind == "text-file":
        source.write_text("hello")
    elif kind == "no-config":
        source.mkdir()
    with pytest.raises(TeacherNotFound, match=fragment):
        load_teacher(str(source))


def test_unsupported_family(gpt2_dir):
    with pytest.raises(UnsupportedTeacher, match="'gpt2' is not supported.*llama"):
        load_teacher(str(gpt2_dir))


@pytest.mark.parametrize("kind,fragment", [
    ("garbage.gguf", "not a GGUF file"),
    ("corrupt-config", "not a valid JSON"),
    ("no-weights", "no file named model.safetensors"),
])
def test_unreadable_sources(tmp_path, tiny_teacher_dir, kind, fragment):
    source = tmp_path / kind
    if kind == "garbage.gguf":
        source.write_bytes(b"not a gguf at all")
    else:
        source.mkdir()
        text = (tiny_teacher_dir / "config.json").read_text()
        (source / "config.json").write_text(text[: len(text) // 2] if kind == "corrupt-config" else text)
        (source / "tokenizer.json").write_bytes((tiny_teacher_dir / "tokenizer.json").read_bytes())
    with pytest.raises((TeacherNotFound, UnreadableModel), match=fragment):
        load_teacher(str(source))


def test_a_bpe_tokenizer_saved_with_cleanup_decodes_without_the_warning(tmp_path, smol, caplog):
    """A GGUF's tokenizer is saved with clean_up_tokenization_spaces=True, which transformers ignores for BPE and
    warns about on every decode (seen on each `tm-distill generate`): loaded here it decodes the same, silently."""
    import json

    from transformers import AutoTokenizer

    from tm_distill.convert.teacher import load_tokenizer

    smol.tokenizer.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({**config, "clean_up_tokenization_spaces": True}))
    plain = AutoTokenizer.from_pretrained(tmp_path)
    assert plain.clean_up_tokenization_spaces
    ids = plain("Hello , world ! It's fine .")["input_ids"]
    tok = load_tokenizer(tmp_path, "a test tokenizer")
    with caplog.at_level("WARNING"):
        text = tok.decode(ids)
    assert text == "Hello , world ! It's fine ." == plain.decode(ids, clean_up_tokenization_spaces=False)
    assert not tok.clean_up_tokenization_spaces
    assert "clean_up_tokenization_spaces" not in caplog.text
