"""Fixtures for end-to-end tests against a real Label Studio (see ``tests/e2e/label_studio.py``).

The ``label_studio`` fixture starts one server per test session. When Label Studio is not
installed it FAILS (never skips): run ``bash scripts/setup_label_studio.sh`` first.
Environment: ``LABEL_STUDIO_BIN`` (another executable), ``LABEL_STUDIO_START_TIMEOUT`` (seconds, 180).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.label_studio import (
    DEFAULT_EXECUTABLE,
    SETUP_HINT,
    LabelStudioProcess,
    LabelStudioServer,
)


@pytest.fixture(scope="session")
def label_studio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabelStudioServer]:
    """A running Label Studio on 127.0.0.1 (fresh SQLite data dir), shared by the whole session.

    Yields an object with ``url``, ``token`` (legacy API token), ``username``, ``password``,
    ``log_path``, ``data_dir``, ``headers``, ``api(method, path)`` and ``sdk()``.
    """
    executable = Path(os.environ.get("LABEL_STUDIO_BIN", str(DEFAULT_EXECUTABLE)))
    if not executable.exists():
        pytest.fail(f"Label Studio is not installed: {executable} is missing; {SETUP_HINT}", pytrace=False)
    process = LabelStudioProcess(
        workdir=tmp_path_factory.mktemp("label-studio"),
        executable=executable,
        start_timeout_s=float(os.environ.get("LABEL_STUDIO_START_TIMEOUT", "180")),
    )
    server = process.start()
    try:
        yield server
    finally:
        process.stop()
