"""Where the tests find the repository and their fixtures, wherever a test module sits."""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
"""The repository root (the folder holding ``cores/`` and ``backend/``)."""
FIXTURES = REPO_ROOT / "tests" / "fixtures"
"""Golden files and recorded payloads shared by the tests."""
