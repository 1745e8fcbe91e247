"""The student comparison (docs/results.md): students A-E distilled from SmolLM2-135M at one token budget,
evaluated side by side.

    A seeded only; B Mamba-in-the-Llama style (attn every 4th layer, rest P=0, logits only);
    C tm-distill full (paper's cycle scaled to 2048, matrix -> hidden -> logits); D = C with TransPoints sampled
    per batch; E = C without the matrix and hidden stages; G = C with the logits stage's last part on-policy (GKD).
    Recipes: recipes/smollm2-135m/compare/*.yaml.

Full run (one GPU; 75M tokens per student):
    python benchmarks/compare_students.py --scale full --out runs/compare
CPU smoke run of the same pipeline (a few steps, short windows; what the test suite runs):
    python benchmarks/compare_students.py --scale smoke --out /tmp/compare-smoke

Writes OUT/results.json and OUT/results.md: held-out perplexity and KL, top-1 agreement by position bucket,
passkey accuracy, KV + state memory at 2k and 32k, and C/D under two other schedules (all-attention, all=512).
The rows' recipes, seed, metrics and memory are compare_row.py's (which runs one row per device call with the
fuller evaluation); this script runs every row in one process.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import md_table, parser, write_json  # noqa: E402
from benchmarks.compare_row import (RECIPES, ROBUSTNESS, ROWS, cache_mib, metrics_of,  # noqa: E402,F401
                                    seed_cycle)
from tm_distill.checkpoint import save_student  # noqa: E402
from tm_distill.convert import load_teacher  # noqa: E402
from tm_distill.eval.api import EvalOptions, run_eval  # noqa: E402
from tm_distill.recipe import load_recipe  # noqa: E402
from tm_distill.training.run import run_recipe  # noqa: E402

TRAINED = {ROWS[r].removesuffix(".yaml"): ROWS[r] for r in ("B", "C", "D", "E", "G")}  # compare_row's files

SCALES = {
    "full": dict(seq_len=2048, windows=16, passkey=[1024, 2048, 4096, 8192], trials=2, device="cuda"),
    "smoke": dict(seq_len=64, windows=2, passkey=[], trials=1, device="cpu", steps=2, max_tokens=30000,
                  teacher_samples=2, teacher_sample_tokens=16),
}


def _recipe(name: str, out: Path, scale: dict, teacher: str):
    recipe = load_recipe(RECIPES / TRAINED[name], [f"output_dir={out / name}", f"device={scale['device']}",
                                                   f"teacher={teacher}"])
    if "steps" in scale:  # smoke: the same stages, a few steps on short windows, fp32
        recipe.data = dataclasses.replace(recipe.data, seq_len=scale["seq_len"], max_tokens=scale["max_tokens"],
                                          heldout_windows=scale["windows"], teacher_samples=scale["teacher_samples"],
                                          teacher_sample_tokens=scale["teacher_sample_tokens"])
        recipe.stages = [dataclasses.replace(s, steps=scale["steps"], tokens=None, batch_size=1, grad_accum=1,
                                             precision="fp32", seq_len=None, checkpoint_every=0,
                                             loss=dataclasses.replace(s.loss, chunk_size=64),
                                             on_policy=_smoke_on_policy(s, scale["seq_len"]))
                         for s in recipe.stages]
        if recipe.calibrate is not None:  # two short windows instead of 4096 tokens' worth
            recipe.calibrate = dataclasses.replace(recipe.calibrate, windows=2)
    return recipe


def _smoke_on_policy(stage, seq_len: int):
    """The onpolicy stage's generation shrunk to the smoke windows (half prompt, a quarter new tokens)."""
    if stage.name != "onpolicy":
        return stage.on_policy
    return dataclasses.replace(stage.on_policy, prompt_tokens=seq_len // 2, new_tokens=seq_len // 4, lmbda=1.0)


def compare(scale_name: str, out: Path, teacher: str = "smollm2-135m") -> dict:
    scale = SCALES[scale_name]
    out.mkdir(parents=True, exist_ok=True)
    t = load_teacher(teacher, device=scale["device"])
    paths, wall = {}, {}
    start = time.time()
    seeded = seed_cycle(t, teacher)  # A: C's schedule, untrained
    paths["A-seeded"] = save_student(seeded, t.tokenizer, out / "A-seeded", {"stage": "seeded"}, force=True)
    wall["A-seeded"] = time.time() - start
    for name in TRAINED:
        start = time.time()
        summary = run_recipe(_recipe(name, out, scale, teacher), teacher=t)
        paths[name], wall[name] = Path(summary["final"]), time.time() - start
    options = EvalOptions(seq_len=scale["seq_len"], windows=scale["windows"], retrieval_lengths=scale["passkey"],
                          trials=scale["trials"], speed=False, layer_error=False)
    report = run_eval(list(paths.values()), teacher, "shakespeare", out / "eval", options,
                      device=scale["device"], progress=False)
    results = {"scale": scale_name, "teacher": teacher, "models": {}, "robustness": {}}
    names = {Path(m.get("path", "")).resolve(): k for k, m in report["models"].items()}
    for label, path in paths.items():
        key = names[Path(path).resolve()]
        row = metrics_of(report, key)
        passkey = ((report.get("retrieval") or {}).get("tasks") or {}).get("passkey", {}).get(key)
        row["passkey"] = passkey["accuracy"] if passkey else None
        memory = cache_mib(path, lengths=(2048, 32768))
        row["memory_mib_2k"], row["memory_mib_32k"] = memory["2k"], memory["32k"]
        row["wall_s"] = wall[label]
        results["models"][label] = row
    results["teacher_perplexity"] = report["models"]["teacher"]["perplexity"]
    for spec in ROBUSTNESS:
        options = dataclasses.replace(options, transpoints=spec, retrieval_lengths=[])
        rep = run_eval([paths["C-full"], paths["D-sampled"]], teacher, "shakespeare",
                       out / f"eval-{spec.replace('=', '')}", options, device=scale["device"], progress=False)
        results["robustness"][spec] = {label: rep["models"][names_key]["perplexity"]
                                       for label, names_key in zip(("C-full", "D-sampled"),
                                                                   [k for k in rep["models"] if k != "teacher"])}
    write_json(out / "results.json", results, indent=2)
    (out / "results.md").write_text(render(results))
    return results


def render(results: dict) -> str:
    tp = results["teacher_perplexity"]
    fmt = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
    lines = [f"Teacher perplexity: {tp:.2f} ({results['scale']} scale)", "", *md_table(
        ["student", "ppl", "ppl / teacher", "KL", "top-1", "top-1 before / between / after", "passkey",
         "memory 2k (MiB)", "memory 32k (MiB)", "wall (s)"],
        ([label, f"{r['perplexity']:.2f}", f"{r['perplexity'] / tp:.3f}", f"{r['kl_to_teacher']:.3f}",
          f"{r['top1_agreement']:.3f}", f"{fmt(r['top1_before'])} / {fmt(r['top1_between'])} / {fmt(r['top1_after'])}",
          fmt(r["passkey"]), f"{r['memory_mib_2k']:.1f}", f"{r['memory_mib_32k']:.1f}", f"{r['wall_s']:.0f}"]
         for label, r in results["models"].items()))]
    lines += ["", "Schedule robustness (perplexity under another schedule at inference):", "", *md_table(
        ["student", *results["robustness"]],
        ([label, *(f"{v[label]:.2f}" for v in results["robustness"].values())] for label in ("C-full", "D-sampled")))]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = parser(__doc__)
    ap.add_argument("--scale", choices=sorted(SCALES), default="smoke")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--teacher", default="smollm2-135m")
    args = ap.parse_args(argv)
    results = compare(args.scale, args.out, args.teacher)
    print(render(results))


if __name__ == "__main__":
    main()
