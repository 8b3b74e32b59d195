#!/usr/bin/env bash
# Proves the README's serve command on a fresh clone: clones this repository into a
# temporary folder, and runs tests/integration/test_readme.py against that clone, which
# runs `make serve` there (creating its venv, installing everything, building the sample
# models) and checks every README curl example against its documented output.
set -euo pipefail
src=$(git -C "$(dirname "$0")" rev-parse --show-toplevel)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
git clone -q "$src" "$work/mxserve"
echo "fresh clone at $work/mxserve ($(git -C "$work/mxserve" rev-parse --short HEAD))"
cd "$src"
MXSERVE_README_ROOT="$work/mxserve" "${PYTHON:-.venv/bin/python}" -m pytest -q -s \
    tests/integration/test_readme.py
