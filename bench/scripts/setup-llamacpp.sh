#!/usr/bin/env bash
# Creates the Python virtualenv of the llama.cpp baseline of `aigw-bench engine`:
# llama-cpp-python, pinned, compiled from source (llama.cpp's CPU backend; this takes several
# minutes and needs a C/C++ compiler; pip fetches CMake if it is missing).
#
# Usage: bench/scripts/setup-llamacpp.sh [VENV]   (default: .venv-bench in the repository root)
# Environment: PYTHON (interpreter for the venv, default python3), CMAKE_ARGS (passed to the
# llama.cpp build, e.g. -DGGML_NATIVE=ON, the default).
#
# Idempotent: a venv that already has this version is left as it is.
set -euo pipefail

VERSION=0.3.36
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
venv=${1:-$repo/.venv-bench}
python=${PYTHON:-python3}

installed() {
    [ -x "$venv/bin/python" ] &&
        "$venv/bin/python" -c "import llama_cpp, sys; sys.exit(llama_cpp.__version__ != '$VERSION')" \
            2>/dev/null
}

if installed; then
    echo "llama-cpp-python $VERSION is installed in $venv"
    exit 0
fi

if [ ! -x "$venv/bin/python" ]; then
    echo "creating $venv" >&2
    "$python" -m venv "$venv"
fi
echo "installing llama-cpp-python==$VERSION into $venv (compiles llama.cpp: several minutes)" >&2
"$venv/bin/python" -m pip install --no-cache-dir "llama-cpp-python==$VERSION"
installed || { echo "llama-cpp-python $VERSION did not install into $venv" >&2; exit 1; }
echo "llama-cpp-python $VERSION is installed in $venv; run the benchmark with --llamacpp-python $venv/bin/python"
