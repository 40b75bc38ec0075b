"""Seconds of a rerun of a finished study (every job done: the plan is rebuilt, the job
states read and nothing runs) against its first run, side by side in one run, on a tiny
study (16x16 images, width-4 ResNet, one epoch per run, the distance analysis).

    .venv/bin/python benchmarks/bench_rerun.py [--threads 2] [--repeats 3]

Timings on a shared machine are perturbed by other processes: compare the ratio of
one run, not absolute numbers across runs.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from transferscope.study import StudySpec, build_plan, run_study
from transferscope.study.executors import LocalExecutor

RECIPE = {"epochs": 1, "lr": 0.05, "batch_size": 32, "clean_train_examples": 32, "device": "cpu"}
STUDY = {
    "name": "rerun",
    "model": {"arch": "small_resnet", "width": 4},
    "source": {"data": {"kind": "synthetic", "name": "source", "image_size": 16, "n_train": 128, "n_test": 64,
                        "num_classes": 4}, "recipe": RECIPE},
    "targets": [{"label": "real", "data": {"kind": "synthetic", "name": "real", "image_size": 16, "n_train": 64,
                                           "n_test": 48}}],
    "finetune": RECIPE,
    "scratch": RECIPE,
    "seeds": [0, 1],
    "analyses": {name: {"enabled": False} for name in
                 ("cka", "mistakes", "interpolation", "basin", "rewind", "criticality", "spectrum")},
}


def timed_run(spec: StudySpec, folder: Path) -> float:
    """Seconds of one ``run_study`` that must end with every job done."""
    started = time.perf_counter()
    counts = run_study(spec, folder, LocalExecutor(progress=False))
    seconds = time.perf_counter() - started
    if counts != {"done": len(build_plan(spec))}:
        raise AssertionError(f"the study did not complete: {counts}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    parser.add_argument("--repeats", type=int, default=3, help="timed reruns; the median is reported")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    spec = StudySpec.model_validate(STUDY)
    with tempfile.TemporaryDirectory() as scratch:
        os.environ["TRANSFERSCOPE_CACHE"] = str(Path(scratch) / "synthetic-cache")  # this process only
        folder = Path(scratch) / "study"
        first = timed_run(spec, folder)
        rerun = statistics.median(timed_run(spec, folder) for _ in range(args.repeats))
    print(f"torch {torch.__version__}, {args.threads} threads; {len(build_plan(spec))} jobs; other processes on the "
          "machine perturb timings, so read the ratio of this run")
    print(f"first run {first:.2f} s, rerun of the finished study {rerun:.3f} s (median of {args.repeats}): "
          f"the rerun takes {rerun / first:.1%} of the first run")


if __name__ == "__main__":
    main()
