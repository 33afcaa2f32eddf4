#!/usr/bin/env bash
# The CUDA checks of issue 5 in one go: the CUDA-only tests, then the benchmark with NPCs on the GPU
# (its table, step breakdown and GPU inference section). Fails when CUDA is missing rather than
# letting the GPU tests skip.
#
#   scripts/gpu_check.sh [OUTDIR] [extra benchmark flags...]
#
# Logs: OUTDIR/gpu.txt, OUTDIR/gpu_tests.log, OUTDIR/benchmark_cuda.log (default OUTDIR: gpu_check_out).
# PYTHON names the interpreter (default: python3 on PATH).
set -uo pipefail
py=${PYTHON:-python3}
out=${1:-gpu_check_out}
shift || true
mkdir -p "$out"
export PYTHONUNBUFFERED=1
"$py" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'CUDA is not available')" || exit 1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1 | tee "$out/gpu.txt"
"$py" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))" \
    | tee -a "$out/gpu.txt"

"$py" -m pytest -q -m gpu -p no:cacheprovider tests/test_gpu.py 2>&1 | tee "$out/gpu_tests.log"
tests_rc=${PIPESTATUS[0]}
"$py" scripts/benchmark.py --device cuda --num-envs 64 \
    --variants floor,dict_floor,npc_wrapper,per_env "$@" 2>&1 \
    | tee "$out/benchmark_cuda.log"
bench_rc=${PIPESTATUS[0]}
echo "gpu tests rc=$tests_rc benchmark rc=$bench_rc"
[ "$tests_rc" = 0 ] && [ "$bench_rc" = 0 ]
