#!/usr/bin/env bash
# GPU figures in one call (bench/RESULTS.md, "On a GPU"):
#
#   bash bench/gpu/run.sh --out DIR [--tiny] [--budget-s S] [--compile-mode M] [--sections a,b]
#
# Writes DIR/bench_gpu.json (after every section) and DIR/bench_gpu.log. DIR is --out, else $OUT
# (the device tool's folder that comes back). Installs what bench/gpu/wheels.sh fetched into
# bench/gpu/wheels/ where this Python lacks it, then runs bench/gpu/bench.py under a hard time
# limit ($BENCH_TIMEOUT_S, default 480 s), so a compile that overruns cannot eat the GPU loan.
# --tiny: small shapes on the CPU, the same code paths (CI runs it: tests/test_bench_gpu.py).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
PYTHON=${PYTHON:-python3}
OUT_DIR=${OUT:-}
ARGS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --out) OUT_DIR=${2:?--out needs a folder}; shift 2 ;;
    --out=*) OUT_DIR=${1#--out=}; shift ;;
    *) ARGS+=("$1"); shift ;;
  esac
done
if [ -z "$OUT_DIR" ]; then
  echo "usage: bash bench/gpu/run.sh --out DIR [--tiny] (or set OUT)" >&2
  exit 2
fi
mkdir -p "$OUT_DIR"
LOG="$OUT_DIR/bench_gpu.log"

# Installed outside the working tree: the device tool copies the tree back and forth, not this.
SITE=${BENCH_SITE:-${TMPDIR:-/tmp}/s2i-bench-gpu-site}
export PYTHONPATH="$ROOT:$SITE${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1  # nothing is downloaded: every model is built here with random weights
cd "$ROOT"
{
  echo "bench/gpu/run.sh $(date -u +%FT%TZ), python: $("$PYTHON" --version 2>&1)"
  if command -v nvidia-smi >/dev/null; then nvidia-smi || true; fi
  if [ -d bench/gpu/wheels ]; then "$PYTHON" bench/gpu/install_wheels.py bench/gpu/wheels "$SITE"; fi
} 2>&1 | tee "$LOG"
timeout --signal=TERM --kill-after=15 "${BENCH_TIMEOUT_S:-480}" \
  "$PYTHON" -m bench.gpu.bench --out "$OUT_DIR" ${ARGS[@]+"${ARGS[@]}"} 2>&1 | tee -a "$LOG"
