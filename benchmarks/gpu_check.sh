#!/usr/bin/env bash
# One prepared GPU run for camkit (H100/H200): first the CUDA cases of the test harness
# (`pytest -m cuda tests/test_harness.py`: Module == function == reference on the GPU in fp32,
# bf16 and fp64), then CUDA/bf16/channels_last/torch.compile checks, the
# performance benchmarks on CUDA, then the paper's site-B protocol (ResNet-50, 224², data resident
# on the GPU, kornia augmentations on the GPU, bf16, channels_last) for baseline and the full
# method, with as many epochs as fit in TRAIN_SECONDS per method.
#
# On the GPU machine, from the repository root (or anywhere: the script moves there itself):
#   bash benchmarks/gpu_check.sh
# One device command may run 10 minutes: run it as two calls, STAGES="tests checks perf" then
# STAGES="train" (the train stage reads the step time measured by the checks from $OUT; without
# it, it assumes 60 ms). It expects python3 with torch, timm and torchmetrics; kornia wheels in .whl/ are installed
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
touch "$OUT/checks.log"

echo "== 3. site-B, resnet50 224², baseline and full method"
# epochs that fit: plain step time from the checks, 7 steps per epoch (425 images, batch 64),
# the full step's ratio, plus the validation pass (~40% of a plain epoch)
EPOCHS=$(python3 - "$OUT/checks.log" "$TRAIN_SECONDS" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
plain = re.search(r"plain median ([0-9.]+) ms", text)
full = re.search(r"RATIO step_full_vs_plain: ([0-9.]+)", text)
ms = float(plain.group(1)) if plain else 60.0
ratio = float(full.group(1)) if full else 1.5
epoch = 7 * ms / 1000 * (ratio + 0.4)
print(max(5, min(200, int(float(sys.argv[2]) / epoch))))
PY
)
echo "epochs per method: $EPOCHS"
for method in baseline full; do
  timeout $((TRAIN_SECONDS * 2 + 60)) python3 examples/covid_ct.py --data "$DATA" --model resnet50 \
    --img-size 224 --epochs "$EPOCHS" --method "$method" --seeds 0 --device cuda --quiet \
    --out "$OUT/site_b_$method" 2>&1 | tail -25
done
