"""Smart keypoints and rectangles in an interactive context: levels from labels, signs, bad input."""

from __future__ import annotations

from pathlib import Path

import pytest

from backend.label_studio.interactive_prompts import MAX_CLICKS, click_level, interactive_prompts
from backend.label_studio.label_config import parse_label_config
from backend.label_studio.task_errors import TaskError

REFINE_CONFIG = (Path(__file__).parents[3] / "backend" / "label_config_refine.xml").read_text()
SCHEMA = parse_label_config(REFINE_CONFIG)


def keypoint(x: float, y: float, label: str = "Target (level 2)", positive: bool | None = True) -> dict:
    item = {
        "from_name": "click",
        "to_name": "image",
        "type": "keypointlabels",
        "original_width": 64,
        "original_height": 48,
        "value": {"x": x, "y": y, "width": 0.5, "keypointlabels": [label]},
    }
    if positive is not None:
        item["is_positive"] = positive
    return item


def box(x: float, y: float, w: float, h: float, label: str = "Context (level 1)") -> dict:
    return {
        "from_name": "box",
        "to_name": "image",
        "type": "rectanglelabels",
        "value": {"x": x, "y": y, "width": w, "height": h, "rotation": 0, "rectanglelabels": [label]},
    }


def test_the_shipped_refine_config_parses_and_keeps_its_brush_levels():
    assert SCHEMA.prompt_from_name == "prompt"
    assert SCHEMA.labels == ("Context (level 1)", "Target (level 2)")


@pytest.mark.parametrize(
    ("label", "level"),
    [
        ("Target (level 2)", 2),
        ("context (LEVEL 1)", 1),
        ("level3", 3),
        ("Context (level 1)", 1),
        ("Object", None),
        (None, None),
    ],
)
def test_a_label_names_the_level(label, level):
    assert click_level(label, SCHEMA) == level


def test_a_brush_label_without_a_level_number_maps_by_position():
    schema = parse_label_config(
        REFINE_CONFIG.replace("Context (level 1)", "Kitchen").replace("Target (level 2)", "Knife")
    )
    assert click_level("Kitchen", schema) == 1
    assert click_level("Knife", schema) == 2


def test_points_and_boxes_are_grouped_per_level_with_their_signs():
    context = {
        "result": [
            {"from_name": "prompt", "to_name": "image", "type": "textarea", "value": {"text": ["q"]}},
            keypoint(10, 20),
            keypoint(30, 40, positive=False),
            keypoint(50, 60, positive=None),  # Label Studio omits is_positive: positive
            box(5, 5, 50, 30),
            keypoint(1, 2, label="Object"),
            {**keypoint(9, 9), "to_name": "other-image"},  # not on the schema's image: ignored
        ]
    }
    prompts = interactive_prompts(context, SCHEMA)
    by_level = {p["level"]: p for p in prompts}
    assert by_level[2]["points"] == [[10.0, 20.0, 1], [30.0, 40.0, 0], [50.0, 60.0, 1]]
    assert by_level[1] == {"level": 1, "points": [], "boxes": [[5.0, 5.0, 50.0, 30.0]]}
    assert by_level[None]["points"] == [[1.0, 2.0, 1]]  # the final level
    assert interactive_prompts({"result": [context["result"][0]]}, SCHEMA) == []
    assert interactive_prompts(None, SCHEMA) == []


@pytest.mark.parametrize(
    ("item", "message"),
    [
        (keypoint(float("nan"), 3), "finite"),
        (keypoint("12", 3), "finite"),
        (keypoint(150, 3), "outside"),
        ({**box(1, 1, 5, 5), "value": {**box(1, 1, 5, 5)["value"], "rotation": 30}}, "rotated"),
    ],
)
def test_bad_coordinates_are_a_task_error(item, message):
    with pytest.raises(TaskError, match=message) as caught:
        interactive_prompts({"result": [item]}, SCHEMA)
    assert caught.value.code == "bad_prompt"


def test_too_many_clicks_are_refused():
    with pytest.raises(TaskError, match="more than"):
        interactive_prompts({"result": [keypoint(1, 1)] * (MAX_CLICKS + 1)}, SCHEMA)


def test_a_box_past_the_edge_is_clipped():
    [prompt] = interactive_prompts({"result": [box(90, 95, 20, 20)]}, SCHEMA)
    assert prompt["boxes"] == [[90.0, 95.0, 10.0, 5.0]]
