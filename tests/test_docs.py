"""The docs speak of the code and its numbers: no issue numbers or people, and the demo described as it runs."""

from __future__ import annotations

import re
from pathlib import Path

from tm_distill.recipe import load_recipe

ROOT = Path(__file__).resolve().parents[1]
DOCS = sorted((ROOT / "docs").rglob("*.md")) + [ROOT / "README.md"]
CODE = [p for folder in ("tm_distill", "tests", "benchmarks", "scripts", "recipes") for p in (ROOT / folder).rglob("*")
        if p.suffix in {".py", ".sh", ".yaml"} and p.resolve() != Path(__file__).resolve()]
# in prose: any mention of an issue, an issue number or an engineer; a link to another project's issue stays
IN_DOCS = re.compile(r"\bissues?\b(?!/)|#\d+\b|\bengineers?\b", re.I)
# in code, where "issue" also means launching work on a GPU: a numbered issue, an engineer, an issue's item
IN_CODE = re.compile(r"\bissues?\s*#?\d+|\bengineers?\b|\bitem \d+ of\b", re.I)


def _hits(paths, pattern) -> list[str]:
    return [f"{p.relative_to(ROOT)}:{i}: {line.strip()[:100]}" for p in paths
            for i, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]


def test_docs_name_no_issue_numbers_or_people():
    assert not _hits(DOCS, IN_DOCS), "\n".join(_hits(DOCS, IN_DOCS))
    assert IN_DOCS.search("as issue 14 asked") and IN_DOCS.search("by engineer E") and IN_DOCS.search("see #12")
    assert not IN_DOCS.search("github.com/goombalab/phi-mamba/issues/3")


def test_code_and_comments_name_no_issue_numbers_or_people():
    assert not _hits(CODE, IN_CODE), "\n".join(_hits(CODE, IN_CODE))
    assert IN_CODE.search("(issue 16)") and not IN_CODE.search("host issue time, issue_ms")


def test_the_demo_is_described_as_its_recipe_runs():
    """README and docs/eval.md state the demo recipe's step counts, batch, tokens and calibration."""
    demo = load_recipe(ROOT / "recipes" / "smollm2-135m" / "cpu-demo.yaml")
    steps = {s.name: s.steps for s in demo.stages}
    assert list(steps) == ["matrix", "hidden", "logits"] and demo.calibrate is not None
    (b, seq), = {(s.batch_size, demo.stage_seq_len(s)) for s in demo.stages}
    tokens = sum(s.steps * s.tokens_per_step(demo.stage_seq_len(s)) for s in demo.stages)
    eval_md = " ".join((ROOT / "docs" / "eval.md").read_text().split())
    assert (f"calibrates its seed first (`calibrate: {{seq_len: {demo.calibrate.seq_len}}}`) and then trains "
            f"{steps['matrix']} matrix + {steps['hidden']} hidden + {steps['logits']} logits steps of {b} x {seq} "
            f"tokens ({tokens:,} tokens)") in eval_md
    readme = " ".join((ROOT / "README.md").read_text().split())
    assert f"`recipes/smollm2-135m/cpu-demo.yaml` with {steps['matrix']}/{steps['hidden']}/{steps['logits']} steps" \
        in readme
