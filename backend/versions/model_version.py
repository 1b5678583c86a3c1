"""What the version store holds and answers: a servable version, a pointer file's content, the version
served now and why, the outcome of publishing."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

Source = Literal["pin", "project", "pointer", "base", "request"]


def utc_now() -> str:
    """The current time as UTC ISO 8601 with microseconds (sortable as text)."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True)
class ModelVersion:
    """One servable version.

    Attributes:
        name: the version string predictions carry.
        checkpoint: what ``CoresPipeline.from_pretrained`` loads (a folder, or the base's hub id).
        parent: the version it was fine-tuned from (None for the base).
        created_at: UTC ISO time of publication (None for the base).
        base: True for the implicit first version (``CORES_CHECKPOINT``).
        info: the whole ``version.json`` (empty for the base).
    """

    name: str
    checkpoint: str
    parent: str | None = None
    created_at: str | None = None
    base: bool = False
    info: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """JSON-safe summary (``info`` included)."""
        return {
            "name": self.name,
            "checkpoint": self.checkpoint,
            "parent": self.parent,
            "created_at": self.created_at,
            "base": self.base,
            **{k: v for k, v in self.info.items() if k not in ("name", "parent", "created_at")},
        }


@dataclass(frozen=True)
class Pointer:
    """The content of ``versions/current``."""

    version: str
    pinned: bool = False
    previous: str | None = None
    updated_at: str | None = None
    reason: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "pinned": self.pinned,
            "previous": self.previous,
            "updated_at": self.updated_at,
            "reason": self.reason,
        }


@dataclass(frozen=True)
class ServedVersion:
    """The version to serve now, and why: ``source`` is ``pin`` (``CORES_MODEL_VERSION``), ``project``
    (``versions/projects/<N>``), ``pointer`` (``versions/current``), ``base`` (no pointer yet) or
    ``request`` (a job asked for it by name)."""

    version: ModelVersion
    source: Source
    pinned: bool

    @property
    def name(self) -> str:
        return self.version.name

    @property
    def checkpoint(self) -> str:
        return self.version.checkpoint


@dataclass(frozen=True)
class Published:
    """What ``VersionStore.publish`` did: the new version, and whether it became the current one (it does
    not while a pin is in force; ``held_by`` then names the pin)."""

    version: ModelVersion
    current: bool
    held_by: str | None = None
