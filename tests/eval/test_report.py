import json
import os

import pytest

from tests.conftest import tiny_llama
from tm_distill.convert import seed_student
from tm_distill.eval.api import EvalOptions, evaluate
from tm_distill.eval.metrics import BUCKETS
from tm_distill.eval.report import write_atomic, write_report

METRIC_KEYS = {"perplexity", "kl_to_teacher", "top1_agreement"}


def test_write_atomic_replaces_and_leaves_no_temp_files(tmp_path):
    path = tmp_path / "report.json"
    write_atomic(path, "old")
    write_atomic(path, "new")
    assert path.read_text() == "new" and sorted(os.listdir(tmp_path)) == ["report.json"]
    assert path.stat().st_mode & 0o044  # readable by others like any file the user writes (umask 022)


def test_failed_write_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "report.md"
    write_atomic(path, "complete report")

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)  # what write_atomic moves the temp file with
    with pytest.raises(OSError, match="disk full"):
        write_atomic(path, "half")
    assert path.read_text() == "complete report" and sorted(os.listdir(tmp_path)) == ["report.md"]


@pytest.fixture(scope="module")
def tiny_report():
    teacher = tiny_llama(num_kv_heads=2, num_layers=3)
    students = {"early": seed_student(teacher, [4, 8, 2**31 - 1]), "late": seed_student(teacher, [10, 12, 14])}
    import torch

    heldout = torch.randint(0, 97, (3, 24), generator=torch.Generator().manual_seed(0))
    options = EvalOptions(seq_len=24, windows=2, retrieval_lengths=[], speed=True, speed_lengths=[8],
                          decode_tokens=2, transpoints=None)
    return evaluate(teacher, None, students, heldout, options, teacher_source="tiny", data_source="random",
                    progress=False)


def test_report_json_has_stable_keys_and_plots(tiny_report, tmp_path):
    out = write_report(tiny_report, tmp_path / "r")
    data = json.loads((out / "report.json").read_text())
    assert set(data["models"]) == {"teacher", "early", "late"}
    for name, m in data["models"].items():
        assert METRIC_KEYS <= set(m)
        assert set(m["by_position"]) == set(BUCKETS)
        for bucket in m["by_position"].values():
            assert METRIC_KEYS | {"tokens", "positions", "teacher_perplexity"} <= set(bucket)
    assert data["models"]["early"]["by_position"]["between"]["positions"] == [4, 8]
    assert data["models"]["late"]["layer_error"][2] is not None
    assert data["speed"]["results"]["late"][0]["length"] == 8
    assert data["plots"] == ["by_position.png", "layer_error.png"]  # no retrieval asked for
    for name in data["plots"]:
        blob = (out / name).read_bytes()
        assert blob[:8] == b"\x89PNG\r\n\x1a\n" and len(blob) < 200_000
    md = (out / "report.md").read_text()
    assert "| `early` | before | [0, 4) |" in md and "## Speed and memory" in md and "![by_position.png]" in md
    assert sorted(p.name for p in out.iterdir()) == sorted(["report.json", "report.md", *data["plots"]])


def test_cpu_speed_table_says_what_its_timings_depend_on(tiny_report):
    from tm_distill.eval.report import render_markdown

    speed = tiny_report["speed"]
    assert speed["device"] == "cpu" and speed["load_average"] >= 0 and speed["cpu_count"] >= 1
    md = render_markdown(tiny_report)
    assert f"load average {speed['load_average']:.1f} on {speed['cpu_count']} cores while timing" in md
    assert "compare rows of this table with each other, not with other runs" in md
    gpu = {**tiny_report, "speed": {**speed, "device": "NVIDIA H100", "load_average": None}}
    assert "load average" not in render_markdown(gpu)


@pytest.mark.parametrize("spec, tps, shown", [
    ("cycle=0,16,32,64,128,attn", [0, 16, 32, 64, 128, 2**31 - 1] * 5, "cycle=0,16,32,64,128,attn"),
    (None, [0, 16, 32, 64, 128, 2**31 - 1] * 5, "0,16,32,64,128,attn,0,16,32,64,128,attn,... (30 layers)"),
    ("auto:kv_budget=25%", [0, 128, 2**31 - 1], "0,128,attn"),
])
def test_transpoints_column_is_never_cut_inside_an_entry(spec, tps, shown):
    from tm_distill.eval.report import _schedule

    assert _schedule({"transpoints": tps, "transpoint_spec": spec}) == shown


def test_transpoint_override_is_applied_recorded_and_undone(tmp_path):
    import torch

    teacher = tiny_llama(num_kv_heads=2, num_layers=3)
    student = seed_student(teacher, [4, 8, 12])
    heldout = torch.randint(0, 97, (1, 20), generator=torch.Generator().manual_seed(1))
    options = EvalOptions(seq_len=20, windows=1, retrieval_lengths=[], speed=False, transpoints="all=6")
    rep = evaluate(teacher, None, {"s": student}, heldout, options, progress=False)
    m = rep["models"]["s"]
    assert m["transpoints"] == [6, 6, 6] and m["trained_transpoints"] == [4, 8, 12]
    assert m["by_position"]["before"]["positions"] == [0, 6] and rep["transpoints_override"] == "all=6"
    assert student.config.transpoints == [4, 8, 12]


def test_lengths_beyond_the_teacher_are_clear_errors():
    import torch

    from tm_distill.eval.api import EvalInputError

    teacher = tiny_llama(num_kv_heads=2, num_layers=2)  # max_position_embeddings 512
    student = seed_student(teacher, [4, 8])
    heldout = torch.randint(0, 97, (1, 16))
    for opts, what in [(dict(retrieval_lengths=[600]), "passkey"), (dict(seq_len=1000), "seq-len"),
                       (dict(speed_lengths=[510]), "speed")]:
        options = EvalOptions(**{"retrieval_lengths": [], "speed": True, "speed_lengths": [8], **opts})
        with pytest.raises(EvalInputError, match=f"(?s){what}.*max_position_embeddings=512"):
            evaluate(teacher, None, {"s": student}, heldout, options, progress=False)


def test_a_reused_report_folder_keeps_no_stale_plot(tiny_report, tmp_path):
    import copy

    out = write_report(copy.deepcopy(tiny_report), tmp_path / "r")
    assert (out / "layer_error.png").exists()
    (out / "retrieval.png").write_bytes(b"a plot an older report wrote")  # this report has no retrieval
    (out / "notes.txt").write_text("the user's own file")
    no_layers = copy.deepcopy(tiny_report)
    for m in no_layers["models"].values():
        m["layer_error"] = None
    again = write_report(no_layers, out)
    assert json.loads((again / "report.json").read_text())["plots"] == ["by_position.png"]
    assert sorted(p.name for p in again.iterdir()) == ["by_position.png", "notes.txt", "report.json", "report.md"]
    write_report(copy.deepcopy(tiny_report), out, plots=False)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt", "report.json", "report.md"]


def test_speed_table_shows_each_model_against_the_teacher_and_the_bound(tiny_report):
    from tm_distill.eval.report import render_markdown

    md = render_markdown(tiny_report)
    assert "| prefill × teacher |" in md and "| decode × teacher |" in md and "| × bound |" in md
    speed_rows = md[md.index("## Speed and memory"):].splitlines()
    teacher_row = next(line for line in speed_rows if line.startswith("| `teacher` | 8 |"))
    assert teacher_row.split(" | ")[3] == "1.00" and teacher_row.split(" | ")[5] == "1.00"
    assert "measured on CUDA only" in md
    speed = tiny_report["speed"]
    late = [{**speed["results"]["late"][0], "x_bound": 2.5}]
    gpu = {**tiny_report, "speed": {**speed, "device": "NVIDIA H100", "load_average": None,
                                    "copy_bytes_per_s": 3.0e12, "results": {**speed["results"], "late": late}}}
    md = render_markdown(gpu)
    assert "copy bandwidth measured here (3000 GB/s read + written)" in md and "measured on CUDA only" not in md
    speed_rows = md[md.index("## Speed and memory"):].splitlines()
    assert next(line for line in speed_rows if line.startswith("| `late` | 8 |")).split(" | ")[6] == "2.50"
