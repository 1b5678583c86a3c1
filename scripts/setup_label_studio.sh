#!/usr/bin/env bash
# Install a real Label Studio into its own virtualenv (.venv-ls) for the end-to-end tests.
#
# label-studio pins its own Django, redis, rq and label-studio-sdk, so it must never share the
# project venv (.venv). Idempotent: a stamp file records the installed version and the install
# is skipped while it matches. Overrides: PYTHON=... (interpreter), LS_VENV=... (location),
# LABEL_STUDIO_VERSION=...
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

PYTHON="${PYTHON:-python3.11}"
LS_VENV="${LS_VENV:-.venv-ls}"
LABEL_STUDIO_VERSION="${LABEL_STUDIO_VERSION:-1.23.2}"
STAMP="$LS_VENV/.installed-label-studio"
WANT="label-studio==$LABEL_STUDIO_VERSION"

command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3

if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$WANT" && -x "$LS_VENV/bin/label-studio" ]]; then
    echo "setup_label_studio: $WANT already in $LS_VENV, skipping"
    exit 0
fi

# pip warns once per package about local index folders that do not exist; that is noise.
quiet_pip() {
    "$LS_VENV/bin/python" -m pip "$@" 2>&1 | { grep -v 'is ignored: it is neither a file nor a directory' || true; }
}

start=$SECONDS
if [[ ! -x "$LS_VENV/bin/python" ]]; then
    echo "setup_label_studio: creating $LS_VENV with $("$PYTHON" --version 2>&1)"
    "$PYTHON" -m venv "$LS_VENV"
fi

echo "setup_label_studio: installing $WANT into $LS_VENV (about 1 GB, 1-2 minutes)"
rm -f "$STAMP"
quiet_pip install --quiet --upgrade pip
quiet_pip install --quiet "$WANT"

if [[ ! -x "$LS_VENV/bin/label-studio" ]]; then
    echo "setup_label_studio: $LS_VENV/bin/label-studio missing after install" >&2
    exit 1
fi
echo "$WANT" >"$STAMP"
echo "setup_label_studio: done in $((SECONDS - start)) s"
