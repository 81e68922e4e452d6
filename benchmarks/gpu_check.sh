#!/usr/bin/env bash
# The GPU checks of the paper profile (issue 11), in one run of under 8 minutes on one GPU:
#   1. 50 pretraining steps at Table 11's per-GPU batch (128 RGB + 32 SEN12MS pairs + 12 MDAS pairs), XGeo beside
#      the dense SimMIM SwinV2-B in the same process: images/s, MFU, peak memory (benchmarks/pretrain_step.py);
#   2. the paper-shape tests (pretraining with every group, the four finetuning tasks at their paper shapes, the
#      Table 5 teachers; demo width and the paper's SwinV2-B + MoE) on CUDA, bf16 autocast (`device: auto`);
#   3. finetuning on the GPU: BigEarthNet at the paper's shapes (128 px, batch 128) XGeo vs a plain timm SwinV2-B,
#      (benchmarks/finetune_step.py), then `xgeo finetune bigearthnet` end to end on CUDA (training and evaluation);
#   4. the pretraining loader with the crop and normalisation on the GPU (`pretrain.augment_on: device`) against the
#      loader path, at Table 11's batch (benchmarks/data_loading.py --sections device).
#
#   bash benchmarks/gpu_check.sh [OUT_DIR]       # OUT_DIR default: $OUT, else benchmarks/out/gpu_check
#
# Each section has its own time limit and log (OUT_DIR/<section>.log); a failing section does not stop the others.
# GPU_CHECK_QUICK=1 runs every section with tiny steps on whatever device is present (to try the script on a CPU).
# Python packages the machine lacks can be put as wheels in .whl/ (installed to /tmp/site first; see
# benchmarks/README.md).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR=${1:-${OUT:-benchmarks/out/gpu_check}}
mkdir -p "$OUT_DIR"
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 MLFLOW_ENABLE_ASYNC_LOGGING=false
if ls .whl/*.whl >/dev/null 2>&1; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
QUICK=${GPU_CHECK_QUICK:-0}
if [ "$QUICK" = 1 ]; then
    DEV=$($PY -c "import torch; print('cuda' if torch.cuda.is_available() else 'cpu')")
    PT_CONFIG=demo:rgb=2,sen12ms=1,mdas=1; PT_STEPS=2; FT_SIZE=demo; FT_BATCH=8; FT_STEPS=2; E2E_STEPS=4
    TESTS="tests/test_pretrain_shapes.py::test_paper_shape_pretraining_two_steps tests/test_finetune_paper.py::test_paper_shapes_demo_width"
    MARK="not slow"; BEN="{train: 16, val: 8, test: 2}"
else
    DEV=cuda
    PT_CONFIG=paper:table11; PT_STEPS=50; FT_SIZE=paper; FT_BATCH=128; FT_STEPS=20; E2E_STEPS=100
    TESTS="tests/test_pretrain_shapes.py tests/test_finetune_paper.py"
    MARK="slow or not slow"; BEN="{train: 512, val: 128, test: 8}"
fi
SUMMARY="$OUT_DIR/summary.txt"
: >"$SUMMARY"
section() {  # section NAME SECONDS COMMAND...: runs COMMAND with a time limit, its output to NAME.log and stdout
    local name=$1 limit=$2; shift 2
    local t0=$SECONDS
    echo "=== $name (limit ${limit}s, $(date -u +%T))"
    timeout --kill-after=10 "$limit" "$@" 2>&1 | tee "$OUT_DIR/$name.log"
    local rc=${PIPESTATUS[0]}
    echo "=== $name: exit $rc in $((SECONDS - t0)) s" | tee -a "$SUMMARY"
}

section env 30 bash -c "nvidia-smi || true; $PY - <<'EOF'
import torch, timm, zarr, numpy
print('torch', torch.__version__, 'cuda', torch.version.cuda, 'timm', timm.__version__, 'zarr', zarr.__version__,
      'numpy', numpy.__version__)
print('device:', torch.cuda.get_device_name() if torch.cuda.is_available() else 'none (CPU)')
EOF"

# 1. pretraining at Table 11's per-GPU batch, XGeo beside dense SimMIM SwinV2-B
section pretrain_step 120 $PY -W ignore benchmarks/pretrain_step.py --configs "$PT_CONFIG" --device "$DEV" \
    --steps "$PT_STEPS" --warmup 3 --json "$OUT_DIR/pretrain_step.json"

# 2. the paper-shape tests on CUDA (finetune.device and pretraining take CUDA when present; amp auto = bf16)
section paper_shape_tests 150 $PY -m pytest -q -p no:cacheprovider --basetemp /tmp/gpu_check_tests -m "$MARK" \
    $TESTS -o addopts="" --durations=8

# 3. finetuning on the GPU: paper-shape BigEarthNet stores, the step benchmark, then the real command end to end
STORES=/tmp/gpu_check_stores
section finetune_stores 30 $PY - <<EOF
from pathlib import Path
from xgeo.config import load_params
from xgeo.data.convert import convert
from xgeo.data.synth import synthesize
params = load_params("params.yaml", ["profile=paper", "data.datasets.bigearthnet.synth.patches=$BEN"])
synthesize("bigearthnet", Path("$STORES/raw/bigearthnet"), params, seed=0)
convert("bigearthnet", Path("$STORES/raw/bigearthnet"), Path("$STORES/zarr/bigearthnet.zarr"), params)
print("stores written")
EOF
section finetune_step 50 $PY -W ignore benchmarks/finetune_step.py --tasks bigearthnet --stores "$STORES/zarr" \
    --size "$FT_SIZE" --batch "$FT_BATCH" --steps "$FT_STEPS" --device "$DEV" --set profile=paper \
    --json "$OUT_DIR/finetune_step.json"
rm -rf /tmp/gpu_check_run
section finetune_e2e 50 $PY -W ignore -m xgeo.cli finetune bigearthnet --init random --out /tmp/gpu_check_run \
    --steps "$E2E_STEPS" --set profile=paper --set "model.size=$FT_SIZE" --set "paths.zarr=$STORES/zarr" \
    --set mlflow.enabled=false --set "finetune.device=$DEV" --set finetune.eval_batch_size=128
cp /tmp/gpu_check_run/run.json "$OUT_DIR/finetune_run.json" 2>/dev/null
cp /tmp/gpu_check_run/metrics.json "$OUT_DIR/finetune_metrics.json" 2>/dev/null

# 4. the pretraining loader: pretrain.augment_on loader vs device (crop + normalisation on this GPU), Table 11 batch
section data_loading 40 $PY -W ignore benchmarks/data_loading.py --sections device --device "$DEV" --repeat 3

echo "--- summary"; cat "$SUMMARY"
