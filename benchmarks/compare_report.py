"""Collect the comparison's row files into docs/results.json and draw the held-out KL curve (docs/kl_curve.png).

    python benchmarks/compare_report.py benchmarks/results/2026-11-26-h200/compare

Rows that have no file are written as not run, with the reason; nothing is estimated.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NOT_RUN: dict[str, str] = {}  # row -> why it has no file; every row of 2026-11-26 has one
LABELS = {"B": "B Mamba-in-the-Llama (seed: attention)", "C": "C matrix -> hidden -> logits (calibrated seed)",
          "D": "D as C, sampled TransPoints", "E": "E logits only (calibrated seed)",
          "G": "G as C, its logits stage on-policy (GKD, lmbda 1/8)"}


def collect(folder: Path) -> dict:
    rows = {json.loads(f.read_text())["meta"]["row"]: json.loads(f.read_text()) for f in sorted(folder.glob("row-*.json"))}
    out = {"budget_tokens": 10_000_000, "seq_len": 2048, "source": str(folder.relative_to(ROOT)), "rows": {}}
    for name in ("A", "A-cal", "B", "C", "D", "E", "G"):
        out["rows"][name] = rows.get(name) or {"status": NOT_RUN.get(name, "not run")}
    return out


def plot(results: dict, path: Path) -> None:
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for name, style in (("B", "o-"), ("C", "s-"), ("D", "d-"), ("E", "^-"), ("G", "v-")):
        curve = results["rows"][name].get("kl_curve")
        if curve:
            ax.plot([p["tokens"] / 1e6 for p in curve], [p["heldout_kl"] for p in curve], style, label=LABELS[name])
    seeded = results["rows"]["A"].get("eval", {}).get("corpus", {}).get("kl_to_teacher")
    if seeded:
        ax.axhline(seeded, color="gray", ls=":", label=f"A today's seed (KL {seeded:.1f})")
    ax.set_yscale("log")
    ax.set_xlabel("tokens seen (millions)")
    ax.set_ylabel("held-out KL to the teacher (16 x 2048 tokens)")
    ax.set_title("SmolLM2-135M students on one H200")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder", type=Path)
    args = ap.parse_args()
    results = collect(args.folder.resolve())
    (ROOT / "docs" / "results.json").write_text(json.dumps(results, indent=1))
    plot(results, ROOT / "docs" / "kl_curve.png")


if __name__ == "__main__":
    main()
