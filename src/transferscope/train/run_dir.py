"""The folder of one training run, and reading it back.

::

    run/
      config.json                 the resolved TrainConfig (init as spelled at the last start)
      checkpoints/epoch_000.safetensors …  weights at epoch 0 (before any update) and every k epochs
      checkpoints/best.safetensors          best by the test metric
      metrics.parquet, metrics.csv          one row per epoch
      resume.pt                   weights + optimizer + scheduler after the last finished epoch
      status.json                 running / complete / failed, and the run's identity digest
                                  (its config with the init file's content hash; written last)
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
from torch import Tensor

from ..config import TrainConfig
from ..io import read_json, read_table
from ..models.weights import load_weights

CHECKPOINT = re.compile(r"epoch_(\d+)\.safetensors")


def checkpoint_path(run_dir: Path, epoch: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"epoch_{epoch:03d}.safetensors"


class TrainingRun:
    """Read access to a run folder written by :func:`transferscope.train.train`."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not (self.path / "config.json").is_file():
            raise FileNotFoundError(f"{self.path} is not a training run folder (no config.json)")

    def __repr__(self) -> str:
        return f"TrainingRun({str(self.path)!r}, status={self.status['state']!r})"

    @property
    def config(self) -> TrainConfig:
        return TrainConfig.model_validate(read_json(self.path / "config.json"))

    @property
    def status(self) -> dict:
        path = self.path / "status.json"
        return read_json(path) if path.is_file() else {"state": "pending"}

    @property
    def complete(self) -> bool:
        return self.status["state"] == "complete"

    @property
    def metrics(self) -> pd.DataFrame:
        return read_table(self.path / "metrics")

    def epochs(self) -> list[int]:
        """Epochs with a checkpoint, ascending (0 is the initialisation): for a complete run
        every epoch its config saves (0, every ``checkpoint_every``, the last), else those
        saved so far."""
        if self.complete:
            config = self.config
            return [e for e in range(config.epochs + 1) if e % config.checkpoint_every == 0 or e == config.epochs]
        found = (CHECKPOINT.fullmatch(p.name) for p in (self.path / "checkpoints").glob("epoch_*.safetensors"))
        return sorted(int(m.group(1)) for m in found if m)

    def checkpoint(self, epoch: int | str) -> dict[str, Tensor]:
        """Weights at an epoch, or ``"best"`` / ``"final"`` (the config's last epoch) /
        ``"init"``; a missing file is an error naming it."""
        if epoch == "best":
            path = self.path / "checkpoints" / "best.safetensors"
        else:
            named = {"final": self.config.epochs, "init": 0}
            path = checkpoint_path(self.path, int(named.get(epoch, epoch) if isinstance(epoch, str) else epoch))
        if not path.is_file() and not self.complete:
            raise FileNotFoundError(f"checkpoint {path} does not exist yet: the run in {self.path} is "
                                    f"{self.status['state']}; finish training it first")
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint {path} is missing from a complete run; delete {self.path} "
                                    "(in a study, its job folder) and train it again")
        return load_weights(path)

    @property
    def best_epoch(self) -> int:
        return int(self.status.get("best_epoch", self.epochs()[-1]))
