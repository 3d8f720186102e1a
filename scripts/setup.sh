#!/usr/bin/env bash
# Set up this checkout: ffmpeg (for openai-whisper) if missing, then .venv with everything in it.
# Safe to run again. TORCH_VERSION picks another torch release (the default is the one CI uses).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v ffmpeg >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1; then
    sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq && $sudo apt-get install -y -qq ffmpeg
  else
    echo "ffmpeg not found: install it with your package manager" >&2; exit 1
  fi
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
pip=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)
"${pip[@]}" --upgrade pip
# torch first and pinned: a range would let pip pick a multi-GB build it does not need.
"${pip[@]}" "torch==${TORCH_VERSION:-2.13.0}" -c constraints.txt
"${pip[@]}" -r requirements-dev.txt -c constraints.txt
"${pip[@]}" --no-deps -e .
touch .venv/.installed
echo "ready: .venv ($(.venv/bin/python -c 'import torch; print("torch", torch.__version__, "CUDA" if torch.cuda.is_available() else "CPU")'))"
