#!/usr/bin/env bash
# The project's test command: lint, format check, type check, then every test (e2e included).
#
# Uses the tools of the project venv (.venv, made by scripts/setup_venv.sh). Every step runs
# even when an earlier one fails, so one run shows all problems; the exit code is non-zero if
# any failed. pytest's "no tests collected" (exit code 5) counts as a failure.
# Extra arguments go to pytest: `bash scripts/test.sh -k smoke`.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

VENV="${VENV:-.venv}"
if [[ ! -x "$VENV/bin/python" ]]; then
    echo "test.sh: $VENV is missing: run bash scripts/setup_venv.sh (or make setup) first" >&2
    exit 1
fi

failed=()
step() {
    local name="$1"
    shift
    echo "== $name: $*"
    local rc=0
    "$@" || rc=$?
    if [[ $rc -ne 0 ]]; then
        echo "== $name FAILED (exit code $rc)" >&2
        failed+=("$name")
    fi
    return $rc
}

step "ruff check" "$VENV/bin/ruff" check . || true
step "ruff format" "$VENV/bin/ruff" format --check . || true
step "mypy" "$VENV/bin/mypy" || true

rc=0
step "pytest" "$VENV/bin/python" -m pytest -q "$@" || rc=$?
if [[ $rc -eq 5 ]]; then
    echo "test.sh: pytest collected no tests; that is a failure (tests/ must hold tests)" >&2
fi

if [[ ${#failed[@]} -gt 0 ]]; then
    echo "test.sh: FAILED: ${failed[*]}" >&2
    exit 1
fi
echo "test.sh: all checks passed"
