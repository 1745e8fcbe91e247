"""benchmarks/common.py: the timing, run description, result file, table and argument pieces the scripts share."""

from __future__ import annotations

import json
import time

import pytest
import torch

from benchmarks import common


def test_timed_is_the_median_after_warmup_on_the_cpu():
    calls = []

    def fn():
        calls.append(len(calls))
        time.sleep(0.02 if len(calls) == 4 else 0.001)  # one slow repeat: the median ignores it

    ms = common.timed(fn, warmup=2, reps=5, device=torch.device("cpu"))
    assert len(calls) == 7 and 0.5 < ms < 15


def test_wall_seconds_and_time_ms_measure_the_call():
    assert 0.009 < common.wall_seconds(lambda: time.sleep(0.01), "cpu") < 0.5
    assert 9 < common.time_ms(lambda: time.sleep(0.01), torch.device("cpu")) < 500


def test_command_line_reruns_from_the_repository_root(monkeypatch):
    assert common.command_line("/x/benchmarks/bench_speed.py", ["--smoke", "--out", "a b.json"]) == \
        "python benchmarks/bench_speed.py --smoke --out 'a b.json'"
    assert common.command_line("report.py", []) == "python benchmarks/report.py"
    monkeypatch.setattr("sys.argv", ["benchmarks/report.py", "folder"])
    assert common.command_line("report.py") == "python benchmarks/report.py folder"


def test_run_meta_describes_the_device_and_the_date():
    meta = common.run_meta("bench_kernels.py", ["--out", "k.json"], "cpu")
    assert meta["command"] == "python benchmarks/bench_kernels.py --out k.json" and meta["device"] == "cpu"
    assert meta["torch"] == torch.__version__ and meta["date"].endswith(" UTC") and set(meta) >= {"host"}
    assert common.utc_date() == meta["date"][:10] and len(common.git_commit()) >= 7


def test_a_result_file_is_rewritten_after_every_row_and_part(tmp_path, capsys):
    path = tmp_path / "deep" / "r.json"
    rec = common.ResultFile(path, {"device": "cpu"})
    rec.add(kind="prefill", ms=1.5)
    assert json.loads(path.read_text()) == {"meta": {"device": "cpu"}, "results": [{"kind": "prefill", "ms": 1.5}]}
    assert json.loads(capsys.readouterr().out) == {"kind": "prefill", "ms": 1.5}
    rec.add(kind="decode", path=tmp_path)  # a value JSON lacks is written as text
    assert json.loads(path.read_text())["results"][1]["path"] == str(tmp_path)
    assert json.loads(capsys.readouterr().out)["path"] == str(tmp_path)
    parts = common.ResultFile(tmp_path / "p.json", {"row": "A"}, rows=None, echo=False)
    parts.set(eval={"ppl": 3.0})
    parts.set(wall_s=2.0)
    assert json.loads((tmp_path / "p.json").read_text()) == {"meta": {"row": "A"}, "eval": {"ppl": 3.0}, "wall_s": 2.0}
    assert capsys.readouterr().out == ""


def test_md_table_renders_header_rule_and_rows():
    assert common.md_table(["a", "b"], [[1, "x"], ["–", 2.5]]) == [
        "| a | b |", "| --- | --- |", "| 1 | x |", "| – | 2.5 |"]
    assert common.md_row(["error", "", ""]) == "| error | | |"


def test_arguments():
    assert common.ints("512,2048,") == [512, 2048]
    ap = common.parser("Line one.\n\n    python benchmarks/x.py --out F")
    assert "    python benchmarks/x.py --out F" in ap.format_help()  # the docstring's commands stay as written
    assert common.smoke_or_cuda("x.py", smoke=True) == (torch.device("cpu"), torch.float32)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for machines without CUDA")
def test_a_gpu_benchmark_without_cuda_says_so_in_one_line():
    with pytest.raises(SystemExit, match="bench_speed.py needs a CUDA device"):
        common.smoke_or_cuda("bench_speed.py", smoke=False)


def test_random_llama_is_seeded_and_in_the_asked_dtype():
    from transformers import LlamaConfig

    cfg = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, head_dim=8)
    a, b = (common.random_llama(cfg, "cpu", torch.bfloat16) for _ in range(2))
    assert a.dtype == torch.bfloat16 and not a.training and torch.get_default_dtype() == torch.float32
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))
