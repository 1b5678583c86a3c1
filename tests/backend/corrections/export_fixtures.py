"""Stored corrections the export tests read: ellipse masks, webhook bodies, images on disk, an image source.

``populated(tmp_path)`` fills a store (the ``populated`` fixture of ``conftest.py``): annotation 1 (two
revisions, project 3), 2 (deleted), 3 (project 4, predicted, small correction), 4 (target region removed),
5 (image missing); and the images under ``tmp_path/imgs``.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import numpy as np
from PIL import Image

from backend.corrections.store import CorrectionStore
from tests.backend.webhook_fixtures import L1, L2, SCHEMA, annotation_payload, brush, project, prompt

H, W = 90, 120
YY, XX = np.mgrid[:H, :W]


def ellipse(cy: float, cx: float, ry: float, rx: float) -> np.ndarray:
    return ((YY - cy) / ry) ** 2 + ((XX - cx) / rx) ** 2 <= 1


CONTEXT = ellipse(50, 60, 35, 50)
TARGET_V1 = ellipse(45, 55, 12, 20)
TARGET_V2 = ellipse(48, 62, 14, 24)  # the updated revision of annotation 1
PRED_C = ellipse(40, 50, 15, 25)
ACC_C = ellipse(41, 51, 15, 25)  # a small correction
LONG_QUERY = "what would you use to cut the bread on this counter?"


def local_ref(name: str) -> str:
    return f"/data/local-files/?d=imgs/{name}"


def write_image(root: Path, name: str, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    base = np.stack([XX * 2, YY * 2, np.full_like(XX, 100 + seed * 30)], axis=-1).astype(np.uint8)
    noise = rng.integers(0, 8, base.shape).astype(np.uint8)
    path = root / "imgs" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(base + noise).save(path)
    return path


def payload(
    annotation_id: int, updated_at: str, result: list[dict[str, Any]], **kwargs: Any
) -> dict[str, Any]:
    body = annotation_payload(
        "ANNOTATION_CREATED", annotation_id, annotation_id, updated_at, result, **kwargs
    )
    body["task"]["data"]["image"] = local_ref(f"{annotation_id}.png")
    return body


def prediction(pred_id: int, level1: np.ndarray, level2: np.ndarray) -> dict[str, Any]:
    return {
        "id": pred_id,
        "model_version": "cores-test-2",
        "result": [brush("pc", level1, L1, 0.9), brush("pt", level2, L2, 0.7)],
    }


def file_images(
    root: Path, as_array: Collection[str] = ()
) -> Callable[[str, int | None], bytes | np.ndarray]:
    """Image source reading local-files refs from disk (bytes; arrays for refs in ``as_array``)."""

    def read(ref: str, task_id: int | None) -> bytes | np.ndarray:
        path = root / parse_qs(urlsplit(ref).query)["d"][0]
        if ref in as_array:
            return np.asarray(Image.open(path).convert("RGB"))
        return path.read_bytes()  # FileNotFoundError for the missing image

    return read


def populated(tmp_path: Path) -> CorrectionStore:
    """A store with: annotation 1 (two revisions, project 3), 2 (deleted), 3 (project 4, predicted, small
    correction), 4 (target region removed), 5 (image missing); and the images under tmp_path/imgs."""
    for i in (1, 2, 3, 4):
        write_image(tmp_path, f"{i}.png", i)
    store = CorrectionStore(tmp_path / "corrections.sqlite3")
    record = store.record_webhook
    record(
        payload(
            1,
            "2025-03-01T10:00:00Z",
            [prompt(LONG_QUERY), brush("a", CONTEXT, L1), brush("b", TARGET_V1, L2)],
        ),
        schema=SCHEMA,
    )
    updated = payload(
        1, "2025-03-01T12:00:00Z", [prompt(LONG_QUERY), brush("a", CONTEXT, L1), brush("b", TARGET_V2, L2)]
    )
    updated["action"] = "ANNOTATION_UPDATED"
    record(updated, schema=SCHEMA)
    record(
        payload(2, "2025-03-02T10:00:00Z", [prompt("the kettle"), brush("c", TARGET_V1, L2)]), schema=SCHEMA
    )
    record({"action": "ANNOTATION_DELETED", "annotation": {"id": 2}, "project": project()}, schema=SCHEMA)
    record(
        payload(
            3,
            "2025-03-03T10:00:00Z",
            [prompt("the knife"), brush("d", CONTEXT, L1), brush("e", ACC_C, L2)],
            project_id=4,
            completed_by={"id": 9, "email": "ann@example.com"},
            task_extra={"predictions": [prediction(70, CONTEXT, PRED_C)]},
            annotation_extra={"parent_prediction": 70},
        ),
        schema=SCHEMA,
        image_sha256="cd" * 32,
    )
    record(
        payload(
            4,
            "2025-03-04T10:00:00Z",
            [prompt("the bread"), brush("f", CONTEXT, L1)],
            task_extra={"predictions": [prediction(71, CONTEXT, PRED_C)]},
            annotation_extra={"parent_prediction": 71},
        ),
        schema=SCHEMA,
    )
    record(
        payload(
            5, "2025-03-05T10:00:00Z", [prompt("the cup"), brush("g", CONTEXT, L1), brush("h", ACC_C, L2)]
        ),
        schema=SCHEMA,
    )
    return store
