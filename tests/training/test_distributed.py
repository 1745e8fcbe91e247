"""Several processes: two CPU processes with the gloo backend (started by torchrun),
give the loss curve of one process at the same global batch, with DDP and with FSDP2, for every stage (LoRA and
on-policy generation included); a sharded run killed mid-stage resumes to the same losses; checkpoints load as plain HF folders."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tm_distill.recipe import recipe_from_dict
from tm_distill.training import run_recipe

DRIVER = Path(__file__).with_name("distributed_driver.py")
ROOT = DRIVER.parents[2]
# batch_size is the global batch, split over micro-batches of 2 rows: one process takes them as 2 micro-batches
# (grad_accum 2), two processes one each. Losses normalized per micro-batch (the hidden stage's relative error)
# then agree exactly, as DDP and gradient accumulation do.
STAGES = [
    {"name": "matrix", "steps": 2, "batch_size": 4, "lr": 1e-2},
    {"name": "hidden", "steps": 2, "batch_size": 4, "lr": 1e-2},
    {"name": "logits", "steps": 3, "batch_size": 4, "lr": 1e-2, "trainable": "lora", "lora": {"r": 4, "alpha": 8},
     "checkpoint_every": 1, "keep_last": 2, "eval_every": 2},  # the held-out KL, measured on gathered weights
    {"name": "logits", "steps": 2, "batch_size": 4, "lr": 1e-3, "trainable": "all"},
    # generation under FSDP too; lmbda 1: one process's two micro-batches and two processes' one each are all
    # on-policy (which micro-batches are is decided per micro-batch slot, alike in every process)
    {"name": "onpolicy", "steps": 2, "batch_size": 4, "lr": 1e-3, "trainable": "all",
     "on_policy": {"lmbda": 1.0, "prompt_tokens": 8, "new_tokens": 8}},
]


def _recipe(tiny_recipe, out: Path, processes: int, strategy: str = "ddp", teacher: str = "replicate") -> dict:
    raw = tiny_recipe()
    raw["output_dir"] = str(out)
    raw["stages"] = [{**s, "batch_size": s["batch_size"] // 2, "grad_accum": 2 // processes} for s in STAGES]
    raw["distributed"] = {"strategy": strategy, "teacher": teacher}
    return raw


def _launch(raw: dict, path: Path, *args: str) -> subprocess.CompletedProcess:
    path.write_text(yaml.safe_dump(raw))
    # torchrun, not `accelerate launch --cpu`: accelerate starts several CPU processes only through mpirun; the
    # processes still run on accelerate (its Accelerator reads torchrun's RANK/WORLD_SIZE: MULTI_CPU, gloo)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(DRIVER),
           str(path), *args]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=ROOT)


def _losses(out: Path) -> dict[tuple, float]:
    """Each step's loss, and the held-out KL where a step measured it."""
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    losses = {(r["stage_idx"], r["step"]): r["loss"] for r in rows if "loss" in r}
    return {**losses, **{(r["stage_idx"], r["step"], "kl"): r["heldout_kl"] for r in rows if "heldout_kl" in r}}


@pytest.fixture(scope="module")
def one_process(tiny_recipe_module, tmp_path_factory):
    out = tmp_path_factory.mktemp("one") / "run"
    run_recipe(recipe_from_dict(_recipe(tiny_recipe_module, out, 1)))
    return _losses(out)


@pytest.fixture(scope="module")
def tiny_recipe_module(tiny_teacher_dir, tiny_text_dir):
    from tests.training.conftest import _tiny_recipe_dict

    return lambda **kw: _tiny_recipe_dict(tiny_teacher_dir, tiny_text_dir, "unused", **kw)


def _assert_same_curve(got: dict, want: dict) -> None:
    assert sorted(got, key=str) == sorted(want, key=str) and any(len(k) == 3 for k in want)
    worst = max(abs(got[k] - want[k]) for k in want)
    assert worst <= 1e-5, {k: (got[k], want[k]) for k in want if abs(got[k] - want[k]) > 1e-5}


@pytest.mark.parametrize("strategy,teacher", [("ddp", "replicate"), ("fsdp", "shard")])
def test_two_processes_give_the_one_process_loss_curve(strategy, teacher, one_process, tiny_recipe_module, tmp_path):
    out = tmp_path / "run"
    result = _launch(_recipe(tiny_recipe_module, out, 2, strategy, teacher), tmp_path / "recipe.yaml")
    assert result.returncode == 0, result.stderr[-4000:]
    _assert_same_curve(_losses(out), one_process)
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(out / "final")  # consolidated: a plain HF folder
    assert type(model).__name__ == "TransMambaForCausalLM"
    assert not any(".lora_" in n for n, _ in model.named_parameters())


def test_sharded_run_killed_mid_stage_resumes_to_the_same_losses(one_process, tiny_recipe_module, tmp_path):
    out = tmp_path / "run"
    raw = _recipe(tiny_recipe_module, out, 2, "fsdp")
    crashed = _launch(raw, tmp_path / "recipe.yaml", "--crash", "2:2")  # LoRA stage, after its step-2 checkpoint
    assert crashed.returncode != 0 and "crash after stage 2 step 2" in crashed.stderr
    assert (out / "2-logits" / "step-2" / "training_state.pt").exists()
    assert not (out / "final").exists()
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(out / "2-logits" / "step-2")  # a mid-stage checkpoint loads too
    resumed = _launch(raw, tmp_path / "recipe.yaml", "--resume")
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    _assert_same_curve(_losses(out), one_process)
    shutil.rmtree(out)


def test_a_token_budget_is_the_runs_whatever_the_processes():
    """`tokens` is what the run trains in all: two processes take half the steps of one (steps stay as given)."""
    from tm_distill.recipe import StageConfig
    from tm_distill.training.resolve import resolve_plan

    stage = StageConfig(name="logits", tokens=4096, batch_size=2, grad_accum=2)
    assert (stage.total_steps(256), stage.total_steps(256, processes=2)) == (4, 2)
    assert stage.tokens_per_step(256, 2) * stage.total_steps(256, 2) == 4096
    assert StageConfig(name="logits", steps=5).total_steps(256, processes=4) == 5
    raw = {"teacher": "x", "transpoints": "all=0", "data": {"seq_len": 256},
           "stages": [{"name": "logits", "tokens": 4096, "batch_size": 2, "grad_accum": 2}]}
    one, two = (resolve_plan(recipe_from_dict(raw), None, n).stages[0] for n in (1, 2))
    assert (one.steps, one.tokens, two.steps, two.tokens) == (4, 4096, 2, 4096)


def test_gradient_sync_counts_a_missing_gradient_as_zero_and_keeps_none_where_none_has_one(tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(DRIVER.with_name("sync_driver.py"))]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("gradients synced") == 2
