"""Collect the comparison's row files into docs/results.json and draw the held-out KL curve (docs/kl_curve.png).

    python benchmarks/compare_report.py benchmarks/results/2026-11-26-h200/compare benchmarks/results/2026-12-07-h100/compare

Each folder holds row-<name>.json files from benchmarks/compare_row.py; a row found in a later folder replaces
the same row of an earlier one.

Rows that have no file are written as not run, with the reason; nothing is estimated.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.common import write_json  # noqa: E402

NOT_RUN: dict[str, str] = {}  # row -> why it has no file; every row of 2026-11-26 has one
LABELS = {"B": "B Mamba-in-the-Llama (seed: attention)", "C": "C matrix -> hidden -> logits (calibrated seed)",
          "D": "D as C, sampled TransPoints", "E": "E logits only (calibrated seed)",
          "G": "G as C, its logits stage on-policy (GKD, lmbda 1/8)",
          "H": "H as E, general data (6M-token recipe, cut at 4.1M)",
          "I": "I importance-planned, general data (cut at 4.0M)"}
ORDER = ("A", "A-cal", "B", "C", "D", "E", "G", "H", "I")


def collect(folders: list[Path]) -> dict:
    rows = {}
    for folder in folders:
        for f in sorted(folder.glob("row-*.json")):
            row = json.loads(f.read_text())
            rows[row["meta"]["row"]] = row
    out = {"budget_tokens": 10_000_000, "budget_tokens_general": 6_000_000, "seq_len": 2048,
           "sources": [str(f.relative_to(ROOT)) for f in folders], "rows": {}}
    for name in ORDER:
        out["rows"][name] = rows.get(name) or {"status": NOT_RUN.get(name, "not run")}
    return out


def plot(results: dict, path: Path) -> None:
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for name, style in (("B", "o-"), ("C", "s-"), ("D", "d-"), ("E", "^-"), ("G", "v-"), ("H", "x--"), ("I", "*--")):
        curve = results["rows"][name].get("kl_curve")
        if curve:
            ax.plot([p["tokens"] / 1e6 for p in curve], [p["heldout_kl"] for p in curve], style, label=LABELS[name])
    seeded = results["rows"]["A"].get("eval", {}).get("corpus", {}).get("kl_to_teacher")
    if seeded:
        ax.axhline(seeded, color="gray", ls=":", label=f"A today's seed (KL {seeded:.1f})")
    ax.set_yscale("log")
    ax.set_xlabel("tokens seen (millions)")
    ax.set_ylabel("held-out KL to the teacher (16 x 2048 tokens)")
    ax.set_title("SmolLM2-135M students (A-G: H200; H, I: H100)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def chat_answers(results: dict, rows: tuple[str, ...] = ("H", "I")) -> str:
    """The greedy chat answers of the teacher and each general row to the same prompts, side by side (markdown)."""
    measured = [r for r in rows if (results["rows"][r].get("general") or {}).get("chat")]
    if not measured:
        return ""
    cell = lambda text: " ".join(text.split()).replace("|", "\\|")  # noqa: E731  one table cell per answer
    lines = ["# Greedy chat answers: teacher and general-purpose students", "",
             f"Made by `python benchmarks/compare_report.py {' '.join(results['sources'])}` from the rows' JSON "
             "(`general.chat`); answers are whole "
             "and greedy, at most 64 new tokens (`compare_row.chat_answers`).", "",
             "| prompt | teacher | " + " | ".join(f"row {r}" for r in measured) + " |",
             "| --- | --- | " + " | ".join("---" for _ in measured) + " |"]
    first = results["rows"][measured[0]]["general"]["chat"]
    for i, item in enumerate(first):
        answers = [cell(results["rows"][r]["general"]["chat"][i]["student"]) for r in measured]
        lines.append(f"| {cell(item['prompt'])} | {cell(item['teacher'])} | " + " | ".join(answers) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folders", type=Path, nargs="+")
    args = ap.parse_args()
    results = collect([f.resolve() for f in args.folders])
    write_json(ROOT / "docs" / "results.json", results)
    plot(results, ROOT / "docs" / "kl_curve.png")
    chat = chat_answers(results)
    if chat:
        (ROOT / "docs" / "chat_answers.md").write_text(chat)


if __name__ == "__main__":
    main()
