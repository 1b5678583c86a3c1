"""Model versions: the string every prediction carries, which version is served, the demo checkpoint.

The base checkpoint's version is ``MODEL_VERSION`` when set, else ``cores-<checkpoint name>``: the last path
component of ``CORES_CHECKPOINT`` (a folder or a hub id such as ``Shawnee-bxy/CoReS`` -> ``cores-CoReS``),
with characters other than letters, digits, ``.``, ``_`` and ``-`` replaced by ``-``. Without a checkpoint
the backend runs the tiny demo checkpoint, version ``cores-tiny-demo``.

Fine-tuned versions are published under ``MODEL_DIR/versions`` (``backend.versions.store``); the served one
is ``CORES_MODEL_VERSION`` when set, else the one ``MODEL_DIR/versions/current`` names, else the base
(``served_version``). The web reads it per request, the worker before each job.

Label Studio skips tasks that already hold a prediction with the backend's current version, so the version
must change whenever the weights do: name checkpoint folders by release, or set ``MODEL_VERSION``.
"""

from __future__ import annotations

import logging
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from backend.operations.settings import Settings
from backend.versions.model_version import ServedVersion
from backend.versions.store import VersionStore

logger = logging.getLogger(__name__)

MODEL_CLASS = "CoReS"
"""``model_class`` reported by /health."""
DEMO_CHECKPOINT_NAME = "tiny-demo"
"""Folder under ``MODEL_DIR`` holding the random demo checkpoint used when no checkpoint is configured."""
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def model_version(settings: Settings) -> str:
    """The base checkpoint's version string for these settings (see the module docstring)."""
    if settings.model_version:
        return settings.model_version
    name = DEMO_CHECKPOINT_NAME
    if settings.checkpoint:
        name = settings.checkpoint.rstrip("/\\").replace("\\", "/").rsplit("/", 1)[-1] or name
    return "cores-" + (_UNSAFE.sub("-", name).strip("-") or DEMO_CHECKPOINT_NAME)


def version_store(settings: Settings) -> VersionStore:
    """The version store of ``settings.model_dir`` with the base checkpoint as its first version."""
    base = settings.checkpoint or str(demo_checkpoint_dir(settings))
    return VersionStore(settings.model_dir, model_version(settings), base)


def served_version(
    settings: Settings, store: VersionStore | None = None, project: int | None = None
) -> ServedVersion:
    """The version to serve now (to ``project``, when given): ``CORES_MODEL_VERSION``, else the project's
    pointer's, else ``current``'s, else the base.

    Raises:
        backend.versions.store.VersionError: the pin or a pointer names a missing version.
    """
    return (store or version_store(settings)).served(settings.pinned_version, project)


def available_versions(settings: Settings, store: VersionStore | None = None) -> list[str]:
    """Names of the model versions this backend can serve (for ``GET /versions``), oldest first."""
    return [version.name for version in (store or version_store(settings)).list()]


def demo_checkpoint_dir(settings: Settings) -> Path:
    """Where the tiny demo checkpoint is built: ``MODEL_DIR/tiny-demo``."""
    return settings.model_dir / DEMO_CHECKPOINT_NAME


def ensure_checkpoint(settings: Settings) -> Settings:
    """Return ``settings`` with a checkpoint: unchanged when one is configured, else the tiny demo one.

    The demo checkpoint is built once (``python -m cores make-tiny-checkpoint`` in a child process, so the
    caller never imports torch) into a temporary folder and renamed into place, so concurrent callers
    never see a half-written checkpoint. Its weights are random: every mask it produces is noise.

    Raises:
        RuntimeError: building the demo checkpoint failed (the message holds the child's output).
    """
    if settings.checkpoint:
        return settings
    target = demo_checkpoint_dir(settings)
    logger.warning(
        "\n%s\nCORES_CHECKPOINT is not set: serving the TINY RANDOM demo checkpoint at %s.\n"
        "Its masks are RANDOM NOISE. Set CORES_CHECKPOINT to a CoReS checkpoint folder or hub id "
        "(e.g. Shawnee-bxy/CoReS) for real predictions.\n%s",
        "!" * 100,
        target,
        "!" * 100,
    )
    if not (target / "config.json").is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=target.parent, prefix=".tiny-demo-") as tmp:
            building = Path(tmp) / "checkpoint"
            cmd = [sys.executable, "-m", "cores", "make-tiny-checkpoint", str(building), "--layout", "cores"]
            logger.info("building the demo checkpoint: %s", " ".join(cmd))
            done = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                raise RuntimeError(
                    f"building the demo checkpoint failed (exit {done.returncode}): {done.stderr[-2000:]}"
                )
            try:
                building.rename(target)
            except OSError:
                if not (target / "config.json").is_file():  # not a concurrent builder that won the race
                    raise
    return settings.with_changes(checkpoint=str(target))
