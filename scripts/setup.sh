#!/usr/bin/env bash
# One idempotent set-up step: .venv with torch, detectron2 and uis_d2 (editable, test extras).
# A second run finds everything in place (stamp + import check) and returns in seconds.
#
# detectron2 routes, tried in order (the one taken is written to .venv/detectron2-route):
#   local        D2_SRC=PATH (a detectron2 source folder, or a .tar.gz of one) is built into the
#                venv: compiled CPU ops, and CUDA ops where torch sees a GPU and a CUDA toolkit
#                (FORCE_CUDA=1 builds them without a visible GPU); rebuilt when the sources change;
#   existing     a detectron2 that already imports in the venv is kept as it is;
#   upstream-git detectron2 built from its git repository (full C++/CUDA ops, fast COCO eval);
#   pypi-v0.6    PyPI's pb1-detectron2==0.6 sources without the C++ extension (no deformable
#                conv, no rotated-box ops, no fast C++ COCO eval; uis_d2 needs none of them).
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
PY="$VENV/bin/python"
STAMP="$VENV/.uis_d2-setup-stamp"
ROUTE_FILE="$VENV/detectron2-route"
SOURCE_FILE="$VENV/detectron2-source"  # identity of the D2_SRC the local route built
D2_SRC=${D2_SRC:-}
D2_GIT=https://github.com/facebookresearch/detectron2.git

log() { echo "[setup] $*"; }
# pip's extra local indexes on these machines print one warning per package; keep logs readable.
pip_q() { "$PY" -m pip "$@" 2>&1 | grep -v "is ignored: it is neither a file nor a directory" || true; }

fail() { echo "[setup] error: $*" >&2; exit 1; }

# What identifies D2_SRC's contents: the archive's hash, or its sources' names, sizes and times.
d2_source_id() {
  if [[ -f "$D2_SRC" ]]; then
    sha256sum < "$D2_SRC" | cut -d' ' -f1
  else
    (cd "$D2_SRC" && find . -path ./build -prune -o -type f \( -name '*.py' -o -name '*.cpp' \
      -o -name '*.cu' -o -name '*.cuh' -o -name '*.h' \) -printf '%P %s %T@\n' | sort \
      | sha256sum | cut -d' ' -f1)
  fi
}

if [[ -n "$D2_SRC" ]]; then
  [[ -d "$D2_SRC" || ( -f "$D2_SRC" && "$D2_SRC" == *.tar.gz ) ]] \
    || fail "D2_SRC=$D2_SRC is neither a detectron2 source folder nor a .tar.gz of one"
  D2_SRC=$(realpath "$D2_SRC")
  D2_SRC_ID=$(d2_source_id)
fi

stamp_value() { { cat setup.py scripts/setup.sh; echo "${D2_SRC_ID:-}"; } | sha256sum | cut -d' ' -f1; }

if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$(stamp_value)" ]] \
    && "$PY" -c "import torch, detectron2, uis_d2.compat" >/dev/null 2>&1; then
  log "up to date (detectron2 route: $(cat "$ROUTE_FILE" 2>/dev/null || echo unknown))"
  exit 0
fi

[[ -x "$PY" ]] || { log "creating $VENV"; python3 -m venv "$VENV"; }
pip_q install -q --upgrade "pip<26" wheel "setuptools>=69"

if ! "$PY" -c "import torch, torchvision" >/dev/null 2>&1; then
  log "installing torch 2.14.1 / torchvision 0.29.1"
  pip_q install -q torch==2.14.1 torchvision==0.29.1
  "$PY" -c "import torch, torchvision" 2>/dev/null || {
    log "torch 2.14.1 is not available here; installing the newest torch/torchvision pair"
    pip_q install -q torch torchvision
  }
fi
"$PY" -c "import torch, torchvision" || { log "torch/torchvision failed to install"; exit 1; }

install_d2_from_pypi_sources() {
  local work
  work=$(mktemp -d)
  # pip >= 25 refuses this sdist's direct-URL extra; a private pip 24.0 downloads it.
  "$PY" -m pip install -q --target "$work/pip24" pip==24.0 2>&1 | grep -v "is ignored" || true
  PYTHONPATH="$work/pip24" "$PY" -m pip download -q --no-deps --no-build-isolation \
    pb1-detectron2==0.6 -d "$work" 2>&1 | grep -v "is ignored" || true
  tar -xzf "$work"/pb1-detectron2-0.6.tar.gz -C "$work"
  local src="$work/pb1-detectron2-0.6"
  # The sdist lacks the C++ sources: build no extension, and install under the name `detectron2`
  # so that packages requiring `detectron2` see it.
  sed -i -e 's/ext_modules=get_extensions(),/ext_modules=[],/' \
         -e 's/name="pb1-detectron2",/name="detectron2",/' "$src/setup.py"
  pip_q install -q --no-build-isolation "$src"
  rm -rf "$work"
}

install_d2_from_local_source() {
  local src="$D2_SRC" work=""
  if [[ -f "$D2_SRC" ]]; then
    work=$(mktemp -d)
    tar -xzf "$D2_SRC" -C "$work" || fail "D2_SRC=$D2_SRC: cannot unpack the archive"
    local found
    found=$(find "$work" -maxdepth 2 -name setup.py -print -quit)
    src=${found%/setup.py}
  fi
  [[ -n "$src" && -f "$src/setup.py" ]] || fail "D2_SRC=$D2_SRC holds no setup.py (at its top or one folder down)"
  # ninja compiles the extension's sources in parallel (setuptools alone builds them one by one).
  pip_q install -q ninja
  log "building detectron2 from $D2_SRC (compiled ops; a few minutes)"
  "$PY" -m pip install -q --no-build-isolation "$src" 2>&1 | { grep -v "is ignored" || true; } \
    || fail "building detectron2 from D2_SRC=$D2_SRC failed (pip's output is above)"
  [[ -z "$work" ]] || rm -rf "$work"
  "$PY" -c "import torch, detectron2._C" \
    || fail "detectron2 built from D2_SRC=$D2_SRC does not import its compiled extension"
}

if [[ -n "$D2_SRC" ]]; then
  if [[ "$(cat "$SOURCE_FILE" 2>/dev/null)" == "$D2_SRC_ID" ]] \
      && "$PY" -c "import torch, detectron2._C" >/dev/null 2>&1; then
    log "keeping detectron2 built from $D2_SRC (unchanged since)"
  else
    install_d2_from_local_source
    echo "$D2_SRC_ID" > "$SOURCE_FILE"
  fi
  echo "local" > "$ROUTE_FILE"
elif "$PY" -c "import detectron2.config" >/dev/null 2>&1; then
  [[ -f "$ROUTE_FILE" ]] || echo "existing" > "$ROUTE_FILE"
  log "keeping the detectron2 already installed ($(cat "$ROUTE_FILE"))"
elif timeout 20 git ls-remote "$D2_GIT" HEAD >/dev/null 2>&1 \
    && pip_q install -q --no-build-isolation "git+$D2_GIT" \
    && "$PY" -c "import detectron2.config" >/dev/null 2>&1; then
  echo "upstream-git" > "$ROUTE_FILE"
  log "built detectron2 from its git repository"
else
  log "detectron2's git repository is unreachable: installing the PyPI v0.6 sources without _C"
  install_d2_from_pypi_sources
  echo "pypi-v0.6" > "$ROUTE_FILE"
fi

log "installing uis_d2 (editable, test extras)"
pip_q install -q -e ".[test,fast-eval]"
"$PY" -c "import uis_d2, detectron2; print('[setup] uis_d2', uis_d2.__version__, \
'on detectron2', detectron2.__version__, '(compiled ops:', uis_d2.compat.has_compiled_extension(), ')')"
stamp_value > "$STAMP"
log "done (detectron2 route: $(cat "$ROUTE_FILE"))"
