"""benchmarks/bench_remote_code.py --smoke: a tiny student, package vs its saved code without tm_distill, on CPU."""

from __future__ import annotations

import json


def test_bench_remote_code_smoke(tmp_path):
    from benchmarks import bench_remote_code as bench

    out = tmp_path / "smoke.json"
    data = bench.main(["--smoke", "--block", "liger_kernel", "--out", str(out)])
    package, remote = data["package"], data["remote"]
    assert package["class"] == "tm_distill.models.modeling.TransMambaForCausalLM" and package["tm_distill_imported"]
    assert remote["class"].startswith("transformers_modules.") and not remote["tm_distill_imported"]
    assert remote["class"].endswith(".modeling_transmamba.TransMambaForCausalLM")
    for side in (package, remote):  # no kernels on a CPU: the reference scan, no CUDA-graph run
        assert side["scan_backend"] == "torch" and not side["liger"] and set(side["runs"]) == {"eager"}
        assert len(side["runs"]["eager"]["tokens"]) == 8 and side["runs"]["eager"]["seconds"] > 0
    assert data["comparison"]["eager"]["same_tokens"]
    assert data["comparison"]["eager"]["time_ratio"] == (remote["runs"]["eager"]["seconds"]
                                                         / package["runs"]["eager"]["seconds"])
    assert json.loads(out.read_text())["comparison"] == data["comparison"]
