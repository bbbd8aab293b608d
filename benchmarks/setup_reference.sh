#!/usr/bin/env bash
# Build the nnU-Net v2 reference environment that benchmarks/run.py compares voxseg against.
#
#   bash benchmarks/setup_reference.sh [VENV_DIR] [--wheels DIR] [--system-torch]
#   bash benchmarks/setup_reference.sh --download-wheels DIR [--python-version 3.12]
#
# VENV_DIR defaults to benchmarks/.refenv (git-ignored). Idempotent: each step checks before it acts
# and says what it did.
#
# Why the dance around torch: nnunetv2 -> dynamic-network-architectures -> timm -> torchvision pins
# a torch release, and pip would replace the local 2.13.0 CPU wheel with a multi-GB CUDA build. So
# torch 2.13.0 goes in first and is pinned while nnunetv2 installs; torchvision is then removed
# (PyPI's torchvision does not import beside the CPU torch, and nnU-Net's core never needs it).
#   --system-torch   GPU machine: the venv sees the preinstalled (CUDA) torch instead.
#   --wheels DIR     no registry: install DIR/*.whl (--no-index --no-deps) instead of from PyPI.
#   --download-wheels DIR  fill DIR here with the wheels a GPU machine lacks (for --wheels there).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="$HERE/.refenv"
WHEELS=""
SYSTEM_TORCH=0
DOWNLOAD=""
PYVER="3.12"
NNUNET="nnunetv2==2.8.1"
TORCH="torch==2.13.0"
while [ $# -gt 0 ]; do
  case "$1" in
    --wheels) WHEELS="$(cd "$2" && pwd)"; shift 2 ;;
    --system-torch) SYSTEM_TORCH=1; shift ;;
    --download-wheels) DOWNLOAD="$2"; shift 2 ;;
    --python-version) PYVER="$2"; shift 2 ;;
    -h|--help) sed -n 2,20p "$0"; exit 0 ;;
    -*) echo "setup_reference: unknown option $1 (see --help)" >&2; exit 2 ;;
    *) VENV="$1"; shift ;;
  esac
done
say() { echo "[setup_reference] $*"; }
# this machine's pip config names local index folders that may be missing; their warnings are noise
quiet_pip() { grep -v "is ignored: it is neither a file nor a directory" || true; }

if [ -n "$DOWNLOAD" ]; then
  # Only what the GPU image lacks (it has numpy, scipy, scikit-image, pandas, matplotlib, timm, ...;
  # see the device docs), pinned to what nnunetv2==2.8.1 resolved to here. Installed there with
  # --no-deps; imagecodecs (26 MB, only tifffile's optional codecs) is left out to stay near the
  # 64 MiB a device call can carry. acvl_utils ships no wheel: built here (pure Python).
  mkdir -p "$DOWNLOAD"
  python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version "$PYVER" \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform any --dest "$DOWNLOAD" "$NNUNET" batchgenerators==0.25.5 batchgeneratorsv2==0.3.6 \
    dynamic_network_architectures==0.4.4 blosc2==4.14.1 ndindex==1.10.1 numexpr==2.14.2 \
    connected-components-3d==4.1.1 simpleitk==2.5.7 nibabel==5.4.2 yacs==0.1.8 graphviz==0.21 \
    future==1.0.0 unittest2==1.1.0 argparse==1.4.0 traceback2==1.4.0 linecache2==1.0.0 2>&1 | quiet_pip
  python3 -m pip wheel --quiet --no-deps --wheel-dir "$DOWNLOAD" acvl_utils==0.2.6 2>&1 | quiet_pip
  say "wheels for Python $PYVER in $DOWNLOAD: $(ls "$DOWNLOAD" | wc -l) files, $(du -sh "$DOWNLOAD" | cut -f1)"
  exit 0
fi

# 1. the environment: a venv, or with --system-torch a package folder beside the machine's own
# python (whose torch may itself live in a venv, which a nested venv would not see)
if [ -x "$VENV/bin/python" ]; then
  say "environment exists: $VENV"
elif [ "$SYSTEM_TORCH" = 1 ]; then
  mkdir -p "$VENV/bin" "$VENV/site"
  printf '#!/bin/sh\nPYTHONPATH="%s${PYTHONPATH:+:$PYTHONPATH}" exec %s "$@"\n' \
    "$(cd "$VENV" && pwd)/site" "$(command -v python3)" > "$VENV/bin/python"
  chmod +x "$VENV/bin/python"
  say "created $VENV/bin/python: $(command -v python3) + $VENV/site"
else
  python3 -m venv "$VENV"
  say "created venv $VENV"
fi
PY="$VENV/bin/python"
PIP=("$PY" -m pip --disable-pip-version-check)
if [ "$SYSTEM_TORCH" = 1 ]; then TARGET=(--target "$VENV/site"); else TARGET=(); fi
torch_version() { "$PY" -c "import torch; print(torch.__version__)" 2>/dev/null || true; }

# 2. torch before nnunetv2, so nothing pulls a CUDA build
if [ "$SYSTEM_TORCH" = 1 ]; then
  say "using preinstalled torch $(torch_version)"
elif [ "$(torch_version)" = "2.13.0+cpu" ]; then
  say "torch 2.13.0+cpu already installed"
else
  "${PIP[@]}" install --quiet "$TORCH" 2>&1 | quiet_pip
  say "installed torch $(torch_version)"
fi
PIN="$(mktemp)"; trap 'rm -f "$PIN"' EXIT
echo "torch==$(torch_version | cut -d+ -f1)" > "$PIN"

# 3. nnunetv2 with torch pinned
if "$PY" -c "import importlib.metadata as m, sys; sys.exit(m.version('nnunetv2') != '2.8.1')" 2>/dev/null; then
  say "nnunetv2 2.8.1 already installed"
else
  if [ -n "$WHEELS" ]; then
    # the device machine: its preinstalled packages stand in for the rest of nnU-Net's needs
    "${PIP[@]}" install --quiet --no-index --no-deps "${TARGET[@]}" "$WHEELS"/*.whl
  else
    "${PIP[@]}" install --quiet "${TARGET[@]}" -c "$PIN" "$NNUNET" 2>&1 | quiet_pip
  fi
  say "installed $NNUNET"
fi

# 4. no torchvision, CPU torch kept (or put back)
if [ "$SYSTEM_TORCH" = 0 ]; then
  if "$PY" -m pip show --quiet torchvision 2>/dev/null; then
    "${PIP[@]}" uninstall --quiet -y torchvision
    say "removed torchvision (does not import beside the CPU torch)"
  fi
  if [ "$(torch_version)" != "2.13.0+cpu" ]; then
    "${PIP[@]}" install --quiet --force-reinstall --no-deps "$TORCH" 2>&1 | quiet_pip
    say "put back torch $(torch_version)"
  fi
fi

# 5. the benchmark trainer at the top level of nnU-Net's trainer package
TRAINER_DIR="$("$PY" -c "import nnunetv2, os; print(os.path.join(nnunetv2.__path__[0], 'training', 'nnUNetTrainer'))")"
if cmp -s "$HERE/reference/nnUNetTrainerBench.py" "$TRAINER_DIR/nnUNetTrainerBench.py"; then
  say "nnUNetTrainerBench up to date in $TRAINER_DIR"
else
  cp "$HERE/reference/nnUNetTrainerBench.py" "$TRAINER_DIR/nnUNetTrainerBench.py"
  say "installed nnUNetTrainerBench into $TRAINER_DIR"
fi

# 6. verify: imports, trainer lookup by name, plan+preprocess on a tiny dataset in a scratch folder
SCRATCH="$(mktemp -d)"; trap 'rm -rf "$SCRATCH" "$PIN"' EXIT
"$PY" - <<'EOF'
import os, nnunetv2, torch
from nnunetv2.utilities.find_class_by_name import recursive_find_python_class
cls = recursive_find_python_class(os.path.join(nnunetv2.__path__[0], "training", "nnUNetTrainer"),
                                  "nnUNetTrainerBench", "nnunetv2.training.nnUNetTrainer")
assert cls is not None, "nnUNetTrainerBench not found by nnU-Net's trainer lookup"
print(f"[setup_reference] import ok: torch {torch.__version__}, trainer {cls.__module__}")
EOF
"$PY" "$HERE/reference/synthetic_dataset.py" "$SCRATCH/raw/Dataset001_Tiny" --cases 3 --size 24 40 >/dev/null
"$PY" "$HERE/reference/plan_preprocess.py" "$SCRATCH/raw/Dataset001_Tiny" "$SCRATCH/work" --np 1 \
  > "$SCRATCH/plan.json" || { say "FAILED: nnUNetv2_plan_and_preprocess on a tiny dataset"; exit 1; }
say "verified: plan+preprocess $(cat "$SCRATCH/plan.json")"
say "reference python: $PY"
