"""Training: the per-stage loop, atomic checkpoints + resume, metrics, and running a whole recipe.

Heavy imports (accelerate, the stages) happen inside the functions that need them.
"""

from ..checkpoint import save_checkpoint
from .checkpoint import ResumePoint, find_resume_point
from .loop import StageRun, TrainingDiverged, TrainingStopped, lr_factor, sample_transpoints, train_stage
from .metrics import MetricsWriter, read_metrics
from .run import heldout_kl, kl_line, run_recipe

__all__ = ["MetricsWriter", "ResumePoint", "StageRun", "TrainingDiverged", "TrainingStopped", "find_resume_point",
           "heldout_kl", "kl_line", "lr_factor", "read_metrics", "run_recipe", "sample_transpoints", "save_checkpoint",
           "train_stage"]
