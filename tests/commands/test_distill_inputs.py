"""`tm-distill distill` / `validate` on the inputs a new user gives: one text file, held-out text from
elsewhere, missing/empty/unsupported data, bad TransPoint specs and SSM options, a file as output_dir, a
binary recipe. Each is a clean error naming the input (or it works), and nothing is written."""

from __future__ import annotations

import math

import pytest

from tests.commands.distill_helpers import assert_clean_error, run, summary, write_recipe


# ------------------------------------------------------------------------------------------ 1: one text file
def test_a_single_text_file_distills(root, tmp_path):
    recipe = write_recipe(root, tmp_path, data={"source": str(root / "my.txt"), "seq_len": 32, "heldout_windows": 2})
    checked = run("validate", recipe)
    assert checked.exit_code == 0, checked.output
    assert "data.source: " in checked.output and "document(s)" in checked.output  # validate opened the file
    result = run("distill", recipe)
    assert result.exit_code == 0, result.output
    assert math.isfinite(summary(tmp_path)["heldout_kl_distilled"])


def test_heldout_fraction_zero_takes_heldout_text_from_elsewhere(root, tmp_path):
    data = {"source": str(root / "my.txt"), "seq_len": 32, "heldout_fraction": 0, "heldout_source": str(root / "text"),
            "heldout_windows": 2}
    result = run("distill", write_recipe(root, tmp_path, {"name": "logits", "steps": 1}, data=data))
    assert result.exit_code == 0, result.output
    assert summary(tmp_path)["heldout_windows"] == 2
    alone = run("validate", write_recipe(root, tmp_path, data={"source": str(root / "my.txt"), "heldout_fraction": 0}))
    assert_clean_error(alone, "data.heldout_fraction: 0 holds nothing out", "heldout_source")


def _parquets(folder, *columns):
    """folder/a.parquet, folder/b.parquet, ... with these columns (different schemas); returns the folder."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir()
    for name, table in zip("abc", columns):
        pq.write_table(pa.table(table), folder / f"{name}.parquet")
    return folder


@pytest.mark.parametrize("make, fragments", [
    (lambda d: d / "missing.txt", ["data.source", "missing.txt", "does not exist"]),
    (lambda d: (d / "empty.txt").write_text("  \n") and d / "empty.txt", ["data.source", "gave no text"]),
    (lambda d: (d / "doc.pdf").write_bytes(b"%PDF-1.4") and d / "doc.pdf", ["unsupported file type '.pdf'"]),
    (lambda d: (d / "wide.txt").write_bytes("UTF-16 text\n".encode("utf-16") * 50) and d / "wide.txt",
     ["wide.txt is not UTF-8 text: it is UTF-16 text"]),
    (lambda d: _parquets(d / "pq", {"text": ["some words"] * 40}, {"text": ["more"] * 2, "score": [0.5, 0.1]},
                         {"text": [1, 2]}), ["pq/c.parquet: field 'text' holds int, not text"]),  # mixed schemas
])
def test_bad_data_files_are_clear_errors_in_validate_and_distill(root, tmp_path, make, fragments):
    source = make(tmp_path)
    recipe = write_recipe(root, tmp_path, data={"source": str(source), "seq_len": 32})
    for command in ("validate", "distill"):
        assert_clean_error(run(command, recipe), *fragments)
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------- 5, 10: bad inputs
@pytest.mark.parametrize("override, fragments", [
    ("transpoints=auto:kv_budget=150%", ["transpoints:", "kv_budget=150%", "outside (0, 100%]"]),
    ("transpoints=auto:kv_budget=0.001%", ["transpoints:", "0.001%", "smallest reachable budget"]),
    ("ssm.use_zgate=true", ["ssm.use_zgate: unknown SSM option (did you mean 'use_z_gate'?)"]),
    ("ssm.conv_kernel=2.5", ["ssm.conv_kernel: expected an integer, got 2.5"]),
    ("ssm.bc_feature_map=tanh", ["ssm.bc_feature_map: 'tanh' is not one of identity, silu, elu1, relu"]),
])
def test_validate_and_distill_reject_bad_transpoints_and_ssm_options(root, tmp_path, override, fragments):
    recipe = write_recipe(root, tmp_path)
    for command in ("validate", "distill"):
        assert_clean_error(run(command, recipe, override), *fragments)
    assert not (tmp_path / "out").exists()


def test_output_dir_that_is_a_file(root, tmp_path):
    (tmp_path / "taken").write_text("not a folder")
    recipe = write_recipe(root, tmp_path, output_dir=str(tmp_path / "taken"))
    for command in ("validate", "distill"):
        assert_clean_error(run(command, recipe), "output_dir:", "is a file, not a folder")
    assert (tmp_path / "taken").read_text() == "not a folder"


def test_binary_recipe_file(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_bytes(bytes(range(256)) * 4)
    for command in ("validate", "distill"):
        assert_clean_error(run(command, path), str(path), "not a text file")


def test_too_little_text_for_one_batch(root, tmp_path):
    recipe = write_recipe(root, tmp_path, {"name": "logits", "steps": 1, "batch_size": 500})
    assert_clean_error(run("distill", recipe), "stages[0].batch_size:", "fewer than one step's 500")
    assert not (tmp_path / "out").exists()
