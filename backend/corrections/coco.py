"""Export logged corrections as COCO instance segmentation: ``annotations.json`` and the images beside it.

The records are those of the ReasonSeg export (``export.select_records``, the same skip rules:
``export.usable_records``); each record is one COCO image (``<stem>.jpg``, JPEG quality 95, the record's
query in ``query``), and each chain level with an accepted, non-empty mask is one annotation
(``iscrowd: 0``: the level's mask is one instance, whatever its number of pieces) in the category of its
label. Categories: one per (level, label) pair found, ``name`` the Label Studio label, ``supercategory``
``"level <k>"``, ids in level order.

Segmentation (``segmentation=``):

- ``rle`` (default): the accepted mask exactly, as COCO compressed RLE (``pycocotools.mask.encode``,
  ``counts`` as a string); ``area`` and ``bbox`` are pycocotools' ``area`` / ``toBbox`` of it.
- ``polygon``: the mask's polygons as the predictions write them (``backend.label_studio.formats.polygon``:
  simplified to half a pixel, holes opened by slits, components under 16 px dropped), in pixels
  ``[[x1, y1, x2, y2, ...], ...]``; ``area`` and ``bbox`` are those of the polygons as pycocotools
  rasterises them. A level whose polygons come out empty (only tiny components) is left out and counted
  (``empty_polygons``).

The output loads with ``pycocotools.coco.COCO`` and ``annToMask`` decodes each annotation.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from backend.corrections.export import (
    ExportSummary,
    ImageSource,
    new_export_folder,
    stem_of,
    usable_records,
    write_atomically,
)
from backend.corrections.records import CorrectionRecord

logger = logging.getLogger(__name__)

COCO_NAME = "annotations.json"
SEGMENTATIONS = ("rle", "polygon")
JPEG_QUALITY = 95


def _segmentation(mask: np.ndarray, kind: str) -> tuple[Any, float, list[float]] | None:
    """``(segmentation, area, bbox)`` of an HxW bool mask; None for polygons that come out empty."""
    from pycocotools import mask as coco_mask

    from backend.label_studio.formats.polygon import mask_polygons

    height, width = mask.shape
    if kind == "rle":
        rle = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
    else:
        polygons = [ring.ravel().round(3).tolist() for ring in mask_polygons(mask)]
        if not polygons:
            return None
        rle = coco_mask.merge(coco_mask.frPyObjects(polygons, height, width))
    area = float(coco_mask.area(rle))
    bbox = [float(v) for v in coco_mask.toBbox(rle)]
    if kind == "rle":
        return {"size": [height, width], "counts": rle["counts"].decode("ascii")}, area, bbox
    return polygons, area, bbox


def export_coco(
    records: Sequence[CorrectionRecord], out_dir: Path, *, images: ImageSource, segmentation: str = "rle"
) -> ExportSummary:
    """Write ``records`` as a COCO instance segmentation folder (see the module docstring).

    Args:
        records: the correction records (``export.select_records``), each annotation once.
        out_dir: destination folder; created if missing, refused if it holds files.
        images: ``(image reference, task id) ->`` image (``export.ImageSource``); a failure skips the record.
        segmentation: ``rle`` or ``polygon``.

    Returns:
        The ``ExportSummary``; its ``manifest`` is ``annotations.json``, ``skipped`` also counts
        ``empty_polygons`` (levels, not records).

    Raises:
        ExportError: ``out_dir`` exists and is not an empty folder.
        ValueError: an unknown ``segmentation``.
    """
    if segmentation not in SEGMENTATIONS:
        raise ValueError(f"expected segmentation to be one of {SEGMENTATIONS}, got {segmentation!r}")
    out_dir = new_export_folder(out_dir)
    summary = ExportSummary(out_dir=out_dir, manifest=out_dir / COCO_NAME, considered=len(records))
    skipped: Counter[str] = Counter()
    categories: dict[tuple[int, str], int] = {}
    coco_images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    pending: list[tuple[int, int, str, Any, float, list[float]]] = []
    for record, rgb, _, levels in usable_records(records, images, skipped):
        stem = stem_of(record)
        image_id = len(coco_images) + 1
        Image.fromarray(rgb).save(out_dir / f"{stem}.jpg", format="JPEG", quality=JPEG_QUALITY)
        height, width = rgb.shape[:2]
        coco_images.append(
            {
                "id": image_id,
                "file_name": f"{stem}.jpg",
                "width": width,
                "height": height,
                "query": record.query,
                "record_id": record.id,
                "task": record.task_id,
                "annotation": record.annotation_id,
            }
        )
        for level, mask in levels:
            found = _segmentation(mask, segmentation)
            if found is None:
                skipped["empty_polygons"] += 1
                continue
            categories.setdefault((level.level, level.label), 0)
            pending.append((image_id, level.level, level.label, *found))
        summary.stems.append(stem)
    ids = {key: i for i, key in enumerate(sorted(categories), start=1)}
    for image_id, level_index, label, seg, area, bbox in pending:
        annotations.append(
            {
                "id": len(annotations) + 1,
                "image_id": image_id,
                "category_id": ids[(level_index, label)],
                "segmentation": seg,
                "area": area,
                "bbox": bbox,
                "iscrowd": 0,
                "level": level_index,
            }
        )
    document = {
        "info": {
            "description": "CoReS corrections: accepted masks per chain level",
            "date_created": datetime.now(UTC).isoformat(timespec="seconds"),
            "segmentation": segmentation,
        },
        "licenses": [],
        "images": coco_images,
        "annotations": annotations,
        "categories": [
            {"id": i, "name": label, "supercategory": f"level {level}"} for (level, label), i in ids.items()
        ],
    }
    write_atomically(summary.manifest, json.dumps(document))
    summary.exported = len(coco_images)
    summary.skipped = dict(sorted(skipped.items()))
    logger.info(
        "exported %d of %d correction(s), %d annotation(s), as COCO to %s; skipped %s",
        summary.exported,
        summary.considered,
        len(annotations),
        out_dir,
        summary.skipped or "none",
    )
    return summary
