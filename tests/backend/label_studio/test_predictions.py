"""backend.label_studio.predictions: chain levels -> a Label Studio prediction in every mask control of the
config (brush, bitmask, polygon; and back)."""

from __future__ import annotations

import copy
import json
from typing import Any

import numpy as np
import pytest
from label_studio_sdk.converter.brush import decode_rle
from label_studio_sdk.label_interface import LabelInterface

from backend.label_studio.label_config import LabelConfigError, parse_label_config, shipped_label_config
from backend.label_studio.predictions import build_prediction, decode_prediction
from tests.paths import FIXTURES

CONFIGS = {
    "shipped": shipped_label_config(),
    "other_names": (FIXTURES / "label_config_other_names.xml").read_text(encoding="utf-8"),
} | {
    name: (FIXTURES / f"label_config_{name}.xml").read_text(encoding="utf-8")
    for name in ("bitmask", "polygon", "all_masks")
}
PAYLOAD_KEYS = {"rle": "<rle>", "imageDataURL": "<png>", "points": "<points>"}


def _chain() -> tuple[list[dict[str, Any]], int, int, str]:
    """The fixture chain with its masks drawn from boxes [y0, x0, y1, x1) at the image size."""
    spec = json.loads((FIXTURES / "chain_two_levels.json").read_text(encoding="utf-8"))
    width, height = spec["width"], spec["height"]
    levels = []
    for level in spec["levels"]:
        mask = np.zeros((height, width), dtype=bool)
        for y0, x0, y1, x1 in level["boxes"]:
            mask[y0:y1, x0:x1] = True
        levels.append({k: level[k] for k in ("index", "token", "score", "text")} | {"mask": mask})
    return levels, width, height, spec["model_version"]


def _skeleton(prediction: dict[str, Any]) -> dict[str, Any]:
    """The prediction with its random ids and mask payloads (RLE bytes, PNG data URLs, polygon points)
    replaced by placeholders."""
    out = copy.deepcopy(prediction)
    for item in out["result"]:
        item["id"] = "<id>"
        for key, placeholder in PAYLOAD_KEYS.items():
            if key in item["value"]:
                item["value"][key] = placeholder
    return out


@pytest.mark.parametrize("config_name", sorted(CONFIGS))
def test_prediction_matches_fixture_skeleton(config_name: str) -> None:
    levels, width, height, version = _chain()
    schema = parse_label_config(CONFIGS[config_name])
    prediction = build_prediction(levels, schema, width, height, version)
    expected = json.loads((FIXTURES / f"prediction_skeleton_{config_name}.json").read_text(encoding="utf-8"))
    assert _skeleton(prediction) == expected


@pytest.mark.parametrize("config_name", sorted(CONFIGS))
def test_prediction_is_valid_for_label_studio(config_name: str) -> None:
    levels, width, height, version = _chain()
    config = CONFIGS[config_name]
    prediction = build_prediction(levels, parse_label_config(config), width, height, version)
    assert LabelInterface(config).validate_prediction(prediction, return_errors=True) == []
    assert json.loads(json.dumps(prediction)) == prediction  # JSON-safe: plain ints, floats, strings


def test_rle_decodes_to_the_exact_masks_with_the_sdk() -> None:
    levels, width, height, version = _chain()
    prediction = build_prediction(levels, parse_label_config(shipped_label_config()), width, height, version)
    for level, item in zip(levels, prediction["result"], strict=True):
        rgba = np.asarray(decode_rle(item["value"]["rle"])).reshape(height, width, 4)
        np.testing.assert_array_equal(rgba[:, :, 3] > 0, level["mask"])
        assert set(np.unique(rgba)) <= {0, 255}


def test_ids_unique_labels_per_level_and_final_score() -> None:
    levels, width, height, version = _chain()
    prediction = build_prediction(levels, parse_label_config(CONFIGS["other_names"]), width, height, version)
    ids = [item["id"] for item in prediction["result"]]
    assert len(set(ids)) == len(ids) == 2
    assert all(isinstance(i, str) and 0 < len(i) <= 16 for i in ids)
    assert [item["value"]["brushlabels"] for item in prediction["result"]] == [["Kitchen"], ["Knife"]]
    assert prediction["score"] == levels[-1]["score"]
    assert [item["score"] for item in prediction["result"]] == [level["score"] for level in levels]


def test_ids_differ_between_predictions() -> None:
    levels, width, height, version = _chain()
    schema = parse_label_config(shipped_label_config())
    first = {item["id"] for item in build_prediction(levels, schema, width, height, version)["result"]}
    second = {item["id"] for item in build_prediction(levels, schema, width, height, version)["result"]}
    assert not first & second


def test_levels_out_of_order_are_written_in_level_order() -> None:
    levels, width, height, version = _chain()
    prediction = build_prediction(
        levels[::-1], parse_label_config(shipped_label_config()), width, height, version
    )
    assert [item["value"]["brushlabels"] for item in prediction["result"]] == [
        ["Context (level 1)"],
        ["Target (level 2)"],
    ]
    assert prediction["score"] == 0.78  # the final level's score, not the last in the input


def test_explicit_mapping_overrides_the_default() -> None:
    levels, width, height, version = _chain()
    schema = parse_label_config(CONFIGS["other_names"])
    prediction = build_prediction(levels, schema, width, height, version, mapping={1: "Spare"})
    assert [item["value"]["brushlabels"] for item in prediction["result"]] == [["Spare"], ["Knife"]]


def test_decode_prediction_round_trip_and_skips_other_types() -> None:
    levels, width, height, version = _chain()
    prediction = build_prediction(levels, parse_label_config(CONFIGS["other_names"]), width, height, version)
    prompt = {"from_name": "question", "to_name": "photo", "type": "textarea", "value": {"text": ["q"]}}
    masks = decode_prediction([prompt, *prediction["result"]])
    assert sorted(masks) == ["Kitchen", "Knife"]
    np.testing.assert_array_equal(masks["Kitchen"], levels[0]["mask"])
    np.testing.assert_array_equal(masks["Knife"], levels[1]["mask"])


def test_decode_prediction_merges_regions_with_the_same_label() -> None:
    levels, width, height, version = _chain()
    prediction = build_prediction(levels, parse_label_config(CONFIGS["other_names"]), width, height, version)
    second = copy.deepcopy(prediction["result"][1])
    second["value"]["brushlabels"] = ["Kitchen"]
    masks = decode_prediction([prediction["result"][0], second])
    np.testing.assert_array_equal(masks["Kitchen"], levels[0]["mask"] | levels[1]["mask"])


def test_empty_mask_and_empty_text() -> None:
    levels, width, height, version = _chain()
    levels[1]["mask"] = np.zeros((height, width), dtype=np.uint8)
    levels[1]["text"] = ""
    prediction = build_prediction(levels, parse_label_config(shipped_label_config()), width, height, version)
    target = prediction["result"][1]
    assert "meta" not in target
    assert not decode_prediction([target])["Target (level 2)"].any()


def test_mask_of_the_wrong_size_is_rejected() -> None:
    levels, width, height, version = _chain()
    with pytest.raises(ValueError, match=r"level 1 mask has shape \(30, 40\), expected .* \(40, 30\)"):
        build_prediction(levels, parse_label_config(shipped_label_config()), height, width, version)


def test_more_levels_than_labels_is_a_config_error() -> None:
    levels, width, height, version = _chain()
    third = dict(levels[1], index=3)
    with pytest.raises(LabelConfigError, match=r"3 levels .* only 2 labels"):
        build_prediction([*levels, third], parse_label_config(shipped_label_config()), width, height, version)


@pytest.mark.parametrize("indices", [[], [0, 1], [1, 1]])
def test_bad_level_indices(indices: list[int]) -> None:
    levels, width, height, version = _chain()
    bad = [dict(levels[0], index=i) for i in indices]
    with pytest.raises(ValueError, match="level"):
        build_prediction(bad, parse_label_config(shipped_label_config()), width, height, version)


# --- several mask controls: every one gets every level ---------------------------------------------------


def test_every_mask_control_gets_every_level_with_its_own_labels() -> None:
    levels, width, height, version = _chain()
    schema = parse_label_config(CONFIGS["all_masks"])
    prediction = build_prediction(levels, schema, width, height, version)
    got = [(item["from_name"], item["type"], item["value"][item["type"]]) for item in prediction["result"]]
    assert got == [
        ("poly", "polygonlabels", ["Room"]),
        ("poly", "polygonlabels", ["Knife"]),
        ("brush", "brushlabels", ["Context (level 1)"]),
        ("brush", "brushlabels", ["Target (level 2)"]),
        ("mask", "bitmasklabels", ["Where"]),
        ("mask", "bitmasklabels", ["What"]),
    ]
    ids = [item["id"] for item in prediction["result"]]
    assert len(set(ids)) == len(ids)
    assert [item["score"] for item in prediction["result"]] == [0.91, 0.78] * 3
    masks = decode_prediction(prediction["result"])  # brush, bitmask and polygons all decode to the level
    for labels, level in zip(
        (("Room", "Context (level 1)", "Where"), ("Knife", "Target (level 2)", "What")), levels, strict=True
    ):
        for label in labels:
            np.testing.assert_array_equal(masks[label], level["mask"], err_msg=label)


def test_a_mapping_applies_to_every_control_and_names_the_one_that_lacks_a_label() -> None:
    levels, width, height, version = _chain()
    schema = parse_label_config(CONFIGS["all_masks"])
    with pytest.raises(LabelConfigError, match=r'mapped to label "Knife", but <BrushLabels name="brush">'):
        build_prediction(levels, schema, width, height, version, mapping={2: "Knife"})


def test_polygon_regions_carry_the_levels_iou_in_their_meta() -> None:
    levels, width, height, version = _chain()
    levels[1]["mask"] = np.zeros((height, width), dtype=bool)
    levels[1]["mask"][5:25, 5:35] = True
    levels[1]["mask"][10:20, 12:28] = False  # a hole: kept by a cut
    levels[1]["mask"][0, 0] = True  # a speck under the minimum area: no polygon, and the IoU says so
    prediction = build_prediction(levels, parse_label_config(CONFIGS["polygon"]), width, height, version)
    target = [item for item in prediction["result"] if item["value"]["polygonlabels"] == ["Target (level 2)"]]
    assert len(target) == 1
    iou = target[0]["meta"]["polygon_iou"]
    expected = (20 * 30 - 10 * 16) / (20 * 30 - 10 * 16 + 1)  # every pixel but the speck
    assert iou == pytest.approx(expected, abs=1e-4)
    assert target[0]["meta"]["text"] == [f"the bread knife (polygons vs mask IoU {iou:.3f})"]


def test_an_empty_level_gets_no_polygon_but_an_empty_bitmask() -> None:
    levels, width, height, version = _chain()
    levels[1]["mask"] = np.zeros((height, width), dtype=bool)
    schema = parse_label_config(CONFIGS["all_masks"])
    prediction = build_prediction(levels, schema, width, height, version)
    kinds = [(item["type"], item["value"][item["type"]][0]) for item in prediction["result"]]
    assert ("polygonlabels", "Knife") not in kinds
    assert ("bitmasklabels", "What") in kinds
    assert not decode_prediction(prediction["result"])["What"].any()
