"""benchmarks/bench_speed.py --smoke: teacher and every schedule, prefill and decode, on a tiny CPU model."""

from __future__ import annotations

import json


def test_bench_speed_smoke(tmp_path):
    from benchmarks import bench_speed as bench

    out = tmp_path / "smoke.json"
    data = bench.main(["--smoke", "--out", str(out)])
    rows = data["results"]
    assert all(r["status"] == "ok" for r in rows)
    models = {"teacher", "attn25", "cycle", "all2048"}
    for kind, contexts, batches in (("prefill", {64, 160}, {1}), ("decode", {96, 160}, {1, 2})):
        got = {(r["model"] if r["model"] == "teacher" else r["schedule"], r["context"], r["batch"])
               for r in rows if r["kind"] == kind}
        assert got == {(m, t, b) for m in models for t in contexts for b in batches}, kind
    decode = [r for r in rows if r["kind"] == "decode"]
    assert all(r["tokens_per_s"] > 0 and r["mode"] == "eager" for r in decode)
    assert all(r["cache_bytes"] > 0 for r in decode)
    assert json.loads(out.read_text())["results"] == rows
    text = bench.markdown(data)
    assert "### prefill, tiny shape" in text and "### decode, tiny shape" in text and "| 160 | 2 |" in text


def test_profile_speed_smoke(tmp_path):
    """benchmarks/profile_speed.py --smoke: a profiled row per model, prefill and eager decode, and its report."""
    from benchmarks import profile_speed as prof

    out = tmp_path / "profile.json"
    rows = prof.main(["--smoke", "--out", str(out)])
    names = {"teacher", "attn25", "cycle", "all2048"}
    assert {(r["kind"], r["who"]) for r in rows} == {(k, n) for k in ("prefill", "decode") for n in names}
    assert all(r["wall_ms"] > 0 and r["top_host_ops"] for r in rows)
    assert json.loads(out.read_text())["rows"] == rows
    assert "prefill tiny cycle T=64" in out.with_suffix(".txt").read_text()
