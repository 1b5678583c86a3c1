"""Fixtures of the correction-log tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from backend.corrections.store import CorrectionStore
from tests.backend.corrections import export_fixtures


@pytest.fixture
def populated(tmp_path: Path) -> Iterator[tuple[CorrectionStore, Path]]:
    """A store filled by ``export_fixtures.populated`` and the folder holding its images."""
    store = export_fixtures.populated(tmp_path)
    yield store, tmp_path
    store.close()
