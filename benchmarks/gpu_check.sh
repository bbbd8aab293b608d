#!/usr/bin/env bash
# Offline GPU kit: install voxseg and the reference nnU-Net on an air-gapped GPU host and check
# every GPU code path in one command. Docs: docs/benchmarks.md, "GPU kit".
#
#   bash benchmarks/gpu_check.sh --prepare DIR [--python-version 3.12]       # here, with a registry
#   bash benchmarks/gpu_check.sh --run DIR --out OUT [options]               # GPU host, offline
#   bash benchmarks/gpu_check.sh --dry-run --out OUT [options]               # CPU, tiny sizes (CI)
#
# --prepare DIR  wheels the GPU host lacks (voxseg's and nnU-Net 2.8.1's), LZMA-recompressed, with
#                DIR/MANIFEST.json; fails above 60 MiB so DIR + the project tree fit one 64 MiB
#                transfer. Use DIR=.gpukit (git-ignored) to carry it with the tree.
# --run DIR      installs DIR's wheels into a scratch folder without network, then runs the stages
#                (benchmarks/gpu/profiles.py) within --budget-s (480): training at 64x160x160 with
#                bf16 + compile + device augmentation, augmentation, the memory model at 4/8/16 GB,
#                predict with TTA on two 330^3 volumes, nnU-Net's side of the same, DDP.
# --dry-run      the same stages on the CPU at tiny sizes, in this environment (--wheels DIR also
#                tries the offline install); nnU-Net's stages need benchmarks/.refenv (or --refenv).
# Both write OUT/results.md, OUT/results.json (every stage with its status) and OUT/log.txt, after
# every stage; a failing stage never stops the others. Options passed on to benchmarks/gpu/check.py:
#   --budget-s S  --stages a,b,...  --work DIR (kept)  --refenv DIR  --keep
#   --python PY   the interpreter (default: python3 for --run, .venv/bin/python for --dry-run)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$HERE")"
MODE=""
DIR=""
PYVER="3.12"
PY=""
PASS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --prepare) MODE=prepare; DIR="${2:?--prepare needs DIR}"; shift 2 ;;
    --run) MODE=run; DIR="${2:?--run needs DIR}"; shift 2 ;;
    --dry-run) MODE=dry; shift ;;
    --python-version) PYVER="$2"; shift 2 ;;
    --python) PY="$2"; shift 2 ;;
    --out|--budget-s|--stages|--work|--refenv|--wheels) PASS+=("$1" "$2"); shift 2 ;;
    --keep) PASS+=("$1"); shift ;;
    -h|--help) sed -n 2,21p "$0"; exit 0 ;;
    *) echo "gpu_check: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done

case "$MODE" in
  prepare)
    exec "${PY:-python3}" "$HERE/gpu/wheels.py" prepare "$DIR" --python-version "$PYVER" ;;
  run)
    exec "${PY:-python3}" "$HERE/gpu/check.py" --mode run --wheels "$DIR" "${PASS[@]}" ;;
  dry)
    if [ -z "$PY" ]; then
      if [ -x "$ROOT/.venv/bin/python" ]; then PY="$ROOT/.venv/bin/python"; else PY=python3; fi
    fi
    exec "$PY" "$HERE/gpu/check.py" --mode dry "${PASS[@]}" ;;
  *) echo "gpu_check: choose --prepare DIR, --run DIR --out OUT or --dry-run --out OUT (see --help)" >&2; exit 2 ;;
esac
