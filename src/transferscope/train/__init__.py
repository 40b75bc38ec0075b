"""Training: the trainer (P, P-T, RI-T runs), run folders and their metrics."""

from .run_dir import TrainingRun
from .trainer import Trainer, TrainingFailed, build_run_model, train

__all__ = ["Trainer", "TrainingFailed", "TrainingRun", "build_run_model", "train"]
