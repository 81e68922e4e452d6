#!/usr/bin/env bash
# Set up xgeo on a fresh machine (Python 3.11, no conda, no GPU needed):
#   bash scripts/setup.sh          -> .venv with the pinned stack (torch, timm, zarr, rasterio, snakemake, dvc, mlflow)
#   bash scripts/setup.sh --test   -> also pytest, scikit-learn, scikit-image, and Debian's chromium for the UI test
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
test_extras=0
[ "${1:-}" = "--test" ] && test_extras=1

if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $($python --version)"
  "$python" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
if [ "$test_extras" = 1 ]; then
  .venv/bin/python -m pip install -q -e ".[test]"
else
  .venv/bin/python -m pip install -q -e .
fi

if [ "$test_extras" = 1 ] && ! command -v chromium >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1; then
    sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    echo "setup: installing Debian's chromium (headless browser for the MLflow UI test)"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium chromium-driver >/dev/null
  else
    echo "setup: chromium not found and no apt-get: the MLflow UI browser test will be skipped" >&2
  fi
fi
# DVC experiments need a git identity; set a local one only where none exists.
if ! git config user.email >/dev/null 2>&1; then
  git config user.name "xgeo user" && git config user.email "xgeo@localhost"
fi
echo "setup: done ($(.venv/bin/python -c 'import torch, timm; print("torch", torch.__version__, "timm", timm.__version__)'))"
