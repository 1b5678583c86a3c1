"""Read a Label Studio labeling config: which tags the CoReS backend reads from and writes to.

The backend needs one ``<Image>`` (the picture, from a task data field), at least one mask control whose
``toName`` is that image -- ``<BrushLabels>`` (brush RLE), ``<BitmaskLabels>`` (PNG data URL) or
``<PolygonLabels>`` (polygons), where each chain level's mask goes; several are all answered -- and,
optionally, a ``<TextArea>`` whose ``toName`` is that image (the annotator's query, sent as the
interactive context).

Level rule (documented contract), per mask control: chain level ``k`` (1-based; level 1 = where the target
usually is, level 2 = the target) is written with the ``k``-th ``<Label>`` of that control, in document
order. An explicit mapping (``CORES_LEVEL_LABELS="1=Context,2=Target"``, see ``parse_level_mapping``)
overrides that for the levels it names, in every control (each must hold the mapped labels).

Parsing uses label-studio-sdk's ``LabelInterface`` (the same tag/label semantics as Label Studio: a
``<Label>``'s ``alias`` wins over its ``value``), after a hardened lxml pass that rejects DTDs and entities.
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass
from importlib import resources
from typing import Any

from lxml import etree

from backend.operations.level_labels import LEVEL_LABELS_ENV

logger = logging.getLogger(__name__)

"""Environment variable holding an explicit level -> label mapping (``"1=Context,2=Target"``)."""

SHIPPED_CONFIG_RESOURCE = "label_config.xml"
"""The labeling config shipped beside this module."""

_XML_DECLARATION = re.compile(r"^\s*<\?xml[^>]*\?>")


MASK_TAGS = {"brushlabels": "BrushLabels", "bitmasklabels": "BitmaskLabels", "polygonlabels": "PolygonLabels"}
"""The mask control tags the backend answers: result ``type`` (the tag in lower case) -> tag name."""


class LabelConfigError(ValueError):
    """A labeling config (or level mapping) the backend cannot use; the message says what it expected."""


@dataclass(frozen=True)
class MaskControl:
    """One mask control tag on the image.

    Attributes:
        type: the result ``type`` it reads and writes: ``brushlabels``, ``bitmasklabels`` or
            ``polygonlabels`` (a key of ``MASK_TAGS``); its results' labels are under ``value[type]``.
        name: its ``name`` (results' ``from_name``).
        labels: its label values in document order (``alias`` when a ``<Label>`` has one).
    """

    type: str
    name: str
    labels: tuple[str, ...]

    def describe(self) -> str:
        """``<PolygonLabels name="poly">``, for messages."""
        return f'<{MASK_TAGS.get(self.type, self.type)} name="{self.name}">'


@dataclass(frozen=True)
class SegmentationSchema:
    """The tags of a labeling config that the CoReS backend reads and writes.

    Attributes:
        image_name: ``name`` of the ``<Image>`` tag (the ``to_name`` of every result).
        image_field: task data key holding the image URL (``value="$image"`` -> ``"image"``).
        controls: the mask controls on that image, in document order (each gets every chain level).
        prompt_from_name: ``name`` of the ``<TextArea>`` on that image (the interactive context's
            ``from_name``), or None when the config has no prompt box.
        query_field: task data key the TextArea pre-fills from (``value="$query"`` -> ``"query"``), or None.
    """

    image_name: str
    image_field: str
    controls: tuple[MaskControl, ...]
    prompt_from_name: str | None = None
    query_field: str | None = None

    @property
    def labels(self) -> tuple[str, ...]:
        """The first mask control's labels (the shipped config's BrushLabels labels, level 1 first)."""
        return self.controls[0].labels

    def control(self, from_name: object, result_type: object) -> MaskControl | None:
        """The mask control a result item with this ``from_name`` and ``type`` belongs to, or None."""
        kind = str(result_type or "").lower()
        return next((c for c in self.controls if c.name == from_name and c.type == kind), None)

    def to_json(self) -> dict[str, object]:
        """JSON-safe form (a prediction job's ``schema``); ``from_json`` reads it back."""
        return {
            "image_name": self.image_name,
            "image_field": self.image_field,
            "controls": [{"type": c.type, "name": c.name, "labels": list(c.labels)} for c in self.controls],
            "prompt_from_name": self.prompt_from_name,
            "query_field": self.query_field,
        }

    @classmethod
    def from_json(cls, data: Any) -> SegmentationSchema:
        """Read ``to_json``'s form (or the brush-only form of jobs queued before several mask tags:
        ``brush_from_name`` and ``labels``).

        Raises:
            KeyError, TypeError: a missing or mistyped field.
        """
        stored = data.get("controls")
        if stored is None:
            stored = [{"type": "brushlabels", "name": data["brush_from_name"], "labels": data["labels"]}]
        controls = tuple(
            MaskControl(str(c["type"]), str(c["name"]), tuple(str(label) for label in c["labels"]))
            for c in stored
        )
        return cls(
            image_name=str(data["image_name"]),
            image_field=str(data["image_field"]),
            controls=controls,
            prompt_from_name=data.get("prompt_from_name"),
            query_field=data.get("query_field"),
        )


def shipped_label_config() -> str:
    """Return the labeling config shipped with the backend (``backend/label_config.xml``) as a string."""
    return resources.files("backend").joinpath(SHIPPED_CONFIG_RESOURCE).read_text("utf-8")


def _check_xml(config: str) -> str:
    """Parse ``config`` with a hardened parser; return it without an XML declaration.

    Raises:
        LabelConfigError: for non-strings, malformed XML, DTDs/entities, or a root other than ``<View>``.
    """
    if not isinstance(config, str):
        raise LabelConfigError(f"expected the labeling config as an XML string, got {type(config).__name__}")
    text = _XML_DECLARATION.sub("", config, count=1)
    if not text.strip():
        raise LabelConfigError(
            "expected a labeling config XML string (<View>...</View>), got an empty string"
        )
    parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False)
    try:
        encoded = text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise LabelConfigError(
            f"expected the labeling config as text, found a lone surrogate (U+{ord(text[exc.start]):04X}) at "
            f"character {exc.start}, which no UTF-8 text can hold"
        ) from None
    try:
        root = etree.fromstring(encoded, parser)
    except etree.XMLSyntaxError as exc:
        raise LabelConfigError(
            f"expected well-formed labeling config XML, found a syntax error: {exc}"
        ) from exc
    if root.getroottree().docinfo.doctype:
        raise LabelConfigError("expected a labeling config without a DOCTYPE/DTD, found one")
    if root.tag != "View":
        raise LabelConfigError(f"expected the labeling config root tag <View>, found <{root.tag}>")
    return text


def _data_field(value: str | None) -> str | None:
    """``"$image"`` -> ``"image"``; anything that does not name a task data field -> None."""
    if value and value.startswith("$") and len(value) > 1:
        return value[1:]
    return None


def _describe(tags: list[Any]) -> str:
    """Short human description of parsed tags for error messages: ``<BrushLabels name="x" toName="y">``."""
    if not tags:
        return "none"
    parts = []
    for tag in tags:
        to_name = getattr(tag, "to_name", None)
        target = f' toName="{",".join(to_name)}"' if to_name else ""
        parts.append(f'<{tag.tag} name="{tag.name}"{target}>')
    return ", ".join(parts)


DEFAULT_CACHE_BYTES = 8 * 1024 * 1024
"""Default bound of the parsed-config cache, in bytes of config text (``LABEL_CONFIG_CACHE_BYTES``)."""


class SchemaCache:
    """Parsed configs by the SHA-256 of their text, least recently used evicted first, bounded by the total
    length of the texts they came from (a schema is never larger than its config). A config longer than the
    bound is parsed every time and not kept. Thread-safe."""

    def __init__(self, max_bytes: int = DEFAULT_CACHE_BYTES) -> None:
        self.max_bytes = max_bytes
        self._entries: OrderedDict[bytes, tuple[SegmentationSchema, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    @property
    def size_bytes(self) -> int:
        """Total config bytes the cached schemas stand for."""
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, config: str) -> SegmentationSchema:
        """``parse_label_config(config)``, from the cache when the same text was parsed before (errors are
        not cached; they raise again).

        Raises:
            LabelConfigError: as ``parse_label_config``.
        """
        if not isinstance(config, str):
            return parse_label_config(config)
        size = len(config)
        key = hashlib.sha256(config.encode("utf-8", "surrogatepass")).digest()
        with self._lock:
            found = self._entries.get(key)
            if found is not None:
                self._entries.move_to_end(key)
                return found[0]
        schema = parse_label_config(config)
        if size > self.max_bytes:
            return schema
        with self._lock:
            if key not in self._entries:
                self._entries[key] = (schema, size)
                self._bytes += size
            while self._bytes > self.max_bytes:
                _, (_, dropped) = self._entries.popitem(last=False)
                self._bytes -= dropped
        return schema


_CACHE = SchemaCache()


def configure_schema_cache(max_bytes: int) -> None:
    """Set the bound of the process's parsed-config cache (``LABEL_CONFIG_CACHE_BYTES``); evicts at once."""
    with _CACHE._lock:
        _CACHE.max_bytes = max_bytes
        while _CACHE._bytes > max_bytes and _CACHE._entries:
            _, (_, dropped) = _CACHE._entries.popitem(last=False)
            _CACHE._bytes -= dropped


def cached_label_config(config: str) -> SegmentationSchema:
    """:func:`parse_label_config`, memoised by the config's text in the process's ``SchemaCache``: every
    /predict and webhook of a project carries the same config."""
    return _CACHE.get(config)


def parse_label_config(config: str) -> SegmentationSchema:
    """Find the image, mask and prompt tags of a Label Studio labeling config.

    Args:
        config: the labeling config XML (``project.label_config``, ``/setup``'s ``schema``).

    Returns:
        The ``SegmentationSchema``. The image is the one the first mask control (``<BrushLabels>``,
        ``<BitmaskLabels>`` or ``<PolygonLabels>``, document order) is tied to; every mask control on that
        image is kept, in document order (controls on other images are ignored, with a warning); with
        several TextAreas on that image, the first wins.

    Raises:
        LabelConfigError: malformed XML; no ``<Image>``; an Image whose ``value`` does not name a task
            field (``$field``); no mask control with ``toName`` set to an Image; a mask control with no
            ``<Label>``.
    """
    from label_studio_sdk.label_interface import LabelInterface

    text = _check_xml(config)
    try:
        interface = LabelInterface(text)
    except Exception as exc:  # the SDK raises assorted exception types for configs it cannot read
        raise LabelConfigError(f"expected a labeling config Label Studio can parse, found: {exc}") from exc

    images = {obj.name: obj for obj in interface.objects if obj.tag.lower() == "image"}
    if not images:
        found = ", ".join(sorted({f"<{obj.tag}>" for obj in interface.objects})) or "no object tags"
        raise LabelConfigError(f"expected an <Image> tag in the labeling config, found {found}")

    controls = list(interface.controls)
    masks = [c for c in controls if c.tag.lower() in MASK_TAGS]
    on_image = [c for c in masks if any(name in images for name in c.to_name)]
    if not on_image:
        raise LabelConfigError(
            f"expected a <BrushLabels>, <BitmaskLabels> or <PolygonLabels> tag with toName set to an <Image> "
            f"({', '.join(sorted(images))}), found {_describe(masks)}"
        )
    image_name = next(name for name in on_image[0].to_name if name in images)
    image = images[image_name]
    elsewhere = [c for c in on_image if image_name not in c.to_name]
    if elsewhere:
        logger.warning("mask controls %s are not on image %r; ignored", _describe(elsewhere), image_name)

    if "valueList" in image.attr:
        raise LabelConfigError(
            f'expected <Image name="{image_name}"> to show one image (value="$field"), found valueList='
            f'"{image.attr["valueList"]}" (multi-image tasks are not supported)'
        )
    image_field = _data_field(image.attr.get("value"))
    if image_field is None:
        raise LabelConfigError(
            f'expected <Image name="{image_name}"> value to name a task data field like "$image", '
            f'found value="{image.attr.get("value", "")}"'
        )

    chosen = []
    for tag in on_image:
        if image_name not in tag.to_name:
            continue
        control = MaskControl(tag.tag.lower(), tag.name, tuple(tag.labels or ()))
        if not control.labels:
            raise LabelConfigError(
                f'expected {control.describe()} to hold at least one <Label value="...">, found none'
            )
        chosen.append(control)

    prompts = [c for c in controls if c.tag.lower() == "textarea" and image_name in c.to_name]
    prompt = prompts[0] if prompts else None
    schema = SegmentationSchema(
        image_name=image_name,
        image_field=image_field,
        controls=tuple(chosen),
        prompt_from_name=prompt.name if prompt is not None else None,
        query_field=_data_field(prompt.attr.get("value")) if prompt is not None else None,
    )
    logger.debug("parsed labeling config: %s", schema)
    return schema


def level_labels(control: MaskControl, n_levels: int, mapping: dict[int, str] | None = None) -> list[str]:
    """Return the label of ``control`` for each chain level 1..``n_levels`` (list index 0 is level 1).

    Level ``k`` gets ``mapping[k]`` when the mapping names it, otherwise the ``k``-th label of the
    control (``control.labels[k - 1]``). Mapping entries for levels above ``n_levels`` are unused.

    Raises:
        LabelConfigError: ``n_levels < 1``; a mapped label that is not one of the control's labels; an
            unmapped level ``k`` while the control has fewer than ``k`` labels.
    """
    if n_levels < 1:
        raise LabelConfigError(f"expected at least one chain level, got {n_levels}")
    mapping = mapping or {}
    for level, label in sorted(mapping.items()):
        if label not in control.labels:
            raise LabelConfigError(
                f'level {level} is mapped to label "{label}", but {control.describe()} has only '
                f"{list(control.labels)}"
            )
    result = []
    for level in range(1, n_levels + 1):
        if level in mapping:
            result.append(mapping[level])
        elif level <= len(control.labels):
            result.append(control.labels[level - 1])
        else:
            raise LabelConfigError(
                f"the chain has {n_levels} levels but {control.describe()} has only "
                f"{len(control.labels)} labels {list(control.labels)}; add a <Label> per level or map level "
                f'{level} explicitly with {LEVEL_LABELS_ENV}="{level}=<label>"'
            )
    return result


def label_levels(
    control: MaskControl, mapping: dict[int, str] | None = None, n_levels: int | None = None
) -> dict[str, int]:
    """Which chain level each label of ``control`` stands for: the inverse of ``level_labels``.

    Level ``k`` is ``mapping[k]`` when mapped, else the ``k``-th label. Labels past ``n_levels`` (when
    given) name no level; a label that would name two levels keeps the lower one.
    """
    mapping = mapping or {}
    top = n_levels if n_levels is not None else max([len(control.labels), *mapping])
    result: dict[str, int] = {}
    for level in range(1, top + 1):
        label = mapping.get(level) or (control.labels[level - 1] if level <= len(control.labels) else None)
        if label is not None:
            result.setdefault(label, level)
    return result
