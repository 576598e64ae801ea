#!/usr/bin/env bash
# Creates .venv and installs the project. Idempotent: a second run is a quick no-op
# unless pyproject.toml or this script changed. Usage: scripts/setup.sh [--test]
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3
VENV=${FLYWHEEL_VENV:-.venv}
extras=""
[ "${1:-}" = "--test" ] && extras="[test]"

stamp="$VENV/.installed$extras"
if [ -f "$stamp" ] && [ "$stamp" -nt pyproject.toml ] && [ "$stamp" -nt scripts/setup.sh ]; then
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

# Browser assets, served from the project, nothing from a CDN: the annotation app's 3D viewer
# (three.js) and what Great Expectations' Data Docs pages load (copied into each site;
# flywheel/validation/docs_assets.py maps their CDN links to these exact versions).
WEB_PACKAGES="three@0.187.0 jquery@3.7.1 bootstrap@4.3.1 popper.js@1.12.9 bootstrap-table@1.19.1 \
bootstrap-datepicker@1.9.0 @fortawesome/fontawesome-free@6.6.0 @forevolve/bootstrap-dark@1.1.0 \
vega@5.33.1 vega-lite@5.23.0 vega-embed@6.29.0"
if [ "$(cat .cache/web/installed 2>/dev/null)" != "$WEB_PACKAGES" ]; then
  if command -v npm >/dev/null; then
    echo "setup: installing the web assets (npm: three.js for the annotation app, Data Docs' styles) ..."
    mkdir -p .cache/web
    # --legacy-peer-deps: GX's pages pair bootstrap 4.3.1 with popper.js 1.12.9, below bootstrap's
    # declared peer range; only files are copied from these packages, nothing resolves them.
    # shellcheck disable=SC2086
    npm install --silent --legacy-peer-deps --no-audit --no-fund --prefix .cache/web $WEB_PACKAGES >/dev/null
    echo "$WEB_PACKAGES" > .cache/web/installed
  else
    echo "setup: no npm: \`flywheel annotate serve\` needs three.js and Data Docs need a network (install Node.js and npm, rerun)" >&2
  fi
fi

if [ -n "$extras" ]; then
  # The tests start a real Label Studio; its Django pins clash with ours, so it gets its own venv.
  # sentry-sdk 3 refuses an option label-studio 1.23.2 passes at start-up (the server exits
  # "Unknown option 'send_default_pii'"), and label-studio does not bound it: pinned here.
  LS_VENV=${LABEL_STUDIO_VENV:-.venv-labelstudio}
  LS_SENTRY=2.76.0
  LS_PINS=("label-studio==1.23.2" "sentry-sdk==$LS_SENTRY")
  if [ ! -x "$LS_VENV/bin/label-studio" ] || ! "$LS_VENV/bin/python" -c \
    'import importlib.metadata as m, sys; sys.exit(m.version("sentry-sdk") != sys.argv[1])' "$LS_SENTRY" 2>/dev/null; then
    echo "setup: installing ${LS_PINS[*]} into $LS_VENV (first time: ~2 min) ..."
    [ -x "$LS_VENV/bin/python" ] || "$PYTHON" -m venv "$LS_VENV"
    "$LS_VENV/bin/python" -m pip --disable-pip-version-check install -q "${LS_PINS[@]}"
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
