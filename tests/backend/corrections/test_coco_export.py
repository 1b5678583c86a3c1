"""backend.corrections.coco and ``corrections export --format coco``: stored corrections -> COCO instance
segmentation, checked by loading it with pycocotools and decoding every annotation back to a mask."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO

from backend.corrections.coco import export_coco
from backend.corrections.export import select_records
from backend.corrections.store import CorrectionStore
from backend.label_studio.formats.polygon import mask_iou
from tests.backend.corrections.export_fixtures import ACC_C, CONTEXT, TARGET_V2, H, W, file_images
from tests.backend.webhook_fixtures import L1, L2
from tests.paths import REPO_ROOT as ROOT

EXPECTED = {"p3_t1_a1": (CONTEXT, TARGET_V2), "p4_t3_a3": (CONTEXT, ACC_C)}


def _check(out: Path, min_iou: float) -> COCO:
    coco = COCO(str(out / "annotations.json"))
    assert [(c["name"], c["supercategory"]) for c in coco.loadCats(coco.getCatIds())] == [
        (L1, "level 1"),
        (L2, "level 2"),
    ]
    stems = {img["file_name"].removesuffix(".jpg"): img for img in coco.loadImgs(coco.getImgIds())}
    assert sorted(stems) == sorted(EXPECTED)
    for stem, image in stems.items():
        assert (image["width"], image["height"]) == (W, H)
        with Image.open(out / image["file_name"]) as picture:
            assert picture.size == (W, H)
        annotations = coco.loadAnns(coco.getAnnIds(imgIds=[image["id"]]))
        assert [a["level"] for a in annotations] == [1, 2]
        for annotation, expected in zip(annotations, EXPECTED[stem], strict=True):
            mask = coco.annToMask(annotation).astype(bool)
            assert mask_iou(mask, expected) >= min_iou
            assert annotation["iscrowd"] == 0
            assert annotation["area"] == pytest.approx(mask.sum())
            ys, xs = np.nonzero(mask)
            x0, y0 = xs.min(), ys.min()
            assert annotation["bbox"] == pytest.approx([x0, y0, xs.max() - x0 + 1, ys.max() - y0 + 1])
    return coco


def test_coco_rle_export_decodes_to_the_exact_accepted_masks(populated: tuple[CorrectionStore, Path]) -> None:
    store, root = populated
    summary = export_coco(select_records(store), root / "coco", images=file_images(root))
    assert (summary.considered, summary.exported) == (4, 2)
    assert summary.skipped == {"image_error": 1, "no_target": 1}
    coco = _check(root / "coco", 1.0)
    assert all(isinstance(a["segmentation"]["counts"], str) for a in coco.dataset["annotations"])
    assert {img["query"] for img in coco.dataset["images"]} >= {"the knife"}


def test_coco_polygon_export_decodes_close_to_the_accepted_masks(
    populated: tuple[CorrectionStore, Path],
) -> None:
    store, root = populated
    export_coco(select_records(store), root / "coco", images=file_images(root), segmentation="polygon")
    coco = _check(root / "coco", 0.97)
    for annotation in coco.dataset["annotations"]:
        assert isinstance(annotation["segmentation"], list)
        assert all(len(ring) >= 6 and len(ring) % 2 == 0 for ring in annotation["segmentation"])


def test_cli_exports_coco_and_reasonseg_stays_the_default(populated: tuple[CorrectionStore, Path]) -> None:
    store, root = populated
    db = str(store.path)
    common = ["--db", db, "--local-files-root", str(root), "--cache-dir", str(root / "cache")]

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "backend", "corrections", "export", *args, *common]
        return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)

    coco = run("--out", str(root / "coco"), "--format", "coco", "--coco-segmentation", "polygon")
    assert coco.returncode == 0, coco.stderr
    assert json.loads(coco.stdout)["exported"] == 2
    _check(root / "coco", 0.97)
    default = run("--out", str(root / "reasonseg"))
    assert default.returncode == 0, default.stderr
    assert (root / "reasonseg" / "manifest.jsonl").is_file()
    assert not (root / "reasonseg" / "annotations.json").exists()
    bad = run("--out", str(root / "x"), "--format", "yolo")
    assert bad.returncode == 2
    assert "invalid choice" in bad.stderr
