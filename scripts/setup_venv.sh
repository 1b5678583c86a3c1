#!/usr/bin/env bash
# Create the project virtualenv (.venv) and install requirements-dev.txt into it.
#
# Idempotent: a stamp file in the venv records the sha256 of requirements*.txt, and the install
# is skipped while they are unchanged. torch/torchvision come from this machine's local wheel
# cache through plain pip (pip's configured find-links); do not switch to uv or poetry, which do
# not look there. Overrides: PYTHON=... (interpreter), VENV=... (location).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

PYTHON="${PYTHON:-python3.11}"
VENV="${VENV:-.venv}"
STAMP="$VENV/.requirements.sha256"

command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3

want="$(cat requirements*.txt | sha256sum | cut -d' ' -f1)"

if [[ -x "$VENV/bin/python" && -f "$STAMP" && "$(cat "$STAMP")" == "$want" ]]; then
    echo "setup_venv: $VENV up to date with requirements*.txt, skipping"
    exit 0
fi

start=$SECONDS
if [[ ! -x "$VENV/bin/python" ]]; then
    echo "setup_venv: creating $VENV with $("$PYTHON" --version 2>&1)"
    "$PYTHON" -m venv "$VENV"
fi

echo "setup_venv: installing requirements-dev.txt into $VENV (first time: several minutes, torch included)"
rm -f "$STAMP"
# pip warns once per package about local index folders that do not exist; that is noise.
"$VENV/bin/python" -m pip install --quiet -r requirements-dev.txt 2>&1 \
    | { grep -v 'is ignored: it is neither a file nor a directory' || true; }

echo "$want" >"$STAMP"
echo "setup_venv: done in $((SECONDS - start)) s"
