#!/usr/bin/env bash
# Install the reference environment of the stack the released checkpoints were trained on (.venv-ref).
#
# LISA and CoReS pin transformers 4.31.0 with these versions of sentencepiece, pillow, numpy and
# OpenCV. The fidelity tests (tests/cores/*/test_fidelity_*.py) run small scripts of ours (tests/reference/)
# in this venv and compare their output with the product, live. No torch is needed: the slow LLaMA
# tokenizer, CLIPImageProcessor and OpenCV's rasteriser work without it. It must never share the
# project venv (.venv). Idempotent: a stamp file records the installed pins and the install is
# skipped while they match. Overrides: PYTHON=... (interpreter), REF_VENV=... (location).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

PYTHON="${PYTHON:-python3.11}"
REF_VENV="${REF_VENV:-.venv-ref}"
STAMP="$REF_VENV/.installed-reference"
PINS=(
    transformers==4.31.0
    sentencepiece==0.1.99
    pillow==9.4.0
    numpy==1.24.2
    opencv-python-headless==4.8.0.76
)
WANT="${PINS[*]}"

command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3

if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$WANT" && -x "$REF_VENV/bin/python" ]]; then
    echo "setup_reference: $REF_VENV up to date ($WANT), skipping"
    exit 0
fi

# pip warns once per package about local index folders that do not exist; that is noise.
quiet_pip() {
    "$REF_VENV/bin/python" -m pip "$@" 2>&1 | { grep -v 'is ignored: it is neither a file nor a directory' || true; }
}

start=$SECONDS
if [[ ! -x "$REF_VENV/bin/python" ]]; then
    echo "setup_reference: creating $REF_VENV with $("$PYTHON" --version 2>&1)"
    "$PYTHON" -m venv "$REF_VENV"
fi

echo "setup_reference: installing $WANT into $REF_VENV (about 400 MB, about a minute)"
rm -f "$STAMP"
quiet_pip install --quiet --upgrade pip
quiet_pip install --quiet "${PINS[@]}"

if ! "$REF_VENV/bin/python" -c "import transformers, sentencepiece, PIL, numpy, cv2" 2>/dev/null; then
    echo "setup_reference: $REF_VENV cannot import its packages after the install" >&2
    exit 1
fi
echo "$WANT" >"$STAMP"
echo "setup_reference: done in $((SECONDS - start)) s"
