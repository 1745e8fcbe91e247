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
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import tm_distill  # noqa: F401
from tm_distill.convert import load_teacher, parse_transpoints, seed_student
from tm_distill.checkpoint import save_student
from tm_distill.eval.api import EvalOptions, run_eval
from tm_distill.models.memory import layer_memory
from tm_distill.recipe import load_recipe
from tm_distill.training.run import run_recipe

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "recipes" / "smollm2-135m" / "compare"
TRAINED = {"B-mil": "B-mil.yaml", "C-full": "C-full.yaml", "D-sampled": "D-sampled.yaml",
           "E-logits-only": "E-logits-only.yaml", "G-onpolicy": "G-onpolicy.yaml"}
SEEDED_SPEC = "cycle=0,32,64,128,256,512,1024,2048"  # A: C's schedule, untrained
ROBUSTNESS = ("attn", "all=512")

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


def _row(model: dict) -> dict:
    pos = model["by_position"]
    return {"perplexity": model["perplexity"], "kl_to_teacher": model["kl_to_teacher"],
            "top1_agreement": model["top1_agreement"],
            **{f"top1_{k}": pos[k]["top1_agreement"] for k in ("before", "between", "after")}}


def _memory(path: Path, n: int) -> float:
    from transformers import AutoConfig  # noqa: PLC0415

    rows = layer_memory(AutoConfig.from_pretrained(path), n)
    return sum(r.student_bytes for r in rows) / 2**20


def compare(scale_name: str, out: Path, teacher: str = "smollm2-135m") -> dict:
    scale = SCALES[scale_name]
    out.mkdir(parents=True, exist_ok=True)
    t = load_teacher(teacher, device=scale["device"])
    n_layers = t.model.config.num_hidden_layers
    paths, wall = {}, {}
    start = time.time()
    seeded = seed_student(t.model, parse_transpoints(SEEDED_SPEC, n_layers), SEEDED_SPEC, teacher)
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
        row = _row(report["models"][key])
        passkey = ((report.get("retrieval") or {}).get("tasks") or {}).get("passkey", {}).get(key)
        row["passkey"] = passkey["accuracy"] if passkey else None
        row["memory_mib_2k"], row["memory_mib_32k"] = _memory(path, 2048), _memory(path, 32768)
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
    (out / "results.json").write_text(json.dumps(results, indent=2))
    (out / "results.md").write_text(render(results))
    return results


def render(results: dict) -> str:
    tp = results["teacher_perplexity"]
    lines = [f"Teacher perplexity: {tp:.2f} ({results['scale']} scale)", "",
             "| student | ppl | ppl / teacher | KL | top-1 | top-1 before / between / after | passkey | "
             "memory 2k (MiB) | memory 32k (MiB) | wall (s) |", "|" + " --- |" * 10]
    fmt = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
    for label, r in results["models"].items():
        lines.append(f"| {label} | {r['perplexity']:.2f} | {r['perplexity'] / tp:.3f} | {r['kl_to_teacher']:.3f} | "
                     f"{r['top1_agreement']:.3f} | {fmt(r['top1_before'])} / {fmt(r['top1_between'])} / "
                     f"{fmt(r['top1_after'])} | {fmt(r['passkey'])} | {r['memory_mib_2k']:.1f} | "
                     f"{r['memory_mib_32k']:.1f} | {r['wall_s']:.0f} |")
    lines += ["", "Schedule robustness (perplexity under another schedule at inference):", "",
              "| student | " + " | ".join(results["robustness"]) + " |", "|" + " --- |" * (1 + len(results["robustness"]))]
    for label in ("C-full", "D-sampled"):
        lines.append(f"| {label} | " + " | ".join(f"{v[label]:.2f}" for v in results["robustness"].values()) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", choices=sorted(SCALES), default="smoke")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--teacher", default="smollm2-135m")
    args = parser.parse_args()
    results = compare(args.scale, args.out, args.teacher)
    print(render(results))


if __name__ == "__main__":
    main()
