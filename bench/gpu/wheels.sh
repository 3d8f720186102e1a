#!/usr/bin/env bash
# Fetch the wheels bench/gpu/run.sh installs on the GPU machine (bench/gpu/wheels.txt), --no-deps,
# for its CPython 3.12 on Linux x86_64, into bench/gpu/wheels/ (git-ignored), and check that they
# and the working tree fit in what the device tool carries per call (64 MiB).
#
#   bash bench/gpu/wheels.sh [--dry-run]     # --dry-run: print what it would fetch; no network
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
DEST="$ROOT/bench/gpu/wheels"
LIMIT_MIB=64
PYTHON=${PYTHON:-$( [ -x "$ROOT/.venv/bin/python" ] && echo "$ROOT/.venv/bin/python" || echo python3 )}
# The GPU machine's interpreter: what a binary wheel must be built for.
TARGET=(--python-version 3.12 --implementation cp --abi cp312 --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64)
DRY_RUN=0
case "${1:-}" in
  --dry-run) DRY_RUN=1 ;;
  '') ;;
  *) echo "usage: bash bench/gpu/wheels.sh [--dry-run]" >&2; exit 2 ;;
esac

mapfile -t REQUIREMENTS < <(sed -e 's/#.*//' -e 's/[[:space:]]//g' "$ROOT/bench/gpu/wheels.txt" | grep -v '^$')

# Bytes the device tool sends besides the wheels: tracked files and untracked ones git does not ignore.
tree_bytes() {
  (cd "$ROOT" && git ls-files -z --cached --others --exclude-standard | xargs -0 -r stat -c %s -- 2>/dev/null | awk '{s += $1} END {print s + 0}')
}

if [ "$DRY_RUN" = 1 ]; then
  echo "would fetch into $DEST (--no-deps):"
  for requirement in "${REQUIREMENTS[@]}"; do
    if [ "${requirement%%==*}" = openai-whisper ]; then
      echo "  $requirement  (pip wheel: built from its sdist into a py3-none-any wheel)"
    else
      echo "  $requirement  (pip download: ${TARGET[*]})"
    fi
  done
  echo "working tree: $(( $(tree_bytes) / 1024 )) KiB of the ${LIMIT_MIB} MiB a call carries"
  exit 0
fi

rm -rf "$DEST"
mkdir -p "$DEST"
for requirement in "${REQUIREMENTS[@]}"; do
  if [ "${requirement%%==*}" = openai-whisper ]; then
    # PyPI has only its sdist; the wheel it builds is pure Python, whatever Python builds it.
    "$PYTHON" -m pip wheel --no-deps --quiet --wheel-dir "$DEST" "$requirement"
  else
    "$PYTHON" -m pip download --no-deps --quiet --only-binary=:all: "${TARGET[@]}" --dest "$DEST" "$requirement"
  fi
done

wheels=$(du -cb "$DEST"/*.whl | tail -1 | cut -f1)
tree=$(tree_bytes)
total=$(( wheels + tree ))
ls -l "$DEST"
echo "wheels $(( wheels / 1024 )) KiB + working tree $(( tree / 1024 )) KiB = $(( total / 1024 / 1024 )) MiB of ${LIMIT_MIB} MiB"
if [ "$total" -gt $(( LIMIT_MIB * 1024 * 1024 )) ]; then
  echo "too big for one device call: leave a wheel out, or shrink the working tree" >&2
  exit 1
fi
