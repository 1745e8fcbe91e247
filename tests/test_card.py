"""The model card of a student folder: Hub front matter, what the folder is, and only numbers measured on it."""

from __future__ import annotations

import json

import yaml

from tests.conftest import tiny_llama
from tm_distill.card import CARD_FILE, render_card, teacher_facts, write_card
from tm_distill.checkpoint import save_checkpoint, save_student
from tm_distill.convert import parse_transpoints, seed_student


def _front(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---", 2)[1])


def _student(teacher_name: str, spec: str = "0,5,9,attn"):
    return seed_student(tiny_llama(num_layers=4), parse_transpoints(spec, 4), spec, teacher_name, seed=1)


def test_a_converted_student_gets_a_card_with_its_teachers_license(tmp_path):
    teacher = tmp_path / "teacher"
    teacher.mkdir()
    (teacher / CARD_FILE).write_text("---\nlicense: mit\nlanguage: en\n---\n# a teacher\n")
    folder = save_student(_student(str(teacher)), None, tmp_path / "student")
    card = (folder / CARD_FILE).read_text()
    front = _front(card)
    assert front["license"] == "mit" and front["library_name"] == "transformers"
    assert "base_model" not in front  # a local folder's hub id is not known
    assert front["pipeline_tag"] == "text-generation" and "transmamba" in front["tags"]
    assert "distillation" not in front["tags"]
    assert "per layer: `0,5,9,attn` (1 pure SSM, 1 pure attention, 2 switching)" in card
    assert "not trained (0 tokens)" in card and "plain init (no calibration)" in card
    assert "Not evaluated yet" in card and f"--teacher {teacher}" in card
    assert 'from_pretrained("path/to/this/folder", trust_remote_code=True)' in card
    assert json.loads((folder / "tm_distill.json").read_text()) == {}  # the metadata given, nothing added


def test_step_checkpoints_get_no_card(tmp_path):
    dest = save_checkpoint(tmp_path / "step-1", _student("tiny"), None, {"step": 1}, {"stage": "logits"})
    assert not (dest / CARD_FILE).exists()


def test_the_shipped_teacher_names_its_hub_model_and_license():
    assert teacher_facts("smollm2-135m") == {"base_model": "HuggingFaceTB/SmolLM2-135M-Instruct",
                                             "license": "apache-2.0"}
    assert teacher_facts("/no/such/teacher") == {}


def test_a_student_of_the_shipped_teacher_names_it_in_front_matter_and_prose(tmp_path):
    folder = save_student(_student("smollm2-135m", "cycle=0,8"), None, tmp_path / "student")
    card = (folder / CARD_FILE).read_text()
    assert _front(card) == {"base_model": "HuggingFaceTB/SmolLM2-135M-Instruct", "library_name": "transformers",
                            "license": "apache-2.0", "pipeline_tag": "text-generation",
                            "tags": ["tm-distill", "transmamba", "mamba2", "hybrid"]}
    assert "# TransMamba student of HuggingFaceTB/SmolLM2-135M-Instruct" in card
    assert "Spec `cycle=0,8`" in card and "--teacher smollm2-135m" in card


def test_an_unknown_license_is_left_out_not_guessed(tmp_path):
    folder = save_student(_student("tiny"), None, tmp_path / "student")
    front = _front((folder / CARD_FILE).read_text())
    assert "license" not in front and "base_model" not in front


def test_the_card_is_rendered_again_from_the_records(tmp_path):
    folder = save_student(_student("tiny"), None, tmp_path / "student")
    config = json.loads((folder / "config.json").read_text())
    record = {"recipe": {"name": "r", "stages": []}, "student": None, "stages": [
        {"name": "logits", "steps": 3, "tokens": 192}], "tokens_trained": 192, "stopped": None,
        "heldout_kl": {"seeded": 2.5, "distilled": 1.25, "windows": 4, "seq_len": 32, "data": "text"}}
    (folder / CARD_FILE).write_text("---\nlicense: mit\n---\nan older card\n")
    write_card(folder, training=record)
    meta = json.loads((folder / "tm_distill.json").read_text())
    card = (folder / CARD_FILE).read_text()
    assert card == render_card(config, meta, {"license": "mit"}) and meta["training"] == record
    assert "Tokens trained: **192**" in card and "2.5000 before training, **1.2500** after" in card
    assert "distillation" in _front(card)["tags"]


def test_lm_eval_metric_keys_and_limits_read_as_a_person_writes_them():
    from tm_distill.card import _limit, _metric

    assert [_metric(k) for k in ("acc,none", "acc_norm,none", "exact_match,strict-match", "word_perplexity")] == [
        "acc", "acc_norm", "exact_match (strict-match)", "word_perplexity"]
    assert [_limit(x) for x in (2.0, 0.1, 5)] == ["2", "0.1", "5"]
