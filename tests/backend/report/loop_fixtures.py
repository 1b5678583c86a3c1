"""A correction log and a version store as the loop leaves them, for the report's tests: annotations on
three days whose predictions miss more or less, two published versions with held-out scores (one promoted,
one a candidate)."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from backend.corrections.store import CorrectionStore, correction_store_path
from backend.label_studio.label_config import parse_label_config, shipped_label_config
from backend.operations.settings import Settings
from backend.versions.serving import model_version, version_store
from tests.backend.fake_label_studio import data_uri
from tests.backend.webhook_fixtures import L1, L2, H, W, annotation_payload, brush, prompt, rect

DAYS = ("2025-03-01", "2025-03-02", "2025-03-03")
PER_DAY = 4


def kitchen(seed: int) -> bytes:
    """A smooth W x H PNG (a gradient with a lighter table), so the overlays read well in the screenshot."""
    ys, xs = np.mgrid[0:H, 0:W]
    image = np.stack([90 + xs * 60 // W, 80 + ys * 50 // H, np.full((H, W), 70 + 10 * (seed % 5))], axis=-1)
    image[6:36, 8:48] += 50
    buffer = io.BytesIO()
    Image.fromarray(image.clip(0, 255).astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def _scores(level1: float, level2: float, count: int = 6) -> dict[str, Any]:
    return {
        "giou": level2,
        "ciou": level2 - 0.05,
        "count": count,
        "levels": [
            {
                "level": 1,
                "giou": level1,
                "ciou": level1 - 0.02,
                "count": count,
                "mean_correction": 1 - level1,
            },
            {
                "level": 2,
                "giou": level2,
                "ciou": level2 - 0.05,
                "count": count,
                "mean_correction": 1 - level2,
            },
        ],
    }


def record_loop(settings: Settings) -> None:
    """Fill ``settings.model_dir``'s correction store and version store."""
    schema = parse_label_config(shipped_label_config())
    with CorrectionStore(correction_store_path(settings)) as store:
        for d, day in enumerate(DAYS):
            for i in range(PER_DAY):
                n = d * PER_DAY + i
                shift = (n * 3) % 17  # how far the predicted target is off
                y, x = 6, 8
                prediction = {
                    "id": 900 + n,
                    "model_version": "cores-cores",
                    "score": 0.7,
                    "result": [
                        brush(f"p1-{n}", rect(y, x, y + 30, x + 40), L1, 0.9),
                        brush(
                            f"p2-{n}",
                            rect(y + 8 + shift // 2, x + 10 + shift, y + 20, x + 24 + shift),
                            L2,
                            0.7,
                        ),
                    ],
                }
                payload = annotation_payload(
                    "ANNOTATION_CREATED",
                    700 + n,
                    80 + n,
                    f"{day}T10:00:{n:02d}Z",
                    [
                        prompt(f"the cup number {n}"),
                        brush(f"a1-{n}", rect(y, x, y + 30, x + 40 - d * 4), L1),
                        brush(f"a2-{n}", rect(y + 8, x + 10, y + 20, x + 24), L2),
                    ],
                    task_extra={
                        "data": {"image": data_uri(kitchen(n))},
                        "predictions": [prediction],
                    },
                    annotation_extra={"parent_prediction": 900 + n},
                )
                payload["annotation"]["updated_at"] = f"{day}T10:00:{n:02d}Z"
                outcome = store.record_webhook(payload, schema=schema, prediction=prediction)
                assert outcome.status == "created", outcome
    # received_at is the time of recording: spread the records over the days the report plots
    import sqlite3

    with sqlite3.connect(correction_store_path(settings)) as db:
        for d, day in enumerate(DAYS):
            for i in range(PER_DAY):
                n = d * PER_DAY + i
                db.execute(
                    "UPDATE corrections SET received_at = ? WHERE annotation_id = ?",
                    (f"{day}T12:00:{n:02d}.000000Z", 700 + n),
                )
    versions = version_store(settings)
    base = model_version(settings)
    for tag, parent, before, after, gate in (
        (
            "one",
            base,
            _scores(0.60, 0.40),
            _scores(0.62, 0.47),
            {"promoted": True, "reason": "final-level +0.07"},
        ),
        (
            "two",
            None,
            _scores(0.62, 0.47),
            _scores(0.50, 0.52),
            {"promoted": False, "reason": "level 1 drops"},
        ),
    ):
        staged = settings.model_dir / "training" / tag / "checkpoint"
        staged.mkdir(parents=True)
        (staged / "config.json").write_text("{}")
        info = {
            "parent": parent or versions.list()[-1].name,
            "metrics": {"before": before, "after": after},
            "gate": gate,
        }
        versions.publish(staged, info, refused=None if gate["promoted"] else gate["reason"])


def version_json(settings: Settings) -> list[dict[str, Any]]:
    """Every published version's ``version.json``, oldest first."""
    root = settings.model_dir / "versions"
    found = [json.loads(p.read_text()) for p in sorted(Path(root).glob("v*/version.json"))]
    return sorted(found, key=lambda info: info["created_at"])
