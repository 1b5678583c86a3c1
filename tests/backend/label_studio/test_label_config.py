"""backend.label_studio.label_config: finding the image/brush/prompt tags and mapping chain levels to
labels."""

from __future__ import annotations

import pytest
from label_studio_sdk.label_interface import LabelInterface

from backend.label_studio.label_config import (
    LabelConfigError,
    MaskControl,
    SegmentationSchema,
    level_labels,
    parse_label_config,
    shipped_label_config,
)
from backend.operations.level_labels import LevelMappingError, parse_level_mapping
from tests.paths import FIXTURES, REPO_ROOT

BRUSH_A = '<BrushLabels name="b" toName="im"><Label value="A"/></BrushLabels>'


def _config(body: str) -> str:
    return f"<View>{body}</View>"


# --- the shipped config -------------------------------------------------------------------------------


def test_shipped_config_is_valid_for_label_studio() -> None:
    interface = LabelInterface(shipped_label_config())
    interface.validate()  # raises on schema errors, unknown toName, duplicate names
    assert {c.tag for c in interface.controls} == {"TextArea", "BrushLabels"}


def test_shipped_config_parses_to_one_label_per_level() -> None:
    schema = parse_label_config(shipped_label_config())
    assert schema == SegmentationSchema(
        image_name="image",
        image_field="image",
        controls=(MaskControl("brushlabels", "tag", ("Context (level 1)", "Target (level 2)")),),
        prompt_from_name="prompt",
        query_field=None,
    )
    assert level_labels(schema.controls[0], 2) == ["Context (level 1)", "Target (level 2)"]


def test_shipped_config_prompt_attributes() -> None:
    prompt = LabelInterface(shipped_label_config()).get_control("prompt")
    assert prompt.tag == "TextArea"
    assert prompt.to_name == ["image"]
    assert prompt.attr["showSubmitButton"] == "true"
    assert prompt.attr["editable"] == "true"
    assert prompt.attr["perRegion"] == "false"


def test_shipped_config_file_is_the_package_resource() -> None:
    path = REPO_ROOT / "backend" / "label_config.xml"
    assert shipped_label_config() == path.read_text(encoding="utf-8")


# --- other configs ------------------------------------------------------------------------------------


def test_arbitrary_tag_names_and_extra_tags() -> None:
    config = (FIXTURES / "label_config_other_names.xml").read_text(encoding="utf-8")
    schema = parse_label_config(config)
    assert schema.image_name == "photo"
    assert schema.image_field == "img_url"
    assert [(c.type, c.name) for c in schema.controls] == [("brushlabels", "masks")]
    assert schema.labels == ("Kitchen", "Knife", "Spare")  # document order, nested <View> included
    assert schema.prompt_from_name == "question"
    assert schema.query_field == "query"


def test_config_without_prompt() -> None:
    schema = parse_label_config(_config('<Image name="im" value="$pic"/>' + BRUSH_A))
    assert schema.prompt_from_name is None
    assert schema.query_field is None
    assert schema.labels == ("A",)


def test_textarea_on_another_object_is_not_the_prompt() -> None:
    schema = parse_label_config(
        _config(
            '<Image name="im" value="$pic"/><Text name="t" value="$text"/>'
            '<TextArea name="notes" toName="t" value="$query"/>'
            '<BrushLabels name="b" toName="im"><Label value="A"/></BrushLabels>'
        )
    )
    assert schema.prompt_from_name is None
    assert schema.query_field is None


def test_textarea_with_literal_value_has_no_query_field() -> None:
    schema = parse_label_config(
        _config(
            '<Image name="im" value="$pic"/><TextArea name="p" toName="im" value="segment the dog"/>'
            '<BrushLabels name="b" toName="im"><Label value="A"/></BrushLabels>'
        )
    )
    assert schema.prompt_from_name == "p"
    assert schema.query_field is None


def test_brush_picks_the_image_it_is_tied_to() -> None:
    schema = parse_label_config(
        _config(
            '<Image name="first" value="$a"/><Image name="second" value="$b"/>'
            '<BrushLabels name="b" toName="second"><Label value="A"/><Label value="B"/></BrushLabels>'
        )
    )
    assert (schema.image_name, schema.image_field) == ("second", "b")


def test_label_alias_is_the_result_value() -> None:
    schema = parse_label_config(
        _config(
            '<Image name="im" value="$pic"/><BrushLabels name="b" toName="im">'
            '<Label value="Where it usually is" alias="context"/><Label value="Target"/></BrushLabels>'
        )
    )
    assert schema.labels == ("context", "Target")


def test_xml_declaration_is_accepted() -> None:
    config = '<?xml version="1.0" encoding="UTF-8"?>\n' + shipped_label_config()
    assert parse_label_config(config).controls[0].name == "tag"


# --- errors -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        pytest.param(
            _config('<Text name="t" value="$text"/>' + BRUSH_A.replace('toName="im"', 'toName="t"')),
            r"expected an <Image> tag.*found <Text>",
            id="no-image",
        ),
        pytest.param(
            _config(
                '<Image name="im" value="$pic"/><RectangleLabels name="r" toName="im"><Label value="A"/>'
                "</RectangleLabels>"
            ),
            r"expected a <BrushLabels>, <BitmaskLabels> or <PolygonLabels> tag with toName set to an "
            r"<Image> \(im\), found none",
            id="no-brushlabels",
        ),
        pytest.param(
            _config(
                '<Image name="im" value="$pic"/><Text name="t" value="$text"/>'
                '<BrushLabels name="b" toName="t"><Label value="A"/></BrushLabels>'
            ),
            r'toName set to an <Image> \(im\), found <BrushLabels name="b" toName="t">',
            id="brushlabels-on-another-object",
        ),
        pytest.param(
            _config('<Image name="im" value="$pic"/><BrushLabels name="b" toName="im"></BrushLabels>'),
            r'<BrushLabels name="b"> to hold at least one <Label',
            id="no-labels",
        ),
        pytest.param(
            _config(
                '<Image name="im" value="http://x/y.png"/><BrushLabels name="b" toName="im">'
                '<Label value="A"/></BrushLabels>'
            ),
            r'value to name a task data field like "\$image", found value="http://x/y.png"',
            id="image-without-field",
        ),
        pytest.param(
            _config(
                '<Image name="im" valueList="$pics"/><BrushLabels name="b" toName="im">'
                '<Label value="A"/></BrushLabels>'
            ),
            r"multi-image",
            id="image-value-list",
        ),
        pytest.param(
            "<View><Image name='im' value='$pic'></View>", r"well-formed.*syntax error", id="malformed"
        ),
        pytest.param("", r"got an empty string", id="empty"),
        pytest.param(
            "<Root><Image name='im' value='$pic'/></Root>", r"root tag <View>, found <Root>", id="root"
        ),
        pytest.param(
            '<!DOCTYPE View [<!ENTITY x "boom">]><View><Header value="&x;"/></View>',
            r"DOCTYPE",
            id="doctype",
        ),
    ],
)
def test_unusable_configs_raise_clear_errors(config: str, expected: str) -> None:
    with pytest.raises(LabelConfigError, match=expected):
        parse_label_config(config)


def test_non_string_config_is_rejected() -> None:
    with pytest.raises(LabelConfigError, match="XML string, got bytes"):
        parse_label_config(b"<View/>")  # type: ignore[arg-type]


def test_label_config_error_is_a_value_error() -> None:
    assert issubclass(LabelConfigError, ValueError)


# --- level mapping ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1=Context,2=Target", {1: "Context", 2: "Target"}),
        (" 2 = Target (level 2) , 1=Context (level 1), ", {2: "Target (level 2)", 1: "Context (level 1)"}),
        ("1=a=b", {1: "a=b"}),
        ('{"1": "Room, kitchen", "2": "Knife"}', {1: "Room, kitchen", 2: "Knife"}),
        ("", {}),
        ("   ", {}),
        (None, {}),
    ],
)
def test_parse_level_mapping(text: str | None, expected: dict[int, str]) -> None:
    assert parse_level_mapping(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1:Context", r'items like "1=Context", found "1:Context"'),
        ("0=Context", r'integer >= 1, found "0"'),
        ("one=Context", r'integer >= 1, found "one"'),
        ("1=", r"non-empty label for level 1"),
        ("1=A,1=B", r"level 1 twice"),
        ('{"1": 5}', r"non-empty label for level 1"),
        ("{not json", r"invalid JSON"),
    ],
)
def test_parse_level_mapping_errors(text: str, expected: str) -> None:
    with pytest.raises(LevelMappingError, match=expected):
        parse_level_mapping(text)


SCHEMA = MaskControl("brushlabels", "b", ("Room", "Knife", "Spare"))


def test_level_labels_default_is_kth_label() -> None:
    assert level_labels(SCHEMA, 1) == ["Room"]
    assert level_labels(SCHEMA, 3) == ["Room", "Knife", "Spare"]


def test_level_labels_too_few_labels_names_both_counts() -> None:
    with pytest.raises(LabelConfigError, match=r"the chain has 4 levels .* has only 3 labels"):
        level_labels(SCHEMA, 4)


def test_level_labels_mapping_overrides_and_falls_back() -> None:
    assert level_labels(SCHEMA, 2, {1: "Spare", 2: "Room"}) == ["Spare", "Room"]
    assert level_labels(SCHEMA, 2, {2: "Spare"}) == ["Room", "Spare"]
    assert level_labels(SCHEMA, 4, {4: "Knife"}) == ["Room", "Knife", "Spare", "Knife"]
    assert level_labels(SCHEMA, 1, {1: "Knife", 5: "Room"}) == ["Knife"]  # unused levels are ignored


def test_level_labels_mapping_to_unknown_label() -> None:
    with pytest.raises(
        LabelConfigError, match=r'level 2 is mapped to label "Target".*\[.Room., .Knife., .Spare.\]'
    ):
        level_labels(SCHEMA, 2, parse_level_mapping("1=Room,2=Target"))


def test_level_labels_needs_a_level() -> None:
    with pytest.raises(LabelConfigError, match="at least one chain level"):
        level_labels(SCHEMA, 0)


def test_the_schema_cache_is_bounded_by_config_bytes() -> None:
    from backend.label_studio.label_config import SchemaCache

    def config(n: int, padding: int) -> str:
        return (
            f'<View><!-- {"x" * padding} --><Image name="image" value="$image"/>'
            f'<BrushLabels name="tag{n}" toName="image"><Label value="L"/></BrushLabels></View>'
        )

    cache = SchemaCache(max_bytes=10_000)
    configs = [config(n, 3_000) for n in range(10)]
    for text in configs:
        assert cache.get(text).controls[0].name.startswith("tag")
    assert cache.size_bytes <= 10_000
    assert len(cache) == 3  # the newest three fit, the older ones were evicted
    huge = config(99, 20_000)
    assert cache.get(huge).controls[0].name == "tag99"  # parsed, but bigger than the bound: not kept
    assert len(cache) == 3
    assert cache.size_bytes <= 10_000


def test_a_config_with_a_lone_surrogate_is_a_config_error() -> None:
    from backend.label_studio.label_config import LabelConfigError, parse_label_config

    with pytest.raises(LabelConfigError, match="lone surrogate"):
        parse_label_config('<View><Image name="i\ud800" value="$image"/></View>')


# --- bitmask and polygon controls ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("bitmask", [("bitmasklabels", "mask")]),
        ("polygon", [("polygonlabels", "poly")]),
        ("all_masks", [("polygonlabels", "poly"), ("brushlabels", "brush"), ("bitmasklabels", "mask")]),
    ],
)
def test_configs_with_bitmask_or_polygon_controls(name: str, expected: list[tuple[str, str]]) -> None:
    config = (FIXTURES / f"label_config_{name}.xml").read_text(encoding="utf-8")
    LabelInterface(config).validate()
    schema = parse_label_config(config)
    assert [(c.type, c.name) for c in schema.controls] == expected
    assert (schema.image_name, schema.image_field, schema.prompt_from_name) == ("image", "image", "prompt")
    assert all(len(c.labels) == 2 for c in schema.controls)
    assert schema.control(expected[0][1], expected[0][0]) == schema.controls[0]
    assert schema.control(expected[0][1], "brushlabels" if expected[0][0] != "brushlabels" else "x") is None


def test_mask_controls_on_another_image_are_ignored() -> None:
    schema = parse_label_config(
        _config(
            '<Image name="im" value="$pic"/><Image name="other" value="$b"/>'
            '<PolygonLabels name="p" toName="im"><Label value="A"/></PolygonLabels>'
            '<BitmaskLabels name="m" toName="other"><Label value="A"/></BitmaskLabels>'
            '<BitmaskLabels name="m2" toName="im"><Label value="B"/></BitmaskLabels>'
        )
    )
    assert [c.name for c in schema.controls] == ["p", "m2"]


def test_a_polygon_control_without_labels_is_named() -> None:
    with pytest.raises(LabelConfigError, match=r'<PolygonLabels name="p"> to hold at least one <Label'):
        parse_label_config(_config('<Image name="im" value="$pic"/><PolygonLabels name="p" toName="im"/>'))


def test_the_schema_travels_as_json() -> None:
    schema = parse_label_config((FIXTURES / "label_config_all_masks.xml").read_text(encoding="utf-8"))
    assert SegmentationSchema.from_json(schema.to_json()) == schema


def test_a_job_queued_before_several_mask_tags_still_reads() -> None:
    old = {"image_name": "image", "image_field": "image", "brush_from_name": "tag", "labels": ["A", "B"]}
    schema = SegmentationSchema.from_json(old | {"prompt_from_name": "prompt", "query_field": None})
    assert schema.controls == (MaskControl("brushlabels", "tag", ("A", "B")),)
