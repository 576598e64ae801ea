#!/usr/bin/env bash
# Creates .venv and installs the project. Idempotent: a second run is a quick no-op
# unless pyproject.toml changed. Usage: scripts/setup.sh [--test]
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3
VENV=${FLYWHEEL_VENV:-.venv}
extras=""
[ "${1:-}" = "--test" ] && extras="[test]"

stamp="$VENV/.installed$extras"
if [ -f "$stamp" ] && [ "$stamp" -nt pyproject.toml ]; then
  exit 0
fi

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
pip=("$VENV/bin/python" -m pip --disable-pip-version-check)
# Some machines' pip config names index folders that do not exist; pip then warns once per
# package. Drop only that line; every other message and the exit status are kept.
exec 2> >(grep -v --line-buffered "is ignored: it is neither a file nor a directory" >&2)
"${pip[@]}" install -q --upgrade pip setuptools wheel

# torch first: an unpinned torch pulled in by a dependency would fetch the newest CUDA
# build (several GB). TORCH_SPEC lets a GPU machine choose its build (README).
if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
  echo "setup: installing ${TORCH_SPEC:-torch==2.13.0} ..."
  "${pip[@]}" install -q ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} "${TORCH_SPEC:-torch==2.13.0}"
fi

echo "setup: installing sam3d-flywheel$extras (first time: ~3-5 min) ..."
"${pip[@]}" install -q -e ".$extras"
touch "$stamp"
echo "setup: done ($VENV)"
