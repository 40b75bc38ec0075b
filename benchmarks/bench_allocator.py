"""A job's CPU time with and without :func:`transferscope.allocator.reuse_freed_memory`,
side by side in one run (the setting is per process, so each run is a fresh process).

Each run trains the demo's RI-T recipe (``presets/demo.yaml``: small ResNet width 16,
the synthetic ``real`` target, 400 training and 500 test images, 10 epochs, tested every
epoch) with one torch thread, as a demo job does, and reports its user and system CPU
seconds, minor page faults and the digest of its final weights. Runs alternate (default,
reuse, default, reuse, ...); the medians are compared, and every run must give the same
weights bit for bit.

    .venv/bin/python benchmarks/bench_allocator.py [--repeats 3] [--epochs 10]

Other processes on the machine perturb timings: compare the ratios of one run only.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
from importlib import resources

import torch
import yaml

from transferscope.allocator import reuse_freed_memory
from transferscope.config import DataConfig, ModelConfig, TrainConfig
from transferscope.data import load_domain
from transferscope.train import train
from transferscope.train.trainer import state_digest


def demo_run_config(epochs: int) -> TrainConfig:
    demo = yaml.safe_load((resources.files("transferscope") / "presets" / "demo.yaml").read_text())
    target = next(t for t in demo["targets"] if t["label"] == "real")
    return TrainConfig(**{**demo["scratch"], "epochs": epochs}, data=DataConfig(**target["data"]),
                       model=ModelConfig(**demo["model"]))


def one_run(reuse: bool, epochs: int) -> dict:
    """Train once in this process; its CPU seconds, page faults and final weights' digest."""
    torch.set_num_threads(1)
    applied = reuse_freed_memory() if reuse else False
    config = demo_run_config(epochs)
    domain = load_domain(config.data)
    with tempfile.TemporaryDirectory() as folder:
        before = resource.getrusage(resource.RUSAGE_SELF)
        run = train(config, folder, progress=False, domain=domain)
        after = resource.getrusage(resource.RUSAGE_SELF)
        digest = state_digest(run.checkpoint(epochs))
    return {"reuse": applied, "user": after.ru_utime - before.ru_utime, "sys": after.ru_stime - before.ru_stime,
            "faults": after.ru_minflt - before.ru_minflt, "digest": digest}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--child", choices=["default", "reuse"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(one_run(args.child == "reuse", args.epochs)))
        return
    load_domain(demo_run_config(args.epochs).data)  # generate the synthetic data once, before timing
    runs: dict[str, list[dict]] = {"default": [], "reuse": []}
    for _ in range(args.repeats):
        for mode in runs:
            out = subprocess.run([sys.executable, __file__, "--child", mode, "--epochs", str(args.epochs)],
                                 check=True, capture_output=True, text=True).stdout
            runs[mode].append(json.loads(out.strip().splitlines()[-1]))
    if not all(run["reuse"] for run in runs["reuse"]):
        print("mallopt is not available here (not glibc): nothing to compare")
        return
    digests = {run["digest"] for mode in runs.values() for run in mode}
    medians = {mode: {key: statistics.median(run[key] for run in results) for key in ("user", "sys", "faults")}
               for mode, results in runs.items()}
    for mode, median in medians.items():
        print(f"{mode:8s} user {median['user']:6.2f} s  sys {median['sys']:5.2f} s  "
              f"CPU {median['user'] + median['sys']:6.2f} s  minor page faults {median['faults']:9.0f}")
    cpu = {mode: median["user"] + median["sys"] for mode, median in medians.items()}
    print(f"CPU time, default / reuse (median of {args.repeats}): {cpu['default'] / cpu['reuse']:.3f}x; "
          f"page faults {medians['default']['faults'] / medians['reuse']['faults']:.1f}x fewer")
    print("final weights identical in every run" if len(digests) == 1 else f"WEIGHTS DIFFER: {sorted(digests)}")


if __name__ == "__main__":
    main()
