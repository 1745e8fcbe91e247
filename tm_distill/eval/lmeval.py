"""Standard benchmarks through lm-evaluation-harness (optional extra: ``pip install 'tm-distill[eval]'``).

The loaded model instance goes into lm_eval's ``HFLM`` wrapper (backend "causal", so the TransMamba model
type needs no entry in transformers' causal-LM name table). Tasks are lm_eval task names
(``arc_easy``, ...) or local tasks defined by YAML files in ``task_dir`` (e.g. ``dataset_path: json`` with
``dataset_kwargs.data_files`` pointing at local JSONL), which need no hub access.
"""

from __future__ import annotations

import importlib.util
import logging
import math
from pathlib import Path

import torch

from ..errors import UserError

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'tm-distill[eval]'  (or: pip install lm-eval)"


class LMEvalUnavailable(UserError, RuntimeError):
    pass


class LMEvalInputError(UserError, ValueError):
    """No task, or a task lm_eval does not know."""


class TaskFolderNotFound(UserError, FileNotFoundError):
    """A --task-dir that does not exist."""


def lm_eval_available() -> bool:
    return importlib.util.find_spec("lm_eval") is not None


def _require_lm_eval() -> None:
    if not lm_eval_available():
        raise LMEvalUnavailable(f"--tasks needs lm-evaluation-harness, which is not installed: {INSTALL_HINT}")


def _clean(value):
    """JSON-safe metric values: floats (NaN -> None), other scalars as is."""
    if isinstance(value, float):
        return None if math.isnan(value) else value
    if isinstance(value, (int, str, bool)) or value is None:
        return value
    return str(value)


def run_lm_eval(
    models: dict[str, torch.nn.Module], tokenizer, tasks: list[str], task_dir: str | Path | None = None,
    limit: int | float | None = None, num_fewshot: int | None = None, batch_size: int = 1, seed: int = 0,
) -> dict:
    """Run lm_eval ``tasks`` on every model. models: name -> HF causal LM (teacher or student).

    Returns {"tasks", "limit", "num_fewshot", "results": {model: {task: {metric: value}}}}; metric names are
    lm_eval's ("acc,none", "acc_norm,none", "acc_stderr,none", ...).
    Raises LMEvalUnavailable when lm_eval is missing, LMEvalInputError for a task lm_eval does not know and
    TaskFolderNotFound for a ``task_dir`` that does not exist.
    """
    _require_lm_eval()
    import lm_eval  # noqa: PLC0415  (optional dependency)
    from lm_eval.models.huggingface import HFLM  # noqa: PLC0415
    from lm_eval.tasks import TaskManager  # noqa: PLC0415

    if not tasks:
        raise LMEvalInputError("no lm_eval tasks given: pass e.g. --tasks arc_easy,hellaswag")
    if task_dir is not None and not Path(task_dir).is_dir():
        raise TaskFolderNotFound(f"task folder {task_dir} does not exist: give a folder of lm_eval task YAML files")
    manager = TaskManager(include_path=str(task_dir) if task_dir is not None else None)
    unknown = [t for t in tasks if not manager.match_tasks([t])]
    if unknown:
        raise LMEvalInputError(
            f"lm_eval does not know task(s) {unknown}; check `lm_eval ls tasks`, or put a task YAML in a folder "
            "and pass it as --task-dir"
        )
    out: dict[str, dict] = {}
    for name, model in models.items():
        device = next(model.parameters()).device
        lm = HFLM(pretrained=model, tokenizer=tokenizer, backend="causal", batch_size=batch_size,
                  device=str(device), max_length=model.config.max_position_embeddings)
        log.info("lm_eval: %s on %s", name, ", ".join(tasks))
        res = lm_eval.simple_evaluate(
            model=lm, tasks=list(tasks), task_manager=manager, limit=limit, num_fewshot=num_fewshot,
            log_samples=False, bootstrap_iters=0, random_seed=seed, numpy_random_seed=seed,
            torch_random_seed=seed, fewshot_random_seed=seed,
        )
        out[name] = {
            task: {k: _clean(v) for k, v in metrics.items() if k not in ("alias", "name")}
            for task, metrics in res["results"].items()
        }
    return {"tasks": list(tasks), "limit": limit, "num_fewshot": num_fewshot, "results": out}


__all__ = ["INSTALL_HINT", "LMEvalInputError", "LMEvalUnavailable", "TaskFolderNotFound", "lm_eval_available", "run_lm_eval"]
