#!/usr/bin/env bash
# Install mergekit, the peer of `benchmarks/merge_vs_mergekit.py`, in a venv of its own.
#
# mergekit is a benchmark-only peer: it must not add packages (protobuf, sentencepiece,
# immutables) to the project's .venv. Its venv gets the same torch, transformers, peft
# and safetensors versions as the project's, so both tools run on the same kernels.
# Safe to run again. Usage: benchmarks/setup_mergekit.sh [VENV_DIR] (default .venv-mergekit)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${1:-${MERGEKIT_VENV:-.venv-mergekit}}
PYTHON=${PYTHON:-python3}
MERGEKIT_VERSION=0.1.5
if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
pip() { "$VENV/bin/python" -m pip --disable-pip-version-check -q "$@" 2> >(grep -v "is ignored" >&2); }
# The CPU build of torch first, pinned: any other torch spec may pull a multi-GB CUDA build.
pip install torch==2.13.0
pins=()
if [ -x .venv/bin/python ]; then
  for pkg in transformers peft safetensors accelerate; do
    v=$(.venv/bin/python -c "import importlib.metadata as m; print(m.version('$pkg'))" 2>/dev/null || true)
    [ -n "$v" ] && pins+=("$pkg==$v")
  done
fi
pip install "mergekit==$MERGEKIT_VERSION" torch==2.13.0 "${pins[@]}"
"$VENV/bin/mergekit-yaml" --help > /dev/null
echo "mergekit $MERGEKIT_VERSION ready: $VENV/bin/mergekit-yaml" >&2
