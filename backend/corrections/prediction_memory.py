"""What the backend predicted per task, kept in Redis so the correction log can compare against it.

Label Studio 1.23's annotation webhooks do not carry the prediction an annotator started from (``task`` has
no ``predictions``, ``annotation.prediction`` is ``{}``; only ``annotation.parent_prediction`` names a stored
prediction by id), and Label Studio never stores interactive predictions at all. So every prediction job
remembers what it predicted: for each predicted task, one compact JSON entry is pushed onto the Redis list
``cores:predicted:<project>:<task>`` (newest first, at most ``MAX_ENTRIES``; the key expires
``PREDICTION_MEMORY_TTL`` seconds, default 7 days, after the task's last prediction)::

    {"model_version": "cores-CoReS", "query": "the dog's leash", "kind": "interactive" | "bulk",
     "created_at": "2025-03-01T10:00:00.000000Z", "width": 640, "height": 480, "score": 0.62,
     "review": {"score": 0.62, "levels": [...], "containment": 0.97, "agreement": 0.9, "reasons": [...]},
     "regions": [{"type": "brushlabels", "from_name": "tag", "label": "Context (level 1)", "score": 0.91,
                  "rle_z": "<base64 of zlib of brush RLE>"},
                 {"type": "bitmasklabels", "from_name": "mask", ..., "data_url": "data:image/png;base64,..."},
                 {"type": "polygonlabels", "from_name": "poly", ..., "points": [[x%, y%], ...]}, ...]}

Every predicted region of the schema's mask controls is kept as predicted (the brush RLE zlib-compressed,
the bitmask's data URL and the polygon's points as they are), so the correction log compares an annotation
with exactly what the annotator was shown. A 1024x768 brush mask takes ~2 KB there. Entries written before
several tags were answered (``"levels"`` of brush RLE) are read as brush regions of the schema's first
BrushLabels tag. The web's webhook handler reads the list with one ``LRANGE`` when the
payload holds no usable prediction and picks the newest entry whose query is the annotation's prompt text
(else the newest entry): ``recall``. ``RememberedPrediction.to_label_studio`` turns it back into Label
Studio's prediction form, which ``CorrectionStore.record_webhook(prediction=...)`` reads.

Nothing here imports torch (the web reads the memory).
"""

from __future__ import annotations

import base64
import binascii
import logging
import time
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import redis

from backend.corrections.records import utc_iso
from backend.label_studio.label_config import SegmentationSchema
from backend.operations import json_codec

logger = logging.getLogger(__name__)

KEY_PREFIX = "cores:predicted:"
MAX_ENTRIES = 4
"""Entries kept per task (several queries on one image); older ones are dropped."""
INDEX_KEY = "cores:predicted-index"
"""Sorted set of every remembered task's key, scored by the time of its last prediction."""
DEFAULT_MAX_TASKS = 100_000
DEFAULT_MAX_ENTRY_BYTES = 256 * 1024
BRUSH_TYPE = "brushlabels"
BITMASK_TYPE = "bitmasklabels"
POLYGON_TYPE = "polygonlabels"


def memory_key(project: int, task: int) -> str:
    """The Redis key of a task's remembered predictions."""
    return f"{KEY_PREFIX}{project}:{task}"


def normalize_query(query: str | None) -> str:
    """A query as compared between a prediction and an annotation: trimmed, inner whitespace collapsed,
    case-folded."""
    return " ".join((query or "").split()).casefold()


@dataclass(frozen=True)
class RememberedRegion:
    """One predicted region: its result type, control name (None in old brush-only entries), label, score
    and ``value`` without its labels (``{"format": "rle", "rle": [...]}``, ``{"imageDataURL": ...}`` or
    ``{"points": [...], "closed": true}``)."""

    type: str
    from_name: str | None
    label: str
    score: float | None
    value: Mapping[str, Any]

    def to_json(self) -> dict[str, Any]:
        """The region's compact stored form."""
        data: dict[str, Any] = {"type": self.type, "from_name": self.from_name, "label": self.label}
        data["score"] = self.score
        if self.type == BRUSH_TYPE:
            data["rle_z"] = base64.b64encode(zlib.compress(bytes(self.value["rle"]), 9)).decode("ascii")
        elif self.type == BITMASK_TYPE:
            data["data_url"] = self.value["imageDataURL"]
        else:
            data["points"] = self.value["points"]
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RememberedRegion:
        """Read ``to_json``'s form (an old ``levels`` entry: brush, no ``type`` or ``from_name``).

        Raises:
            KeyError, TypeError, binascii.Error, zlib.error: not in the stored form.
        """
        kind = str(data.get("type") or BRUSH_TYPE)
        value: dict[str, Any]
        if kind == BRUSH_TYPE:
            rle = list(zlib.decompress(base64.b64decode(data["rle_z"], validate=True)))
            value = {"format": "rle", "rle": rle}
        elif kind == BITMASK_TYPE:
            value = {"imageDataURL": str(data["data_url"])}
        elif kind == POLYGON_TYPE:
            value = {"points": list(data["points"]), "closed": True}
        else:
            raise TypeError(f"unknown region type {kind!r}")
        name = data.get("from_name")
        return cls(
            kind, None if name is None else str(name), str(data["label"]), _score(data.get("score")), value
        )


@dataclass(frozen=True)
class RememberedPrediction:
    """One remembered prediction of one task (see the module docstring for the stored JSON)."""

    model_version: str
    query: str
    kind: str
    created_at: str
    width: int
    height: int
    score: float | None
    regions: tuple[RememberedRegion, ...]
    review: Mapping[str, Any] | None = None
    """The review score's parts and reasons (``backend.review.score.ReviewScore.to_json``), if scored."""

    def to_json(self) -> dict[str, Any]:
        """The compact JSON entry kept in Redis."""
        return {
            "model_version": self.model_version,
            "query": self.query,
            "kind": self.kind,
            "created_at": self.created_at,
            "width": self.width,
            "height": self.height,
            "score": self.score,
            "regions": [region.to_json() for region in self.regions],
            "review": None if self.review is None else dict(self.review),
        }

    @classmethod
    def from_json(cls, data: Any) -> RememberedPrediction:
        """Parse a stored entry.

        Raises:
            ValueError: an entry that is not in the stored form.
        """
        if not isinstance(data, Mapping):
            raise ValueError(f"expected a JSON object, got {type(data).__name__}")
        try:
            stored = data["regions"] if "regions" in data else data["levels"]
            regions = tuple(RememberedRegion.from_json(region) for region in stored)
            return cls(
                model_version=str(data["model_version"]),
                query=str(data.get("query") or ""),
                kind=str(data.get("kind") or ""),
                created_at=str(data.get("created_at") or ""),
                width=int(data["width"]),
                height=int(data["height"]),
                score=_score(data.get("score")),
                regions=regions,
                review=data["review"] if isinstance(data.get("review"), Mapping) else None,
            )
        except (KeyError, TypeError, binascii.Error, zlib.error) as exc:
            raise ValueError(f"not a remembered prediction: {exc!r}") from exc

    @classmethod
    def from_prediction(
        cls,
        prediction: Mapping[str, Any],
        *,
        query: str,
        kind: str,
        schema: SegmentationSchema,
        review: Mapping[str, Any] | None = None,
    ) -> RememberedPrediction | None:
        """The entry for a ``backend.label_studio.predictions.build_prediction`` dict (and its review
        score's JSON); None when it has no region of ``schema``'s mask controls."""
        regions: list[RememberedRegion] = []
        width = height = 0
        for item in prediction.get("result") or []:
            control = (
                schema.control(item.get("from_name"), item.get("type")) if isinstance(item, Mapping) else None
            )
            if control is None:
                continue
            value = dict(item.get("value") or {})
            labels = value.pop(control.type, None) or []
            if not labels:
                continue
            width, height = int(item["original_width"]), int(item["original_height"])
            regions.append(
                RememberedRegion(control.type, control.name, str(labels[0]), _score(item.get("score")), value)
            )
        if not regions:
            return None
        return cls(
            model_version=str(prediction.get("model_version") or ""),
            query=query,
            kind=kind,
            created_at=utc_iso(datetime.now(UTC)),
            width=width,
            height=height,
            score=_score(prediction.get("score")),
            regions=tuple(regions),
            review=review,
        )

    def to_label_studio(self, schema: SegmentationSchema, prediction_id: int | None = None) -> dict[str, Any]:
        """This prediction in Label Studio's form (``id``, ``model_version``, ``score``, ``result`` with the
        remembered regions of ``schema``'s mask controls; regions of controls the schema no longer has are
        left out), as ``CorrectionStore.record_webhook`` reads it. ``prediction_id``: the Label Studio
        prediction it stands for, when the annotation names one."""
        first_brush = next((c.name for c in schema.controls if c.type == BRUSH_TYPE), None)
        result = []
        for i, region in enumerate(self.regions):
            name = region.from_name if region.from_name is not None else first_brush
            if schema.control(name, region.type) is None:
                continue
            item: dict[str, Any] = {
                "id": f"memory{i + 1}",
                "from_name": name,
                "to_name": schema.image_name,
                "type": region.type,
                "original_width": self.width,
                "original_height": self.height,
                "image_rotation": 0,
                "value": dict(region.value) | {region.type: [region.label]},
            }
            if region.score is not None:
                item["score"] = region.score
            result.append(item)
        return {
            "id": prediction_id,
            "model_version": self.model_version,
            "score": self.score,
            "result": result,
        }


def _score(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def remember(
    connection: redis.Redis,
    project: int,
    entries: Iterable[tuple[int, RememberedPrediction]],
    ttl_s: int,
    *,
    max_tasks: int = DEFAULT_MAX_TASKS,
    max_entry_bytes: int = DEFAULT_MAX_ENTRY_BYTES,
) -> int:
    """Push each ``(task id, entry)`` onto its task's list (one pipeline); returns how many were kept.

    An entry over ``max_entry_bytes`` (``PREDICTION_MEMORY_MAX_ENTRY_BYTES``) is not kept; beyond
    ``max_tasks`` tasks (``PREDICTION_MEMORY_MAX_TASKS``) the least recently predicted tasks are forgotten
    (``INDEX_KEY`` orders them).

    Raises:
        redis.exceptions.RedisError: Redis is unreachable (callers log it: the memory is best effort).
    """
    count = 0
    now = time.time()
    with connection.pipeline(transaction=False) as pipe:
        for task, entry in entries:
            text = json_codec.dumps(entry.to_json())
            if len(text) > max_entry_bytes:
                logger.info(
                    "task %s: its prediction takes %d bytes, over PREDICTION_MEMORY_MAX_ENTRY_BYTES=%d: "
                    "not remembered",
                    task,
                    len(text),
                    max_entry_bytes,
                )
                continue
            key = memory_key(project, task)
            pipe.lpush(key, text)
            pipe.ltrim(key, 0, MAX_ENTRIES - 1)
            pipe.expire(key, ttl_s)
            pipe.zadd(INDEX_KEY, {key: now})
            count += 1
        if count:
            pipe.zremrangebyscore(INDEX_KEY, "-inf", now - ttl_s)  # expired on their own
            pipe.zcard(INDEX_KEY)
            size = pipe.execute()[-1]
            if size > max_tasks:
                _forget_oldest(connection, int(size) - max_tasks)
    return count


def _forget_oldest(connection: redis.Redis, n: int) -> None:
    """Drop the ``n`` least recently predicted tasks' entries."""
    oldest: Any = connection.zpopmin(INDEX_KEY, n)
    keys = [key for key, _ in oldest]
    if keys:
        connection.delete(*keys)
        logger.debug("prediction memory full: forgot %d task(s)", len(keys))


def choose(entries: Sequence[RememberedPrediction], query: str | None) -> RememberedPrediction | None:
    """The newest entry whose query is ``query`` (``normalize_query``), else the newest; None if none."""
    if not entries:
        return None
    wanted = normalize_query(query)
    if wanted:
        for entry in entries:
            if normalize_query(entry.query) == wanted:
                return entry
    return entries[0]


def recall(
    connection: redis.Redis, project: int, task: int, query: str | None
) -> RememberedPrediction | None:
    """The remembered prediction an annotation of ``task`` most likely started from (``choose``), or None.
    One ``LRANGE``; unreadable entries are skipped (and logged).

    Raises:
        redis.exceptions.RedisError: Redis is unreachable.
    """
    raw: Any = connection.lrange(memory_key(project, task), 0, -1)
    entries = []
    for item in raw:
        try:
            entries.append(RememberedPrediction.from_json(json_codec.loads(item)))
        except ValueError as exc:
            logger.warning("task %s: skipping an unreadable remembered prediction: %s", task, exc)
    return choose(entries, query)


def recall_project(
    connection: redis.Redis, project: int, *, limit: int = DEFAULT_MAX_TASKS
) -> dict[int, RememberedPrediction]:
    """The newest remembered prediction of every task of ``project`` (at most ``limit`` tasks), by task id.
    Unreadable entries are skipped (and logged).

    Raises:
        redis.exceptions.RedisError: Redis is unreachable.
    """
    prefix = f"{KEY_PREFIX}{project}:"
    found: dict[int, RememberedPrediction] = {}
    for key in connection.scan_iter(match=f"{prefix}*", count=1000):
        name = key.decode() if isinstance(key, bytes) else str(key)
        task = name.removeprefix(prefix)
        if not task.isdigit():
            continue
        raw: Any = connection.lindex(name, 0)
        if raw is None:
            continue
        try:
            found[int(task)] = RememberedPrediction.from_json(json_codec.loads(raw))
        except ValueError as exc:
            logger.warning("task %s: skipping an unreadable remembered prediction: %s", task, exc)
        if len(found) >= limit:
            break
    return found
