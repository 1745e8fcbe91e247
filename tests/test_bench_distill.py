"""benchmarks/bench_distill.py --smoke: every stage and the baseline run end to end on a tiny CPU model."""

from __future__ import annotations

import json


def test_bench_distill_smoke(tmp_path):
    from benchmarks import bench_distill as bench

    out = tmp_path / "smoke.json"
    data = bench.main(["--smoke", "--profile", "--out", str(out)])
    rows = {r["stage"]: r for r in data["results"]}
    assert set(rows) == set(bench.STAGES)
    for row in rows.values():
        assert row["tokens_per_s"] > 0 and row["first_step_s"] > 0 and row["flops_per_token_total"] > 0
        assert row["top_ops"] and all(op["calls_per_step"] >= 1 for op in row["top_ops"])
    assert rows["logits"]["flops_per_token"]["student_backward"] == 2 * rows["logits"]["flops_per_token"][
        "student_forward"]
    assert json.loads(out.read_text())["results"] == data["results"]
    text = bench.markdown(data)
    assert "| logits |" in text and "Command: `python benchmarks/bench_distill.py --smoke" in text
