"""Export logged corrections as training data: a ReasonSeg folder plus a ``manifest.jsonl``.

For every annotation (its newest non-deleted revision inside the filters) whose final chain level has an
accepted, non-empty mask, the export writes

- ``<stem>.jpg`` and ``<stem>.json`` in ReasonSeg layout (``cores.evaluation.reasonseg.write_sample``),
  readable by ``cores.evaluation.reasonseg.iter_samples`` and ``python -m cores eval``: ``text`` = [query],
  ``is_sentence`` by the ``cores.modeling.prompts.looks_like_sentence`` rule, ``shapes`` = the final level's
  accepted mask as LabelMe polygons labelled ``target``. The json also holds ``levels``:
  ``[{"level": 1, "token": "[SEG_SEMA]", "label": <Label Studio label>, "shapes": [...]}, ...]``, one entry
  per level with an accepted mask, so a fine-tuner can supervise every level of the chain; and ``source``
  (record, annotation and revision ids);
- one line of ``manifest.jsonl``: record id, project, task, annotation, revision, annotator, model version,
  prediction id, query, image reference and sha256, and per level ``{level, label, token, rle, height,
  width, predicted_iou, predicted_score}`` with the accepted mask as Label Studio brush RLE.

The stem is ``p<project>_t<task>_a<annotation>``. Records are skipped (and counted by reason in the
summary) when they have no query, no image reference, no accepted final-level mask, an image that cannot be
fetched, or an image whose size differs from the masks'.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from PIL import Image, UnidentifiedImageError

from backend.corrections.store import CorrectionRecord, CorrectionStore, LevelCorrection
from cores.evaluation.reasonseg import mask_to_polygons, write_sample
from cores.inference.images import to_rgb, upright
from cores.modeling.prompts import looks_like_sentence

logger = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.jsonl"
TARGET_LABEL = "target"
FINAL_TOKEN = "[SEG]"
"""Chain token of the final level (the target); mirrors ``cores.modeling.config.CORES_CHAIN[-1]``."""
CONTEXT_TOKEN = "[SEG_SEMA]"
"""Chain token of level 1 in a two-level CoReS chain; mirrors ``cores.modeling.config.CORES_CHAIN[0]``.
(``cores.modeling.config`` imports transformers, which the web process must not load.)"""


class ExportError(ValueError):
    """An export that cannot start (e.g. a non-empty output folder); the message says what to do."""


class _HasArray(Protocol):
    """What ``backend.images.fetcher.FetchedImage`` offers: the decoded image and the hash of its bytes."""

    @property
    def array(self) -> np.ndarray: ...

    @property
    def sha256(self) -> str: ...


ImageSource = Callable[[str, "int | None"], "bytes | np.ndarray | _HasArray"]
"""``(image reference, task id) ->`` the image it names: encoded bytes, an HxWx3 uint8 RGB array, or a
``backend.images.fetcher.FetchedImage`` (``ImageFetcher.fetch(ref, task_id=...)``: the task id presigns
cloud URIs through Label Studio)."""


@dataclass
class ExportSummary:
    """What ``export_corrections`` wrote.

    Attributes:
        out_dir: the ReasonSeg folder.
        manifest: path of ``manifest.jsonl``.
        considered: records that passed the filters (newest non-deleted revision per annotation).
        exported: samples written (= manifest lines).
        skipped: records not exported, by reason (``no_query``, ``no_image_ref``, ``no_target``,
            ``image_error``, ``size_mismatch``).
        stems: the written samples' stems, in manifest order.
    """

    out_dir: Path
    manifest: Path
    considered: int = 0
    exported: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    stems: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """JSON-safe form, for the CLI."""
        return {
            "out_dir": str(self.out_dir),
            "manifest": str(self.manifest),
            "considered": self.considered,
            "exported": self.exported,
            "skipped": dict(self.skipped),
        }


def chain_token(level: int, final_level: int) -> str | None:
    """The chain token that produces ``level`` in a chain ending at ``final_level``.

    The final level is ``[SEG]``; level 1 of a two-level chain is ``[SEG_SEMA]``. Other levels of longer
    chains have no released token: None.
    """
    if level == final_level:
        return FINAL_TOKEN
    if final_level == 2 and level == 1:
        return CONTEXT_TOKEN
    return None


def _to_rgb(image: Any, ref: str) -> tuple[np.ndarray, str | None]:
    """Whatever the image source returned -> (HxWx3 uint8 RGB, sha256 of the bytes if known).

    Raises:
        ValueError: bytes that are not an image, or an array that is not HxW, HxWx3 or HxWx4 uint8.
    """
    sha = getattr(image, "sha256", None)
    if hasattr(image, "array"):
        image = image.array
    if isinstance(image, bytes | bytearray | memoryview):
        raw = bytes(image)
        try:
            with Image.open(io.BytesIO(raw)) as im:
                rgb = to_rgb(upright(im))
        except (OSError, UnidentifiedImageError, ValueError) as exc:
            raise ValueError(f"{ref}: the bytes are not a readable image ({exc})") from exc
        return rgb, hashlib.sha256(raw).hexdigest()
    array = np.asarray(image)
    if array.dtype != np.uint8 or array.ndim not in (2, 3):
        raise ValueError(f"{ref}: expected an HxW or HxWxC uint8 image, got {array.shape} {array.dtype}")
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    elif array.shape[2] in (3, 4):
        array = array[:, :, :3]
    else:
        raise ValueError(f"{ref}: expected 3 (RGB) or 4 (RGBA) channels, got {array.shape[2]}")
    return np.ascontiguousarray(array), sha if isinstance(sha, str) else None


def _shapes(mask: np.ndarray) -> list[dict[str, Any]]:
    """LabelMe polygons of a mask, in the form ``write_sample`` writes."""
    return [
        {"label": TARGET_LABEL, "points": points, "group_id": None, "shape_type": "polygon", "flags": {}}
        for points in mask_to_polygons(mask)
    ]


def stem_of(record: CorrectionRecord) -> str:
    """The file stem of a record's sample: ``p<project>_t<task>_a<annotation>``."""
    project = "NA" if record.project_id is None else str(record.project_id)
    return f"p{project}_t{record.task_id}_a{record.annotation_id}"


def _accepted_levels(record: CorrectionRecord) -> list[tuple[LevelCorrection, np.ndarray]]:
    """The record's levels with a non-empty accepted mask, decoded, in level order."""
    result = []
    for level in record.levels:
        mask = level.accepted_mask()
        if mask is not None and mask.any():
            result.append((level, mask))
    return result


def _manifest_line(
    record: CorrectionRecord, stem: str, sha256: str | None, levels: list[tuple[LevelCorrection, np.ndarray]]
) -> dict[str, Any]:
    final = record.final_level or 0
    return {
        "stem": stem,
        "record_id": record.id,
        "project": record.project_id,
        "task": record.task_id,
        "annotation": record.annotation_id,
        "revision": record.revision,
        "annotator": record.annotator,
        "model_version": record.model_version,
        "prediction_id": record.prediction_id,
        "query": record.query,
        "image": {"ref": record.image_ref, "sha256": sha256},
        "levels": [
            {
                "level": level.level,
                "label": level.label,
                "token": chain_token(level.level, final),
                "rle": level.accepted_rle(),
                "height": level.height,
                "width": level.width,
                "predicted_iou": level.iou,
                "predicted_score": level.predicted_score,
            }
            for level, _ in levels
        ],
    }


def export_corrections(
    store: CorrectionStore,
    out_dir: Path,
    *,
    images: ImageSource,
    project: int | None = None,
    since: datetime | str | None = None,
    until: datetime | str | None = None,
    min_correction: float | None = None,
) -> ExportSummary:
    """Write the newest non-deleted revision of each matching annotation as ReasonSeg training data:
    ``export_records(select_records(store, ...), out_dir, images=images)``.

    Args:
        store: the correction log.
        out_dir, images: as in ``export_records``.
        project, since, until, min_correction: as in ``select_records``.

    Raises:
        ExportError: ``out_dir`` exists and is not an empty folder.
    """
    records = select_records(store, project=project, since=since, until=until, min_correction=min_correction)
    return export_records(records, out_dir, images=images)


def select_records(
    store: CorrectionStore,
    *,
    project: int | None = None,
    since: datetime | str | None = None,
    until: datetime | str | None = None,
    min_correction: float | None = None,
) -> list[CorrectionRecord]:
    """The records an export takes: the newest non-deleted revision of each matching annotation.

    Args:
        project, since, until: as in ``CorrectionStore.list`` (revision time window, ``until`` exclusive).
        min_correction: only annotations whose final level changed at least this much,
            ``1 - IoU(predicted, accepted) >= min_correction`` (no prediction counts as 1.0), judged on the
            newest revision in the window.
    """
    return store.list(
        project=project, since=since, until=until, min_correction=min_correction, latest_only=True
    )


def write_atomically(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file beside it: readers see the old file or the whole
    new one."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def new_export_folder(out_dir: Path) -> Path:
    """``out_dir``, created; refused when it exists and holds files.

    Raises:
        ExportError: ``out_dir`` exists and is not an empty folder.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise ExportError(f"{out_dir}: the export folder must be new or empty; choose another --out")
    out_dir.mkdir(parents=True, exist_ok=True)
    return out_dir


UsableRecord = tuple[CorrectionRecord, np.ndarray, "str | None", list[tuple[LevelCorrection, np.ndarray]]]
"""``(record, HxWx3 RGB image, sha256 of the fetched bytes or None, accepted levels with their masks)``."""


def usable_records(
    records: Sequence[CorrectionRecord], images: ImageSource, skipped: Counter[str]
) -> Iterator[UsableRecord]:
    """The records an export writes, with their image and accepted masks; the others are counted in
    ``skipped`` by reason (``no_query``, ``no_image_ref``, ``no_target``, ``image_error``,
    ``size_mismatch``) and logged. Shared by the ReasonSeg and the COCO export."""
    for record in records:
        levels = _accepted_levels(record)
        final = levels[-1] if levels else None
        if not record.query:
            skipped["no_query"] += 1
            continue
        if not record.image_ref:
            skipped["no_image_ref"] += 1
            continue
        if final is None or final[0].level != record.final_level:
            logger.info("record %d: no accepted mask for the final level %s", record.id, record.final_level)
            skipped["no_target"] += 1
            continue
        try:
            rgb, fetched_sha = _to_rgb(images(record.image_ref, record.task_id), record.image_ref)
        except Exception as exc:  # the image source is the caller's: any failure skips this record only
            logger.warning("record %d: cannot get image %s: %s", record.id, record.image_ref, exc)
            skipped["image_error"] += 1
            continue
        if rgb.shape[:2] != final[1].shape:
            logger.warning(
                "record %d: image %s is %dx%d but the masks are %dx%d; skipped",
                record.id,
                record.image_ref,
                rgb.shape[0],
                rgb.shape[1],
                *final[1].shape,
            )
            skipped["size_mismatch"] += 1
            continue
        yield record, rgb, fetched_sha, levels


def export_records(
    records: Sequence[CorrectionRecord], out_dir: Path, *, images: ImageSource
) -> ExportSummary:
    """Write ``records`` (see ``select_records``) as ReasonSeg training data plus ``manifest.jsonl``.

    Args:
        records: the correction records to export, each annotation once.
        out_dir: destination folder; created if missing, refused if it holds files.
        images: ``(image reference, task id) ->`` image; see ``ImageSource``. Exceptions it raises skip
            that record (``image_error``) and are logged; the export goes on.

    Returns:
        The ``ExportSummary``.

    Raises:
        ExportError: ``out_dir`` exists and is not an empty folder.
    """
    out_dir = new_export_folder(out_dir)
    summary = ExportSummary(out_dir=out_dir, manifest=out_dir / MANIFEST_NAME, considered=len(records))
    skipped: Counter[str] = Counter()
    lines: list[str] = []
    for record, rgb, fetched_sha, levels in usable_records(records, images, skipped):
        level, target = levels[-1]
        query = str(record.query)  # usable_records checked it
        stem = stem_of(record)
        sample = write_sample(
            out_dir, stem, rgb, [query], looks_like_sentence(query), [(TARGET_LABEL, target)]
        )
        anno = json.loads(sample.json_path.read_text(encoding="utf-8"))
        anno["levels"] = [
            {
                "level": lvl.level,
                "token": chain_token(lvl.level, level.level),
                "label": lvl.label,
                "shapes": _shapes(mask),
            }
            for lvl, mask in levels
        ]
        anno["source"] = {
            "record_id": record.id,
            "annotation": record.annotation_id,
            "revision": record.revision,
            "model_version": record.model_version,
        }
        sample.json_path.write_text(json.dumps(anno, indent=1), encoding="utf-8")
        sha256 = record.image_sha256 or fetched_sha
        lines.append(json.dumps(_manifest_line(record, stem, sha256, levels)))
        summary.stems.append(stem)
    write_atomically(summary.manifest, "".join(line + "\n" for line in lines))
    summary.exported = len(lines)
    summary.skipped = dict(sorted(skipped.items()))
    logger.info(
        "exported %d of %d correction(s) to %s; skipped %s",
        summary.exported,
        summary.considered,
        out_dir,
        summary.skipped or "none",
    )
    return summary
