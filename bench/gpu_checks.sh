#!/usr/bin/env bash
# The accelerator checks of this project, in one command, for a machine with one NVIDIA GPU and
# jax[cuda] (plus this project's Python dependencies) installed:
#
#   bash bench/gpu_checks.sh            # about 8 minutes on one H100
#
# 1. the backend-specific tests on the GPU: attention implementations chosen per backend against
#    plain autodiff, bfloat16 against float32 (tests/test_attention_backends.py, tests/test_bf16.py);
# 2. bench/train_throughput.py --gpu: base and large text trunks in bfloat16 (ms/step, MFU) with
#    the attention the backend resolves to ("auto": cuDNN), then large with plain XLA attention,
#    so the fused kernel's gain is measured on the same machine. Layers are scanned, as the
#    large/xl/xxl gins run them: unscanned, the base model's parameter initialisation alone took
#    3 min 10 s to compile on an H100 (~2,600 random-number kernels, one set per layer).
# Each part's exit status is printed; the script fails if any part failed.
set -u
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
status=0
run() {
  echo "== $*"
  "$@"
  local rc=$?
  echo "== exit $rc: $*"
  [ $rc -eq 0 ] || status=1
}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || status=1
run "$PY" -m pytest -q -x tests/test_attention_backends.py tests/test_bf16.py
run "$PY" bench/train_throughput.py --gpu --sizes base,large --steps 10 --warmup 2 --scan_layers \
    --attention_impl auto
run "$PY" bench/train_throughput.py --gpu --sizes large --steps 10 --warmup 2 --scan_layers \
    --attention_impl xla
exit $status
