"""A command whose output reader stops early (``corrections list | head -1``) ends quietly (status 141, like
a shell's SIGPIPE), with no BrokenPipeError traceback."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

from backend.corrections.store import CorrectionStore
from backend.jobs.embedded import REPO_ROOT
from backend.label_studio.label_config import parse_label_config, shipped_label_config
from tests.backend.webhook_fixtures import load


def test_corrections_list_into_head_ends_without_a_traceback(tmp_path: Path) -> None:
    db = tmp_path / "corrections.sqlite3"
    schema = parse_label_config(shipped_label_config())
    body = load("annotation_created.json")
    with CorrectionStore(db) as store:
        for i in range(3000):  # far more than a pipe buffer of table lines
            payload = copy.deepcopy(body)
            payload["annotation"]["id"] = 10_000 + i
            store.record_webhook(payload, schema=schema)
    done = subprocess.run(
        [
            "bash",
            "-c",
            f'python -m backend corrections list --db "{db}" | head -1; exit "${{PIPESTATUS[0]}}"',
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={
            "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin",
            "PYTHONPATH": str(REPO_ROOT),
        },
    )
    assert len(done.stdout.splitlines()) == 1
    assert "Traceback" not in done.stderr, done.stderr
    assert "BrokenPipeError" not in done.stderr
    assert done.returncode == 141
