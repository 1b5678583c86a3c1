#!/usr/bin/env bash
# Install Debian's Chromium for the browser test (tests/e2e/test_annotator_browser.py).
#
# The test drives /usr/bin/chromium through Python Playwright's own driver (requirements-dev.txt);
# it never downloads a browser (`playwright install` cannot work on a closed network). Idempotent:
# nothing happens while /usr/bin/chromium exists. Needs root (CI runs as root) or sudo.
# Override: CHROMIUM=/path/to/chromium (only checked, never installed).
set -euo pipefail

CHROMIUM="${CHROMIUM:-/usr/bin/chromium}"

if [[ -x "$CHROMIUM" ]]; then
    echo "setup_browser: $CHROMIUM present, skipping"
    exit 0
fi
if [[ "$CHROMIUM" != /usr/bin/chromium ]]; then
    echo "setup_browser: CHROMIUM=$CHROMIUM does not exist" >&2
    exit 1
fi

SUDO=()
if [[ "$(id -u)" -ne 0 ]]; then
    if ! command -v sudo >/dev/null 2>&1; then
        echo "setup_browser: /usr/bin/chromium is missing; install Debian's chromium as root" >&2
        exit 1
    fi
    SUDO=(sudo)
fi

start=$SECONDS
echo "setup_browser: installing Debian's chromium (about 300 MB)"
"${SUDO[@]}" apt-get update -qq
"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null
"$CHROMIUM" --version 2>/dev/null  # Debian's wrapper script prints a harmless shell warning
echo "setup_browser: done in $((SECONDS - start)) s"
