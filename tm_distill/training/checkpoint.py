"""Where a run's checkpoints go, which ones are kept, and finding where to resume.

Layout under a run's output folder::

    OUTPUT/<idx>-<stage>/step-<N>/   every ``checkpoint_every`` steps (the newest ``keep_last`` kept)
    OUTPUT/<idx>-<stage>/final/      at the stage's end
    OUTPUT/final/                    the last stage's result

Only what ``--resume`` needs is kept (``drop_superseded``): a stage's step checkpoints go once its final/ is
written, and a stage's final/ (and its emptied folder) goes once the next stage has written a checkpoint of its
own, so a finished run holds the last stage's final/ and OUTPUT/final/ (hard links to the same files where
possible), and OUTPUT/seed/ when the run calibrated its seed.

Each checkpoint is a loadable HF student (config.json with its TransPoints, safetensors, tokenizer) plus
``training_state.pt`` (optimizer, scheduler, python/numpy/torch RNG, step, data position, stage index) and
``tm_distill.json`` (recipe name, stage, step, metrics). A checkpoint is written into a temporary sibling
folder and renamed into place with ``os.replace``, so a crash mid-write never leaves a half-written
checkpoint under a real name; leftover ``.tmp-*`` folders are ignored and removed on the next start.
Writing and reading one checkpoint folder is ``tm_distill.checkpoint``'s.
"""

from __future__ import annotations

import json
import logging
import random
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..atomic import temp_is_stale
from ..checkpoint import STATE_FILE, CheckpointError, read_training_state

log = logging.getLogger(__name__)

_STEP_DIR = re.compile(r"^step-(\d+)$")
_STAGE_DIR = re.compile(r"^(\d+)-[A-Za-z_]\w*$")


def stage_dir(output_dir: str | Path, stage_idx: int, stage_name: str) -> Path:
    return Path(output_dir) / f"{stage_idx}-{stage_name}"


def capture_rng() -> dict:
    """The python, numpy, torch (and CUDA) RNG states as plain data: tensors, ints, floats and strings, so
    ``training_state.pt`` loads with ``torch.load(weights_only=True)`` (no pickled object, no code)."""
    version, internal, gauss_next = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": {"version": version, "state": torch.tensor(internal, dtype=torch.int64),
                        "gauss_next": gauss_next},
             "numpy": {"kind": str(kind), "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict) -> None:
    """Set every RNG to what ``capture_rng`` recorded (the exact same random streams follow)."""
    py, nps = state["python"], state["numpy"]
    random.setstate((py["version"], tuple(int(v) for v in py["state"].tolist()), py["gauss_next"]))
    np.random.set_state((nps["kind"], nps["keys"].numpy().astype(np.uint32), nps["pos"], nps["has_gauss"],
                         nps["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def step_checkpoints(folder: str | Path) -> list[tuple[int, Path]]:
    """Complete ``step-N`` checkpoints in a stage folder, oldest first."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    out = []
    for child in folder.iterdir():
        m = _STEP_DIR.match(child.name)
        if m and (child / STATE_FILE).exists():
            out.append((int(m.group(1)), child))
    return sorted(out)


def prune(folder: str | Path, keep_last: int) -> None:
    """Delete all but the newest ``keep_last`` (>= 1) step checkpoints of a stage folder."""
    for _, path in step_checkpoints(folder)[:-max(keep_last, 1)]:
        shutil.rmtree(path, ignore_errors=True)


def stage_folders(output_dir: str | Path) -> list[tuple[int, Path]]:
    """Every ``<idx>-<stage>`` folder of a run, whatever the recipe's stages, by index."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _STAGE_DIR.match(p.name))]
    return sorted(found)


def newest_checkpoint(output_dir: str | Path) -> Path | None:
    """The newest complete checkpoint of a run (a later stage's over an earlier one's, final/ over step-N)."""
    best = None
    for idx, folder in stage_folders(output_dir):
        steps = step_checkpoints(folder)
        if (folder / "final" / STATE_FILE).exists():
            best = folder / "final"
        elif steps:
            best = steps[-1][1]
    return best


def drop_superseded(output_dir: str | Path, stage_idx: int) -> None:
    """Delete what resuming no longer needs once stage ``stage_idx`` has written a checkpoint: every earlier
    stage's folder (emptied, then removed), and the stage's own step checkpoints when its final/ exists."""
    for idx, folder in stage_folders(output_dir):
        if idx < stage_idx:
            for path in [p for _, p in step_checkpoints(folder)] + [folder / "final"]:
                if path.exists():
                    log.info("removing %s: stage %d has a newer checkpoint", path, stage_idx)
                    shutil.rmtree(path, ignore_errors=True)
            if not any(folder.iterdir()):  # anything else in it is not ours to delete
                folder.rmdir()
        elif idx == stage_idx and (folder / "final" / STATE_FILE).exists():
            for _, path in step_checkpoints(folder):
                shutil.rmtree(path, ignore_errors=True)


def clean_temp(output_dir: str | Path) -> None:
    """Remove the leftovers of interrupted writes (``.tmp-*`` folders) anywhere in the run folder; a temp
    folder whose writer still runs is left alone (its name holds the writer's pid, ``atomic.temp_is_stale``)."""
    root = Path(output_dir)
    if not root.is_dir():
        return
    for tmp in list(root.glob(".tmp-*")) + list(root.glob("*/.tmp-*")):
        if not temp_is_stale(tmp):
            log.warning("leaving %s: the process writing it still runs", tmp)
            continue
        log.info("removing interrupted checkpoint write %s", tmp)
        shutil.rmtree(tmp, ignore_errors=True)


@dataclass
class ResumePoint:
    stage_idx: int  # the stage to run next (== number of stages when all are finished)
    path: Path | None  # the checkpoint to load the student from (None: start from scratch)
    step: int  # completed optimizer steps in stage ``stage_idx`` (0 when starting it)
    state: dict | None  # training_state.pt of a mid-stage checkpoint (None: start the stage fresh)


def locate_resume_point(output_dir: str | Path, stage_names: list[str]) -> tuple[int, Path | None, int]:
    """(stage to run next, checkpoint to load or None, steps done in that stage), without loading any state.

    The newest stage with a checkpoint wins: a final/ means the stage is done (earlier stages' checkpoints
    may have been removed, see ``drop_superseded``); a step-N continues the stage.
    """
    root = Path(output_dir)
    for idx in reversed(range(len(stage_names))):
        folder = stage_dir(root, idx, stage_names[idx])
        if (folder / "final" / STATE_FILE).exists():
            return idx + 1, folder / "final", 0
        steps = step_checkpoints(folder)
        if steps:
            return idx, steps[-1][1], steps[-1][0]
    return 0, None, 0


def find_resume_point(output_dir: str | Path, stage_names: list[str]) -> ResumePoint:
    """The newest complete checkpoint of a run: finished stages are skipped, a mid-stage one continues."""
    idx, path, step = locate_resume_point(output_dir, stage_names)
    state = read_training_state(path) if path is not None and step else None
    return ResumePoint(idx, path, step, state)


def read_seeded_kl(path: Path) -> dict:
    """A run's seeded_kl.json ({"heldout_kl", ...}); CheckpointError naming it when it is damaged."""
    try:
        record = json.loads(path.read_text())
    except ValueError as err:  # bad JSON or bytes that are not UTF-8 alike
        record = err
    if not isinstance(record, dict) or not isinstance(record.get("heldout_kl"), (int, float)):
        reason = str(record).splitlines()[0][:200] if isinstance(record, ValueError) else "no heldout_kl number"
        raise CheckpointError(f"{path} cannot be read ({reason}): delete it to resume (the starting held-out KL is "
                              "then measured on the checkpoint resumed from), or start a new run in another output_dir")
    return record


__all__ = ["ResumePoint", "capture_rng", "clean_temp", "drop_superseded", "find_resume_point", "locate_resume_point",
           "newest_checkpoint", "prune", "read_seeded_kl", "restore_rng", "stage_dir", "stage_folders", "step_checkpoints"]
