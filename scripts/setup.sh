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

# The annotation app's 3D viewer (three.js), served by the app itself: nothing from a CDN.
THREE_VERSION=0.187.0
if [ ! -f .cache/web/node_modules/three/package.json ] || ! grep -q "\"version\": \"$THREE_VERSION\"" .cache/web/node_modules/three/package.json; then
  if command -v npm >/dev/null; then
    echo "setup: installing three@$THREE_VERSION (npm) for the annotation app ..."
    mkdir -p .cache/web
    npm install --silent --no-audit --no-fund --prefix .cache/web "three@$THREE_VERSION" >/dev/null
  else
    echo "setup: no npm: \`flywheel annotate serve\` needs three.js (install Node.js and npm, rerun)" >&2
  fi
fi

if [ -n "$extras" ]; then
  # The tests start a real Label Studio; its Django pins clash with ours, so it gets its own venv.
  LS_VENV=${LABEL_STUDIO_VENV:-.venv-labelstudio}
  if [ ! -x "$LS_VENV/bin/label-studio" ]; then
    echo "setup: installing label-studio 1.23.2 into $LS_VENV (first time: ~2 min) ..."
    [ -x "$LS_VENV/bin/python" ] || "$PYTHON" -m venv "$LS_VENV"
    "$LS_VENV/bin/python" -m pip --disable-pip-version-check install -q "label-studio==1.23.2"
  fi
  # A real asset library no one here made, for the mesh tests: robosuite's wheel (its object
  # meshes; not installed, only read; pip's cache keeps the download).
  if [ ! -f .cache/assets/robosuite-1.5.2-py3-none-any.whl ]; then
    echo "setup: fetching the robosuite 1.5.2 wheel (its mesh assets, for the tests) ..."
    "${pip[@]}" download -q --no-deps "robosuite==1.5.2" -d .cache/assets
  fi
  # ... and drive its web UI with Debian's headless Chromium (Playwright cannot download one here).
  if ! command -v chromium >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
      echo "setup: installing chromium (apt) ..."
      apt-get install -y -q chromium >/dev/null || { apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null; }
    else
      echo "setup: no chromium: install Debian's chromium package for the Label Studio UI tests" >&2
    fi
  fi
fi
touch "$stamp"
echo "setup: done ($VENV)"
