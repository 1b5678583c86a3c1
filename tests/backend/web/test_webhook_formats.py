"""Polygon and bitmask annotations reach the correction log through POST /webhook, with Label Studio 1.23's
real body shape (no prediction in the payload; the workers' prediction memory supplies it).

For each mask config (PolygonLabels only, BitmaskLabels only, all three tags): the real worker on the tiny
model predicts interactively in that config, the annotator keeps the regions (IoU 1 per level, OR-ed across
tags) or draws their own (a polygon and an anti-aliased RGBA bitmask as the editor draws them: accepted
masks checked pixel for pixel); bad bitmasks are a 400 that records nothing.
"""

from __future__ import annotations

import base64
import io
from typing import Any

import numpy as np
import pytest
from flask.testing import FlaskClient
from PIL import Image
from rq import SimpleWorker

from backend.corrections.store import CorrectionStore
from backend.label_studio.predictions import decode_prediction
from backend.operations.settings import Settings
from tests.backend.conftest import run_with_worker
from tests.backend.fake_label_studio import data_uri, png_bytes
from tests.backend.payloads import predict_body
from tests.backend.webhook_fixtures import annotation_webhook
from tests.paths import FIXTURES

CONFIGS = {
    name: (FIXTURES / f"label_config_{name}.xml").read_text() for name in ("polygon", "bitmask", "all_masks")
}
QUERY = "the knife on the counter"
SINGLE = (("Context (level 1)",), ("Target (level 2)",))
LEVEL_LABELS = {
    "polygon": SINGLE,
    "bitmask": SINGLE,
    "all_masks": (("Room", "Context (level 1)", "Where"), ("Knife", "Target (level 2)", "What")),
}
W, H = 40, 30


def webhook(config: str, task: int, annotation: int, regions: list[dict[str, Any]]) -> dict[str, Any]:
    return annotation_webhook(1, task, {"image": "x"}, regions, QUERY, annotation, config)


def predicted(worker: SimpleWorker, client: FlaskClient, config: str, task: int) -> dict[str, Any]:
    data = {"image": data_uri(png_bytes(W, H, seed=task))}
    body = predict_body([(task, data)], config=config, prompt=QUERY)
    response = run_with_worker(worker, lambda: client.post("/predict", json=body))
    assert response.status_code == 200, response.get_json()
    result: dict[str, Any] = response.get_json()["results"][0]
    assert result["result"], result
    return result


def accepted_as_is(regions: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The suggestions as Label Studio saves them once accepted: origin manual, score kept."""
    return [dict(region, origin="manual") for region in regions]


def stored(settings: Settings, annotation: int) -> Any:
    with CorrectionStore(settings.model_dir / "corrections.sqlite3") as store:
        (record,) = [r for r in store.list() if r.annotation_id == annotation]
        return record


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_kept_suggestions_of_each_tag_are_recorded_with_iou_one(
    name: str, worker: SimpleWorker, client: FlaskClient, settings: Settings
) -> None:
    prediction = predicted(worker, client, CONFIGS[name], task=31)
    types = {region["type"] for region in prediction["result"]}
    assert types == {"polygon": {"polygonlabels"}, "bitmask": {"bitmasklabels"}}.get(
        name, {"polygonlabels", "brushlabels", "bitmasklabels"}
    )
    response = client.post(
        "/webhook", json=webhook(CONFIGS[name], 31, 501, accepted_as_is(prediction["result"]))
    )
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["status"] == "created"
    record = stored(settings, 501)
    assert record.query == QUERY
    assert record.model_version == prediction["model_version"]
    assert [lvl.level for lvl in record.levels] == [1, 2]
    assert all(lvl.iou == 1.0 for lvl in record.levels)  # the annotator changed nothing
    masks = decode_prediction(prediction["result"])
    for lvl, labels in zip(record.levels, LEVEL_LABELS[name], strict=True):
        # the accepted mask of a level is every region of it, OR-ed across tags
        np.testing.assert_array_equal(
            lvl.accepted_mask(), np.logical_or.reduce([masks[x] for x in labels if x in masks])
        )


def _rgba_stroke() -> str:
    """A bitmask as the editor draws it: RGBA, RGB 0, alpha 255 inside, a soft edge of alpha 60."""
    rgba = np.zeros((H, W, 4), dtype=np.uint8)
    rgba[5:20, 8:30, 3] = 255
    rgba[20, 8:30, 3] = 60
    buffer = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _region(kind: str, name: str, label: str, value: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": f"drawn-{kind}",
        "from_name": name,
        "to_name": "image",
        "type": kind,
        "original_width": W,
        "original_height": H,
        "image_rotation": 0,
        "value": value | {kind: [label]},
        "origin": "manual",
    }


def test_drawn_polygons_and_bitmasks_are_rasterised_exactly_and_or_ed_across_tags(
    worker: SimpleWorker, client: FlaskClient, settings: Settings
) -> None:
    prediction = predicted(worker, client, CONFIGS["all_masks"], task=32)
    square = [[25.0, 20.0], [75.0, 20.0], [75.0, 80.0], [25.0, 80.0]]  # pixel edges: cols 10-29, rows 6-23
    regions = [
        _region("polygonlabels", "poly", "Knife", {"points": square, "closed": True}),
        _region("bitmasklabels", "mask", "What", {"imageDataURL": _rgba_stroke()}),
        _region("bitmasklabels", "mask", "Where", {"imageDataURL": _rgba_stroke()}),
    ]
    response = client.post("/webhook", json=webhook(CONFIGS["all_masks"], 32, 502, regions))
    assert response.status_code == 200, response.get_json()
    record = stored(settings, 502)
    level1, level2 = record.levels
    stroke = np.zeros((H, W), dtype=bool)
    stroke[5:21, 8:30] = True  # alpha >= 1 is the mask, the soft edge included
    square_mask = np.zeros((H, W), dtype=bool)
    square_mask[6:24, 10:30] = True
    np.testing.assert_array_equal(level1.accepted_mask(), stroke)
    np.testing.assert_array_equal(level2.accepted_mask(), stroke | square_mask)
    masks = decode_prediction(prediction["result"])
    predicted_2 = masks["Knife"] | masks["Target (level 2)"] | masks["What"]
    union = (predicted_2 | stroke | square_mask).sum()
    expected = (predicted_2 & (stroke | square_mask)).sum() / union if union else 1.0
    assert level2.iou == pytest.approx(expected)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("data:image/jpeg;base64,/9j/4AAQ", "start with 'data:image/png;base64,'"),
        ("data:image/png;base64," + "A" * 200_000, "more than an uncompressed 40x30 RGBA PNG"),
    ],
)
def test_a_bad_bitmask_is_a_400_and_records_nothing(
    url: str, expected: str, client: FlaskClient, settings: Settings
) -> None:
    regions = [_region("bitmasklabels", "mask", "Target (level 2)", {"imageDataURL": url})]
    response = client.post("/webhook", json=webhook(CONFIGS["bitmask"], 33, 503, regions))
    assert response.status_code == 400
    assert expected in response.get_json()["error"]["message"]
    with CorrectionStore(settings.model_dir / "corrections.sqlite3") as store:
        assert store.list() == []
