"""One row of the SmolLM2-135M student comparison per device call: distill (or seed), evaluate, write its JSON.

    python benchmarks/compare_row.py --row C --teacher /tmp/parts/SmolLM2-135M-Instruct.Q4_1.gguf --out $OUT

Rows (recipes in recipes/smollm2-135m/compare/, one token budget for every trained row):
    A   seeded, the cycle schedule scaled to 2048, no training (today's seed)
    A'  the same, calibrated seeding (convert.calibrate)  [--row A-cal]
    B   Mamba-in-the-Llama: attention in every 4th layer, the rest SSM from token 0; logits only
    C   tm-distill: the cycle schedule; (calibrated seed) matrix -> hidden -> logits
    D   C with TransPoints sampled per batch
    E   C with logits only
    G   C with the last 2M tokens of its logits budget on-policy (GKD: the student's own samples, teacher-scored)
    H   E's schedule with the general data mixture (teacher-written chat and continuations, WordNet, Shakespeare,
        recall sequences), a third of the tokens at 4096
    I   H's data and stages with the schedule planned by importance (auto:...,method=importance) at 20% of the
        teacher's KV at 4096

Each row is evaluated in bf16 on two held-out sets: the corpus's held-out documents (16 windows of 2048
tokens, the recipes' document split) and teacher samples no student trained on (sampled here with another
seed, packed into 2048-token windows); passkey retrieval at 1k, 2k and 4k; KV + state memory at 2k and 32k;
the held-out KL curve against tokens seen (from metrics.jsonl); C and D also under all-attention and all=512.
H and I add (``general_eval``): teacher samples from the held-out seed topics (prompts no run trained on), the
held-out domain (the Python documentation), passkey and phonebook at 1k/2k/4k/8k, KV + state at 4k and 32k, and
the greedy chat answers of teacher and student to CHAT_PROMPTS side by side.
The row is written to OUT/row-<name>.json after every part, so a call cut short keeps what it measured.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import tm_distill  # noqa: E402,F401
from benchmarks.common import (ResultFile, command_line, device_name, git_commit, parser,  # noqa: E402
                               utc_date)
from tm_distill.checkpoint import read_metadata, save_student  # noqa: E402
from tm_distill.convert import load_teacher, parse_transpoints, seed_student  # noqa: E402
from tm_distill.eval.api import EvalOptions, run_eval  # noqa: E402
from tm_distill.models.memory import layer_memory  # noqa: E402
from tm_distill.recipe import load_recipe  # noqa: E402
from tm_distill.training.metrics import read_metrics  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "recipes" / "smollm2-135m" / "compare"
ROWS = {"A": None, "A-cal": None, "B": "B-mil.yaml", "C": "C-full.yaml", "D": "D-sampled.yaml",
        "E": "E-logits-only.yaml", "G": "G-onpolicy.yaml", "H": "H-general.yaml", "I": "I-planned.yaml"}
GENERAL = ("H", "I")  # rows evaluated with general_eval too
HELDOUT_DOMAIN = "python-docs"  # no recipe trains on it
CHAT_PROMPTS = ("What is the capital of France?", "Give me three tips for staying focused while studying.",
                "Write a haiku about the sea.", "Explain why the sky is blue in two sentences.",
                "What is 17 + 25?", "Name three animals that live in the Arctic.",
                "How do I boil an egg?", "Translate 'thank you' into Spanish and German.",
                "Summarize the story of Cinderella in one sentence.", "What should I pack for a day at the beach?")
SEEDED_SPEC = "cycle=0,32,64,128,256,512,1024,2048"
ROBUSTNESS = ("attn", "all=512")
HELDOUT_SAMPLES, HELDOUT_SAMPLE_SEED = 160, 12345  # teacher samples for the second held-out set


def seed_cycle(t, teacher_path: str):
    """Today's seed (row A): the cycle schedule scaled to 2048, seeded from the loaded teacher ``t``."""
    return seed_student(t.model, parse_transpoints(SEEDED_SPEC, t.model.config.num_hidden_layers), SEEDED_SPEC,
                        teacher_path)


def seeded_student(row: str, teacher_path: str, out: Path) -> tuple[Path, dict]:
    """A and A': the seeded (and, for A', calibrated) cycle student saved at ``out``."""
    t = load_teacher(teacher_path, device="cuda")
    student = seed_cycle(t, teacher_path)
    info: dict = {}
    if row == "A-cal":
        from tm_distill.convert.calibrate import calibrate_student, calibration_windows  # noqa: PLC0415

        windows, held = calibration_windows("shakespeare", t.tokenizer, 2048, heldout_fraction=0.05, seed=0)
        record = calibrate_student(student, t.model, windows, heldout=held, data="shakespeare").to_dict()
        info["calibration"] = {k: record[k] for k in record if k != "layers"}
    return save_student(student, t.tokenizer, out, {"stage": "seeded"}, force=True), info


def trained_student(row: str, teacher_path: str, out: Path, max_time: str | None) -> tuple[Path, dict]:
    from tm_distill.training import TrainingStopped, run_recipe  # noqa: PLC0415

    overrides = [f"teacher={teacher_path}", f"output_dir={out}"] + ([f"max_time={max_time}"] if max_time else [])
    recipe = load_recipe(RECIPES / ROWS[row], overrides)
    try:
        summary = run_recipe(recipe)
    except TrainingStopped:  # the last stage was cut by max_time: final/ and the summary are still written
        summary = json.loads((out / "summary.json").read_text())
    rows = read_metrics(out)
    stage_tokens = {}
    curve = []
    for r in rows:
        offset = sum(v for k, v in stage_tokens.items() if k < r["stage_idx"])
        stage_tokens[r["stage_idx"]] = r.get("stage_tokens", 0)
        if "heldout_kl" in r:
            curve.append({"tokens": offset + r["stage_tokens"], "stage": r["stage"], "heldout_kl": r["heldout_kl"]})
    speed = {}
    for r in rows:
        speed[r["stage"]] = r["tokens_per_s"]  # the last row of each stage: its average over the stage
    trained = sum(stage_tokens.values())
    if not curve or curve[-1]["tokens"] < trained:  # a run stopped by max_time: its last point is the summary's
        curve.append({"tokens": trained, "stage": rows[-1]["stage"] if rows else "seed",
                      "heldout_kl": summary["heldout_kl_distilled"]})
    info = {"summary": summary, "kl_curve": [{"tokens": 0, "stage": "seed",
                                              "heldout_kl": summary["heldout_kl_seeded"]}] + curve,
            "tokens_per_s": speed, "tokens_trained": trained,
            "recipe": (RECIPES / ROWS[row]).relative_to(ROOT).as_posix(),
            "transpoint_explanation": read_metadata(summary["final"]).get("transpoint_explanation", ""),
            "mixture": read_metadata(summary["final"]).get("mixture"), "teacher_data": teacher_data_manifests()}
    return Path(summary["final"]), info


def teacher_data_manifests() -> list[dict]:
    """The manifests of the teacher-written data in this machine's cache (what was sampled, how fast)."""
    from tm_distill.runtime import cache_dir  # noqa: PLC0415

    return [json.loads(p.read_text()) for p in sorted((cache_dir() / "teacher-data").glob("*/manifest.json"))]


def teacher_sample_file(teacher_path: str, path: Path) -> Path:
    """Held-out teacher samples (another seed than any recipe's), one JSON line each."""
    from tm_distill.data.selfgen import sample_from_teacher  # noqa: PLC0415

    t = load_teacher(teacher_path, dtype=torch.bfloat16, device="cuda")
    texts = sample_from_teacher(t.model, t.tokenizer, HELDOUT_SAMPLES, 256, seed=HELDOUT_SAMPLE_SEED, device="cuda",
                                batch_size=HELDOUT_SAMPLES)
    path.write_text("".join(json.dumps({"text": s}) + "\n" for s in texts))
    return path


def metrics_of(report: dict, key: str) -> dict:
    m = report["models"][key]
    pos = m["by_position"]
    return {"perplexity": m["perplexity"], "kl_to_teacher": m["kl_to_teacher"], "top1_agreement": m["top1_agreement"],
            **{f"top1_{k}": (pos.get(k) or {}).get("top1_agreement") for k in ("before", "between", "after")},
            **{f"kl_{k}": (pos.get(k) or {}).get("kl_to_teacher") for k in ("before", "between", "after")}}


def _passkey(result: dict | None) -> dict | None:
    """Passkey accuracy overall and per context length."""
    if not result:
        return None
    by_length: dict[int, list[bool]] = {}
    for sample in result["samples"]:
        by_length.setdefault(sample["length"], []).append(bool(sample["correct"]))
    return {"accuracy": result["accuracy"], "by_length": {n: sum(v) / len(v) for n, v in sorted(by_length.items())}}


def evaluate_row(path: Path, teacher_path: str, samples: Path, work: Path, robustness: bool) -> dict:
    opts = EvalOptions(seq_len=2048, windows=16, batch_size=4, retrieval_tasks=["passkey"],
                       retrieval_lengths=[1024, 2048, 4096], trials=2, speed=False, layer_error=False)
    out: dict = {}
    rep = run_eval([path], teacher_path, "shakespeare", work / "eval-corpus", opts, device="cuda",
                   dtype=torch.bfloat16, plots=False, progress=False)
    key = next(k for k in rep["models"] if k != "teacher")
    out["corpus"] = metrics_of(rep, key)
    out["teacher_corpus_perplexity"] = rep["models"]["teacher"]["perplexity"]
    passkey = ((rep.get("retrieval") or {}).get("tasks") or {}).get("passkey", {})
    out["passkey"] = {who: _passkey(passkey.get(name)) for who, name in (("student", key), ("teacher", "teacher"))}
    sample_opts = EvalOptions(seq_len=2048, windows=16, batch_size=4, heldout_fraction=0.9, speed=False,
                              layer_error=False, retrieval_lengths=[])
    rep = run_eval([path], teacher_path, str(samples), work / "eval-samples", sample_opts, device="cuda",
                   dtype=torch.bfloat16, plots=False, progress=False)
    out["teacher_samples"] = metrics_of(rep, key)
    out["teacher_samples_teacher_perplexity"] = rep["models"]["teacher"]["perplexity"]
    if robustness:
        out["robustness"] = {}
        for spec in ROBUSTNESS:
            o = EvalOptions(seq_len=2048, windows=16, batch_size=4, transpoints=spec, speed=False, layer_error=False,
                            retrieval_lengths=[])
            r = run_eval([path], teacher_path, "shakespeare", work / f"eval-{spec.replace('=', '')}", o,
                         device="cuda", dtype=torch.bfloat16, plots=False, progress=False)
            out["robustness"][spec] = metrics_of(r, key)["perplexity"]
    return out


def general_eval(path: Path, teacher_path: str, work: Path) -> dict:
    """The general-purpose columns: held-out-topic teacher samples, the held-out domain, retrieval up to 8k, chat."""
    from tm_distill.data.teacher_data import TeacherDataSpec, manifest_of, teacher_data  # noqa: PLC0415

    out: dict = {}
    t = load_teacher(teacher_path, dtype=torch.bfloat16, device="cuda")
    spec = TeacherDataSpec("instructions", HELDOUT_SAMPLES, 256, seed=HELDOUT_SAMPLE_SEED, heldout=True)
    samples = work / "heldout-topic-samples.jsonl"
    samples.write_text("".join(json.dumps({"text": s}) + "\n" for s in teacher_data(t, spec, device="cuda")))
    out["heldout_topic_sampling"] = manifest_of(t, spec)
    del t
    kw = dict(device="cuda", dtype=torch.bfloat16, plots=False, progress=False)
    for name, data in (("heldout_topic_samples", str(samples)), ("heldout_domain", HELDOUT_DOMAIN)):
        opts = EvalOptions(seq_len=2048, windows=16, batch_size=4, heldout_fraction=0.9, speed=False,
                           layer_error=False, retrieval_lengths=[])
        rep = run_eval([path], teacher_path, data, work / f"eval-{name}", opts, **kw)
        key = next(k for k in rep["models"] if k != "teacher")
        out[name] = {**metrics_of(rep, key), "teacher_perplexity": rep["models"]["teacher"]["perplexity"]}
    opts = EvalOptions(seq_len=2048, windows=2, batch_size=2, retrieval_tasks=["passkey", "phonebook"],
                       retrieval_lengths=[1024, 2048, 4096, 8192], trials=2, speed=False, layer_error=False)
    rep = run_eval([path], teacher_path, "shakespeare", work / "eval-retrieval", opts, **kw)
    key = next(k for k in rep["models"] if k != "teacher")
    tasks = (rep.get("retrieval") or {}).get("tasks") or {}
    out["retrieval"] = {task: {who: _passkey(tasks.get(task, {}).get(name)) for who, name in
                               (("student", key), ("teacher", "teacher"))} for task in ("passkey", "phonebook")}
    out["chat"] = chat_answers(path, teacher_path)
    return out


def chat_answers(path: Path, teacher_path: str, max_new_tokens: int = 64) -> list[dict]:
    """Greedy answers of teacher and student to CHAT_PROMPTS (one left-padded batch each, graph decoding)."""
    from tm_distill.checkpoint import load_student  # noqa: PLC0415
    from tm_distill.generation import generate_texts  # noqa: PLC0415

    t = load_teacher(teacher_path, dtype=torch.bfloat16, device="cuda")
    student, tok = load_student(path, dtype=torch.bfloat16, device="cuda")
    prompts = list(CHAT_PROMPTS)
    teacher_out = generate_texts(t.model, t.tokenizer, prompts, max_new_tokens, chat=True)
    student_out = generate_texts(student, tok, prompts, max_new_tokens, chat=True)
    return [{"prompt": p, "teacher": a, "student": b} for p, (a, _), (b, _) in zip(prompts, teacher_out, student_out)]


def cache_mib(path: Path, field: str = "student_bytes", lengths=(2048, 4096, 32768)) -> dict:
    """MiB of the student's KV + state (``field="teacher_kv_bytes"``: the teacher's KV) at each length, batch 1."""
    from transformers import AutoConfig  # noqa: PLC0415

    cfg = AutoConfig.from_pretrained(path)
    return {f"{n // 1024}k": sum(getattr(r, field) for r in layer_memory(cfg, n)) / 2**20 for n in lengths}


def main(argv: list[str] | None = None) -> dict:
    ap = parser(__doc__)
    ap.add_argument("--row", choices=sorted(ROWS), required=True)
    ap.add_argument("--teacher", required=True, help="the SmolLM2-135M teacher (alias, GGUF path or HF folder)")
    ap.add_argument("--out", type=Path, required=True, help="folder for row-<name>.json")
    ap.add_argument("--work", type=Path, default=Path("/tmp/compare"), help="where students and reports go")
    ap.add_argument("--max-time", default=None, help="safety net for the distillation (e.g. 6m30s)")
    args = ap.parse_args(argv)
    meta = {"row": args.row, "device": device_name("cuda" if torch.cuda.is_available() else "cpu"),
            "date": utc_date(), "commit": git_commit(), "command": command_line(__file__, argv)}
    row = ResultFile(args.out / f"row-{args.row}.json", meta, rows=None, echo=False)
    work = args.work / args.row
    start = time.time()
    if ROWS[args.row] is None:
        path, info = seeded_student(args.row, args.teacher, work / "student")
    else:
        path, info = trained_student(args.row, args.teacher, work / "run", args.max_time)
    row.set(**info, train_wall_s=round(time.time() - start, 1))
    row.set(memory_mib=cache_mib(path), teacher_kv_mib=cache_mib(path, "teacher_kv_bytes"))
    samples = teacher_sample_file(args.teacher, args.work / "heldout-teacher-samples.jsonl")
    row.set(eval=evaluate_row(path, args.teacher, samples, work, robustness=args.row in ("C", "D")),
            wall_s=round(time.time() - start, 1))
    if args.row in GENERAL:
        row.set(general=general_eval(path, args.teacher, work), wall_s=round(time.time() - start, 1))
    print(json.dumps(row.data, indent=1, default=str)[:6000])
    return row.data


if __name__ == "__main__":
    main()
