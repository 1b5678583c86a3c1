"""Run our reference scripts (``tests/reference/``) in the reference environment ``.venv-ref``.

``.venv-ref`` holds the stack the released checkpoints were trained on (transformers 4.31.0, sentencepiece
0.1.99, pillow 9.4.0, numpy 1.24.2, opencv-python-headless 4.8.0.76; ``scripts/setup_reference.sh``). The
fidelity tests compare the product with it live, library against library.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = Path(__file__).resolve().parent / "reference"
STAMP = ".installed-reference"
SETUP_HINT = "create it with `bash scripts/setup_reference.sh` (or `make setup`)"


def reference_venv() -> Path:
    """The reference venv: ``REF_VENV`` or ``.venv-ref`` at the repository root."""
    return Path(os.environ.get("REF_VENV", ROOT / ".venv-ref"))


def missing_reason() -> str | None:
    """Why the reference interpreter cannot be used, or None when it can."""
    venv = reference_venv()
    if not (venv / "bin" / "python").is_file():
        return f"the reference environment {venv} is missing: {SETUP_HINT}"
    if not (venv / STAMP).is_file():
        return f"the reference environment {venv} is incomplete (no {STAMP}): {SETUP_HINT}"
    return None


def run_reference(python: Path, script: str, request: dict[str, Any], timeout: float = 600) -> dict[str, Any]:
    """Run ``tests/reference/<script>`` with ``python`` (the reference interpreter): JSON in, JSON out.

    Raises:
        RuntimeError: the script failed (its stderr is in the message).
    """
    done = subprocess.run(
        [str(python), str(SCRIPTS / script)],
        input=json.dumps(request),
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env={**os.environ, "PYTHONHASHSEED": "0", "PYTHONUTF8": "1", "TRANSFORMERS_VERBOSITY": "error"},
    )
    if done.returncode != 0:
        raise RuntimeError(f"reference script {script} failed ({done.returncode}):\n{done.stderr[-4000:]}")
    return json.loads(done.stdout)
