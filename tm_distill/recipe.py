"""The recipe schema: typed dataclasses with help text; a YAML recipe file is a serialized ``Recipe``.

Loading is strict: an unknown key, a wrong type or a bad value fails before any work, naming the full key
path (``stages[1].optimizer.lr: must be > 0``). Command-line overrides are ``key=value`` pairs with dotted
paths; list items are addressed by index or, for stages, by name, and the value is parsed as YAML::

    seed=1  data.seq_len=128  stages.1.optimizer.lr=3e-4  stages.logits.steps=50  stages.0.lr=1e-3

(``lr`` at stage level is shorthand for ``optimizer.lr``, in files and overrides alike.) The parsing itself
lives in ``recipe_parse``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from . import safe_yaml
from .recipe_parse import RESUME_RULES, RecipeError, apply_overrides, from_dict, parse_duration, recipe_file, recipe_key
from .recipe_parse import check as _check
from .recipe_parse import described as _help
from .stage_names import STAGES, TRAINABLE, unknown_stage


# ------------------------------------------------------------------------------------------------------------
@dataclass
class LossConfig:
    kind: Literal["forward_kl", "reverse_kl", "jsd"] = _help("logits stage divergence: KL(teacher||student), "
                                                             "KL(student||teacher) or generalized JSD", "forward_kl")
    beta: float = _help("JSD interpolation in [0, 1] (0 -> forward KL, 1 -> reverse KL limits); the onpolicy stage "
                        "takes on_policy.beta", 0.5)
    temperature: float = _help("softmax temperature for both models' logits", 1.0)
    ce_weight: float = _help("weight of the cross-entropy on the data, added to the distillation loss", 0.0)
    normalize: bool = _help("hidden stage: normalize the L2 by the teacher output's norm", True)
    chunk_size: int = _help("logits stage: positions per vocabulary chunk (never B x T x V twice)", 256)
    layers: list[int] | None = _help("matrix/hidden: layer indices to train (default: every layer with an SSM "
                                     "part in the batch)", None)

    def __post_init__(self):
        _check(self.beta >= 0 and self.beta <= 1, "beta", f"must be in [0, 1], got {self.beta}")
        _check(self.temperature > 0, "temperature", f"must be > 0, got {self.temperature}")
        _check(self.ce_weight >= 0, "ce_weight", f"must be >= 0, got {self.ce_weight}")
        _check(self.chunk_size > 0, "chunk_size", f"must be > 0, got {self.chunk_size}")
        _check(self.layers is None or all(i >= 0 for i in self.layers), "layers", "layer indices must be >= 0")


@dataclass
class LoraConfig:
    r: int = _help("LoRA rank", 16)
    alpha: float = _help("LoRA alpha (scale = alpha / r)", 32.0)
    dropout: float = _help("LoRA dropout", 0.0)
    target_modules: list[str] = _help("module names LoRA wraps (q/k/v/o and MLP projections)",
                                      ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])

    def __post_init__(self):
        _check(self.r > 0, "r", f"must be > 0, got {self.r}")
        _check(0 <= self.dropout < 1, "dropout", f"must be in [0, 1), got {self.dropout}")
        _check(len(self.target_modules) > 0, "target_modules", "must name at least one module")


@dataclass
class OnPolicyConfig:
    """GKD's on-policy distillation (trl ``GKDConfig`` names): the onpolicy stage's generation and divergence."""

    lmbda: float = _help("fraction of the stage's micro-batches trained on the student's own samples (GKD's "
                         "lambda), in [0, 1]; spread evenly: micro-batch k is on-policy when floor((k+1)*lmbda) > "
                         "floor(k*lmbda)", 0.5)
    beta: float = _help("generalized JSD interpolation for every micro-batch of the stage (GKD's beta), in [0, 1]: "
                        "0 is KL(teacher||student), 1 KL(student||teacher)", 0.5)
    prompt_tokens: int = _help("tokens of each window kept as the prompt the student continues", 128)
    new_tokens: int = _help("tokens the student samples after the prompt (the positions the teacher scores); "
                            "prompt_tokens + new_tokens <= the stage's seq_len", 128)
    temperature: float = _help("the student's sampling temperature (0: greedy)", 1.0)

    def __post_init__(self):
        _check(0 <= self.lmbda <= 1, "lmbda", f"must be in [0, 1], got {self.lmbda}")
        _check(0 <= self.beta <= 1, "beta", f"must be in [0, 1], got {self.beta}")
        _check(self.prompt_tokens >= 1, "prompt_tokens", f"must be >= 1, got {self.prompt_tokens}")
        _check(self.new_tokens >= 1, "new_tokens", f"must be >= 1, got {self.new_tokens}")
        _check(self.temperature >= 0, "temperature", f"must be >= 0 (0: greedy), got {self.temperature}")


@dataclass
class OptimizerConfig:
    lr: float = _help("peak learning rate (AdamW)", 1e-3, resume="in_progress")
    weight_decay: float = _help("AdamW weight decay", 0.0)
    betas: list[float] = _help("AdamW betas", [0.9, 0.95])
    eps: float = _help("AdamW epsilon", 1e-8)

    def __post_init__(self):
        _check(self.lr > 0, "lr", f"must be > 0, got {self.lr}")
        _check(self.weight_decay >= 0, "weight_decay", f"must be >= 0, got {self.weight_decay}")
        _check(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), "betas",
               f"must be two numbers in [0, 1), got {self.betas}")


@dataclass
class ScheduleConfig:
    kind: Literal["cosine", "linear", "constant"] = _help("LR decay after warmup", "cosine")
    warmup_steps: int | None = _help("linear warmup steps (default: warmup_ratio of the stage's steps)", None)
    warmup_ratio: float = _help("warmup as a fraction of the stage's steps when warmup_steps is not given", 0.1)
    min_lr_ratio: float = _help("final LR as a fraction of the peak (cosine/linear)", 0.1)

    def __post_init__(self):
        _check(self.warmup_steps is None or self.warmup_steps >= 0, "warmup_steps", "must be >= 0")
        _check(0 <= self.warmup_ratio < 1, "warmup_ratio", f"must be in [0, 1), got {self.warmup_ratio}")
        _check(0 <= self.min_lr_ratio <= 1, "min_lr_ratio", f"must be in [0, 1], got {self.min_lr_ratio}")


@dataclass
class StageConfig:
    name: str = _help(f"stage kind: {', '.join(STAGES)}")
    trainable: Literal[TRAINABLE] = _help(
        "what trains: SSM-only params, SSM + mixer projections, everything, or LoRA (+ SSM params)", "ssm")
    steps: int | None = _help("optimizer steps (give steps or tokens); stays as written whatever the number of "
                              "processes", None, resume="longer")
    tokens: int | None = _help("token budget of the whole run; steps = ceil(tokens / (batch_size * grad_accum * "
                               "seq_len * processes)), so N processes take N times fewer steps", None,
                               resume="longer")
    seq_len: int | None = _help("tokens per sequence (default: data.seq_len)", None)
    batch_size: int = _help("sequences per micro-batch in each process; the global batch is batch_size * "
                            "grad_accum * processes", 2)
    grad_accum: int = _help("micro-batches per optimizer step, in each process", 1)
    precision: Literal["fp32", "bf16"] = _help("autocast precision (bf16 needs CUDA or is emulated slowly on CPU)",
                                               "fp32", resume="in_progress")
    max_grad_norm: float | None = _help("gradient clipping norm (null: no clipping)", 1.0)
    optimizer: OptimizerConfig = _help("AdamW settings", OptimizerConfig)
    schedule: ScheduleConfig = _help("LR schedule", ScheduleConfig)
    loss: LossConfig = _help("loss options", LossConfig)
    lora: LoraConfig = _help("LoRA settings (trainable: lora)", LoraConfig)
    on_policy: OnPolicyConfig = _help("onpolicy stage: generation and generalized JSD (GKD)", OnPolicyConfig)
    transpoint_schedule: Literal["fixed", "sampled"] = _help(
        "fixed: the recipe's TransPoints every batch; sampled: each layer's P times a random factor in "
        "[1-jitter, 1+jitter] per batch (seeded)", "fixed")
    jitter: float = _help("relative range of the sampled TransPoints", 0.5)
    checkpoint_every: int = _help("save a checkpoint every N steps (0: only at the stage end)", 0, resume="any")
    keep_last: int = _help("keep the newest N step checkpoints of this stage while it runs (a finished stage "
                           "keeps only final/)", 1, resume="any")
    log_every: int = _help("write metrics every N steps", 1, resume="any")
    eval_every: int = _help("measure the held-out KL every N steps into metrics.jsonl (0: only before and after "
                            "the run)", 0, resume="any")

    @staticmethod
    def expand_shorthand(data: dict) -> dict:
        """A stage's ``lr`` is shorthand for ``optimizer.lr`` (``recipe_parse.from_dict`` calls this)."""
        if "lr" not in data:
            return data
        data = dict(data)
        lr, optimizer = data.pop("lr"), data.get("optimizer") or {}
        if isinstance(optimizer, dict):  # otherwise the optimizer's own check names it
            data["optimizer"] = {**optimizer, "lr": lr}
        return data

    def __post_init__(self):
        _check(self.steps is not None or self.tokens is not None, "steps", "give steps or tokens (a budget)")
        _check(self.steps is None or self.steps > 0, "steps", f"token budget must be > 0, got steps={self.steps}")
        _check(self.tokens is None or self.tokens > 0, "tokens", f"token budget must be > 0, got {self.tokens}")
        _check(self.seq_len is None or self.seq_len > 1, "seq_len", f"must be > 1, got {self.seq_len}")
        _check(self.batch_size > 0, "batch_size", f"must be > 0, got {self.batch_size}")
        _check(self.grad_accum > 0, "grad_accum", f"must be > 0, got {self.grad_accum}")
        _check(self.max_grad_norm is None or self.max_grad_norm > 0, "max_grad_norm", "must be > 0 or null")
        _check(0 <= self.jitter < 1, "jitter", f"must be in [0, 1), got {self.jitter}")
        _check(self.checkpoint_every >= 0, "checkpoint_every", "must be >= 0")
        _check(self.keep_last >= 1, "keep_last", f"must be >= 1, got {self.keep_last}")
        _check(self.log_every >= 1, "log_every", "must be >= 1")
        _check(self.eval_every >= 0, "eval_every", f"must be >= 0, got {self.eval_every}")
        _check(self.name in STAGES, "name", unknown_stage(self.name))
        _check(self.trainable != "lora" or self.name in ("logits", "onpolicy"), "trainable",
               "lora is only for the logits and onpolicy stages (matrix/hidden train the SSM per layer)")
        if self.name != "onpolicy":
            _check(self.on_policy == OnPolicyConfig(), "on_policy", "only the onpolicy stage generates: drop it")
        else:  # one divergence, set in one place: GKD's generalized JSD with on_policy.beta
            for key, default in (("kind", "forward_kl"), ("beta", 0.5), ("ce_weight", 0.0)):
                _check(getattr(self.loss, key) == default, f"loss.{key}",
                       "the onpolicy stage's loss is the generalized JSD with on_policy.beta (0: forward KL, 1: "
                       "reverse KL), without CE on the data: set on_policy.beta instead")

    def tokens_per_step(self, seq_len: int, processes: int = 1) -> int:
        """Tokens one optimizer step trains on: batch_size x grad_accum sequences in each of ``processes``."""
        return self.batch_size * self.grad_accum * seq_len * processes

    def total_steps(self, seq_len: int, processes: int = 1) -> int:
        """``steps``, or the steps that train ``tokens`` in all (the budget is the run's, whatever the GPUs)."""
        if self.steps is not None:
            return self.steps
        return math.ceil(self.tokens / self.tokens_per_step(seq_len, processes))

    def warmup(self, total: int) -> int:
        return self.schedule.warmup_steps if self.schedule.warmup_steps is not None else int(
            self.schedule.warmup_ratio * total)


MIXTURE_GENERATED = ("teacher:instructions", "teacher:continuations", "recall")


@dataclass
class MixtureEntry:
    """One entry of ``data.mixture``: a training text and its share of the training windows."""

    source: str = _help("a corpus (shakespeare, wordnet), file, folder or dataset (its training split); "
                        "'teacher:instructions' (requests the teacher writes from seed topics, then answers) or "
                        "'teacher:continuations' (the teacher continues prefixes of `prefixes`' training documents), "
                        "sampled once and cached; or 'recall' (synthetic recall sequences in `filler` text)")
    weight: float = _help("share of the training windows, relative to the other entries' weights", 1.0)
    samples: int = _help("teacher:*: texts to sample", 1024)
    tokens: int = _help("teacher:*: new tokens per text", 256)
    prefixes: str | None = _help("teacher:continuations: the text whose training documents are continued "
                                 "(default: data.source)", None)
    filler: str | None = _help("recall: the text the records are spread through (its training documents; default: "
                               "data.source)", None)

    def __post_init__(self):
        _check(bool(self.source), "source", "must name a data source")
        _check(self.weight > 0, "weight", f"must be > 0, got {self.weight}")
        _check(self.samples >= 1, "samples", f"must be >= 1, got {self.samples}")
        _check(self.tokens >= 1, "tokens", f"must be >= 1, got {self.tokens}")
        _check(self.source.startswith("teacher:") <= (self.source in MIXTURE_GENERATED), "source",
               f"{self.source!r}: the teacher's data kinds are teacher:instructions and teacher:continuations")


@dataclass
class DataConfig:
    source: str = _help("'shakespeare' (shipped corpus), a local txt/jsonl/parquet file or folder, or a dataset "
                        "name", "shakespeare")
    text_field: str = _help("column holding the text (jsonl/parquet/datasets)", "text")
    seq_len: int = _help("default tokens per sequence for every stage", 256)
    heldout_fraction: float = _help("fraction of the documents held out for the before/after KL, in [0, 1); 0 "
                                    "needs heldout_source", 0.02)
    heldout_source: str | None = _help("held-out text from elsewhere (file, folder, corpus), used with "
                                       "heldout_fraction: 0 so all of source trains", None)
    max_tokens: int | None = _help("cap on tokenized tokens (null: all)", None)
    heldout_windows: int = _help("held-out windows used for the before/after KL", 8)
    teacher_samples: int = _help("texts sampled from the teacher itself (self-distillation data) and added to "
                                 "the source's training text; 0: none", 0)
    teacher_sample_tokens: int = _help("new tokens per teacher sample", 256)
    mixture: list[MixtureEntry] | None = _help(
        "the training data as weighted entries (corpora, teacher-written text, recall sequences; see "
        "General data in docs/recipes.md); null: data.source's training split (+ teacher_samples). data.source still gives the "
        "held-out windows", None)

    def __post_init__(self):
        _check(bool(self.source), "source", "must name a data source")
        _check(self.teacher_samples >= 0, "teacher_samples", f"must be >= 0, got {self.teacher_samples}")
        _check(self.teacher_sample_tokens > 0, "teacher_sample_tokens",
               f"must be > 0, got {self.teacher_sample_tokens}")
        _check(self.seq_len > 1, "seq_len", f"must be > 1, got {self.seq_len}")
        _check(0 <= self.heldout_fraction < 1, "heldout_fraction", f"must be in [0, 1), got {self.heldout_fraction}")
        _check(self.heldout_fraction > 0 or bool(self.heldout_source), "heldout_fraction",
               "0 holds nothing out of data.source: give data.heldout_source (held-out text from elsewhere), or "
               "a fraction such as 0.02")
        _check(not self.heldout_source or self.heldout_fraction == 0, "heldout_source",
               f"the held-out text comes from {self.heldout_source!r}: set heldout_fraction: 0 so all of "
               "data.source trains")
        _check(self.max_tokens is None or self.max_tokens > 0, "max_tokens", "token budget must be > 0")
        _check(self.heldout_windows >= 1, "heldout_windows", "must be >= 1")
        _check(self.mixture is None or len(self.mixture) > 0, "mixture", "give at least one entry, or null")
        _check(self.mixture is None or not self.teacher_samples, "teacher_samples",
               "with data.mixture, teacher-written text is a mixture entry (source: teacher:instructions): "
               "set teacher_samples: 0")


@dataclass
class CalibrateConfig:
    data: str | None = _help("text to calibrate on, its training split: a corpus, file, folder or dataset "
                             "(default: data.source, split as data.heldout_fraction and seed say, so the held-out "
                             "windows stay unseen)", None)
    windows: int | None = _help("calibration windows (default: 4096 tokens' worth of seq_len windows)", None)
    seq_len: int | None = _help("tokens per calibration window (default: data.seq_len); layers whose TransPoint "
                                "is not below it keep the plain init", None)
    heldout_windows: int = _help("held-out windows on which the before/after errors are also measured (0: none)", 1)

    def __post_init__(self):
        _check(self.data is None or bool(self.data), "data", "must name a data source, or be null for data.source")
        _check(self.windows is None or self.windows >= 1, "windows", f"must be >= 1, got {self.windows}")
        _check(self.seq_len is None or self.seq_len > 1, "seq_len", f"must be > 1, got {self.seq_len}")
        _check(self.heldout_windows >= 0, "heldout_windows", f"must be >= 0, got {self.heldout_windows}")


@dataclass
class DistributedConfig:
    strategy: Literal["ddp", "fsdp"] = _help(
        "with several processes (`accelerate launch`). ddp: every process holds the whole student, and after the "
        "backward the trainable gradients are averaged in one flat all-reduce (DDP's arithmetic; the stages call "
        "the student's parts directly, so there is no DDP wrapper). fsdp: torch's FSDP2 (`fully_shard`) shards the "
        "student's parameters, gradients and AdamW state over the processes; in the logits stage each decoder "
        "layer is its own unit, so only one layer is whole at a time. One process ignores it", "ddp")
    teacher: Literal["replicate", "shard"] = _help(
        "replicate: the frozen teacher whole in every process. shard: each of its decoder layers becomes an FSDP "
        "unit, with one all-gather per layer per forward (its embeddings and LM head stay whole: the fused loss "
        "reads lm_head.weight), for a teacher that does not fit one GPU beside the student", "replicate")
    reshard_after_forward: bool = _help("fsdp: free each layer's gathered weights after its forward (less memory) "
                                        "or keep them for the backward (one all-gather fewer)", True)


@dataclass
class Recipe:
    teacher: str = _help("teacher: HF folder, hub id, .gguf file or 'smollm2-135m'")
    stages: list[StageConfig] = _help("the stages, run in order")
    name: str = _help("recipe name (shown in logs and summary.json)", "recipe")
    transpoints: str = _help("TransPoint spec (all=N, cycle=..., attn=...;ssm=rest, a list, auto:kv_budget=25%, "
                             "auto:kv_budget=20%,context=4096,method=importance)", "cycle=0,64,128,256")
    student: str | None = _help("an already-converted student folder to start from (default: convert the "
                                "teacher on the fly)", None)
    ssm: dict[str, Any] = _help("conversion options passed to seed_student (use_z_gate, use_conv, ...)", {})
    calibrate: CalibrateConfig | None = _help(
        "calibrated seeding: after converting on the fly, fit each layer's SSM decay, gain and D per head to the "
        "teacher's attention outputs in closed form (convert.calibrate); null: the plain init", None)
    output_dir: str = _help("where checkpoints, metrics.jsonl and summary.json go", "runs/recipe", resume="moved")
    seed: int = _help("seed for the SSM init, data order, TransPoint sampling and dropout, in [0, 2**32)", 0)
    device: Literal["auto", "cpu", "cuda"] = _help("auto: CUDA when available", "auto", resume="any")
    data: DataConfig = _help("training and held-out text", DataConfig)
    dtype: Literal["auto", "float32", "bfloat16"] = _help(
        "dtype of the teacher and of the student's frozen weights (trainable ones stay fp32 for the optimizer); "
        "auto: bfloat16 on CUDA when every stage's precision is bf16, else float32", "auto")
    save_dtype: Literal["teacher", "float32", "bfloat16", "float16"] = _help(
        "dtype of the students a run leaves (OUTPUT/final, OUTPUT/seed); teacher: the teacher's own (its config's, "
        "bfloat16 for a quantized GGUF); resumable checkpoints keep the training dtypes", "teacher")
    distributed: DistributedConfig = _help("how several processes share the work (Several GPUs in "
                                           "docs/recipes.md)", DistributedConfig)
    max_time: str | None = _help("wall-clock budget of one `distill` call (e.g. 8m, 1h30m): at the end the run "
                                 "checkpoints and stops, leaving final/ when it is in the last stage", None,
                                 resume="any")
    report_to: list[str] = _help("experiment trackers (accelerate's: tensorboard, wandb, mlflow, ...) that get "
                                 "every metrics.jsonl row and the recipe as hyperparameters; local ones write "
                                 "under OUTPUT/trackers", [], resume="any")

    def __post_init__(self):
        _check(bool(self.teacher), "teacher", "a recipe needs a teacher (HF folder, hub id, .gguf, smollm2-135m)")
        try:
            parse_duration(self.max_time)
        except ValueError as err:
            raise RecipeError("max_time", str(err)) from None
        _check(len(self.stages) > 0, "stages", "a recipe needs at least one stage")
        _check(bool(self.transpoints), "transpoints", "a recipe needs a TransPoint spec")
        _check(0 <= self.seed < 2**32, "seed", f"must be in [0, 2**32 - 1] (what numpy's seeding takes), got {self.seed}")
        _check(self.calibrate is None or not self.student, "calibrate",
               "calibration applies when the teacher is converted on the fly: drop `student` or set calibrate: null")
        for i, stage in enumerate(self.stages):
            op, seq_len = stage.on_policy, self.stage_seq_len(stage)
            _check(stage.name != "onpolicy" or op.prompt_tokens + op.new_tokens <= seq_len,
                   f"stages[{i}].on_policy.new_tokens", f"prompt_tokens + new_tokens = "
                   f"{op.prompt_tokens + op.new_tokens} is longer than the stage's seq_len {seq_len}")
        _check(self.calibrate is None or not self.ssm.get("use_z_gate"), "calibrate",
               "calibration fits the SSM's output gain, which the z gate's RMSNorm removes: drop ssm.use_z_gate "
               "or set calibrate: null")

    def run_dtype(self, device: str) -> str:
        """The resolved ``dtype`` on ``device`` ("cpu" or "cuda")."""
        if self.dtype != "auto":
            return self.dtype
        bf16 = device == "cuda" and all(s.precision == "bf16" for s in self.stages)
        return "bfloat16" if bf16 else "float32"

    def stage_seq_len(self, stage: StageConfig) -> int:
        return stage.seq_len or self.data.seq_len

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def load_recipe(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    """Read a YAML recipe, apply overrides and validate the schema (no teacher is loaded)."""
    path = Path(path)
    if not path.exists():
        raise RecipeError("", f"recipe file {path} does not exist")
    try:
        raw = safe_yaml.load(path.read_text())
    except safe_yaml.TooLarge as err:
        raise RecipeError("", f"{path}: {err}") from None
    except yaml.YAMLError as err:
        raise RecipeError("", f"{path} is not valid YAML: {safe_yaml.describe(err)}") from None
    except UnicodeDecodeError:
        raise RecipeError("", f"{path} is not a text file (binary content): give a YAML recipe, e.g. "
                              "recipes/smollm2-135m/cpu-demo.yaml") from None
    return recipe_from_dict(raw or {}, overrides)


def recipe_from_dict(raw: dict, overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    return from_dict(Recipe, apply_overrides(raw, overrides))


def dump_recipe(recipe: Recipe) -> str:
    return yaml.safe_dump(recipe.to_dict(), sort_keys=False)


__all__ = ["MIXTURE_GENERATED", "RESUME_RULES", "CalibrateConfig", "DataConfig", "DistributedConfig", "LoraConfig",
           "LossConfig", "MixtureEntry", "OnPolicyConfig", "OptimizerConfig", "Recipe", "RecipeError", "ScheduleConfig",
           "StageConfig", "apply_overrides", "dump_recipe", "from_dict", "load_recipe", "parse_duration", "recipe_file",
           "recipe_from_dict", "recipe_key"]
