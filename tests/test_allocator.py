"""The job processes keep freed memory for reuse (glibc mallopt): fewer page faults, the
same numbers (the benchmark, benchmarks/bench_allocator.py, checks the weights bit for bit)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from transferscope.study import jobs

FAULTS = """
import json, resource, sys, torch
from transferscope.allocator import reuse_freed_memory
applied = reuse_freed_memory() if sys.argv[1] == "reuse" else False
torch.set_num_threads(1)
model = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.BatchNorm2d(16), torch.nn.ReLU(),
                            torch.nn.Conv2d(16, 16, 3, padding=1), torch.nn.Flatten(), torch.nn.Linear(16384, 10))
x = torch.randn(64, 3, 32, 32)
def step():
    model.zero_grad()
    model(x).sum().backward()
step()  # the first step maps the memory; count the faults of the next ones
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    step()
print(json.dumps({"applied": applied, "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before}))
"""


def _faults(mode: str) -> dict:
    out = subprocess.run([sys.executable, "-c", FAULTS, mode], check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mallopt is glibc's (Linux)")
def test_freed_tensors_are_reused_instead_of_faulted_in_again():
    default, reuse = _faults("default"), _faults("reuse")
    assert reuse["applied"] is True
    # without it, each step's activations and gradients (4 MiB apiece) are fresh mappings,
    # faulted in page by page (about 25,000 faults in 5 steps here; 3,000-4,000 with it)
    assert default["faults"] > 5 * 1024
    assert reuse["faults"] * 4 < default["faults"]


def test_every_job_process_asks_for_it(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(jobs, "reuse_freed_memory", lambda: calls.append(True))
    assert jobs.execute_job(tmp_path, "no-such-job") == "failed"
    assert calls == [True]
