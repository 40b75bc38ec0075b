#!/usr/bin/env bash
# The checks that need a GPU, in one go (a few minutes on one H100): the whole test suite
# with a GPU present (device "auto" then trains and analyses on CUDA, the pool gives each
# worker a GPU, and tests/test_cuda.py compares every CUDA path with the CPU), then the
# GPU columns of the benchmarks. Logs go to OUTDIR (default gpu-checks/).
#   bash benchmarks/gpu_checks.sh [OUTDIR]
set -uo pipefail
out=${1:-gpu-checks}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
nvidia-smi -L | tee "$out/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())" | tee -a "$out/gpu.txt"
timeout 300 python3 -m pytest -q -p no:cacheprovider --timeout 120 -rs > "$out/tests.txt" 2>&1; tail -40 "$out/tests.txt"
python3 benchmarks/bench_interpolation.py --device cuda --width 32 --examples 2048 --alphas 32 2>&1 | tee "$out/bench.txt"
python3 benchmarks/bench_cka.py --device cuda --width 64 --examples 4096 --repeats 5 2>&1 | tee -a "$out/bench.txt"
python3 benchmarks/bench_shuffle.py --device cuda 2>&1 | tee -a "$out/bench.txt"
python3 benchmarks/bench_train_overhead.py --device cuda --n-train 16384 --epochs 2 --repeats 3 2>&1 | tail -4 | tee -a "$out/bench.txt"
python3 benchmarks/bench_data.py --device cuda 2>&1 | tee -a "$out/bench.txt"
