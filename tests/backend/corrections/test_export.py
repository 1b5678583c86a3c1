"""backend.corrections.export and the corrections CLI: stored corrections -> ReasonSeg folder +
manifest.jsonl."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import subprocess
import sys
from typing import Any

import numpy as np
import pytest

from backend.corrections.export import ExportError, export_corrections, export_records, select_records
from backend.label_studio.rle import decode_mask
from cores.evaluation.metrics import mask_iou
from cores.evaluation.reasonseg import iter_samples, load_gt_mask, load_image
from cores.modeling.prompts import looks_like_sentence
from tests.backend.corrections.export_fixtures import (
    ACC_C,
    CONTEXT,
    LONG_QUERY,
    PRED_C,
    TARGET_V2,
    H,
    W,
    file_images,
    local_ref,
)
from tests.backend.webhook_fixtures import L1, L2
from tests.paths import REPO_ROOT as ROOT


def test_export_is_a_reasonseg_folder_with_every_level(populated):
    store, root = populated
    out = root / "export"
    summary = export_corrections(store, out, images=file_images(root, {local_ref("3.png")}))
    assert (summary.considered, summary.exported) == (4, 2)  # 2 is deleted; 1 counts once (latest)
    assert summary.skipped == {"image_error": 1, "no_target": 1}
    assert summary.stems == ["p3_t1_a1", "p4_t3_a3"]

    samples = {s.stem: s for s in iter_samples(out)}
    assert sorted(samples) == summary.stems
    expected = {"p3_t1_a1": (LONG_QUERY, CONTEXT, TARGET_V2), "p4_t3_a3": ("the knife", CONTEXT, ACC_C)}
    for stem, (query, level1, target) in expected.items():
        sample = samples[stem]
        image = load_image(sample)
        assert image.shape == (H, W, 3)
        assert sample.texts == [query]
        assert sample.is_sentence == looks_like_sentence(query)
        gt = load_gt_mask(sample, H, W)
        assert set(np.unique(gt)) <= {0, 1}
        assert mask_iou(gt == 1, target) >= 0.99
        anno = json.loads(sample.json_path.read_text())
        assert [(lvl["level"], lvl["token"], lvl["label"]) for lvl in anno["levels"]] == [
            (1, "[SEG_SEMA]", L1),
            (2, "[SEG]", L2),
        ]
        for lvl, mask in zip(anno["levels"], (level1, target), strict=True):
            as_sample = dataclasses.replace(sample, shapes=lvl["shapes"])
            assert mask_iou(load_gt_mask(as_sample, H, W) == 1, mask) >= 0.99
        assert anno["source"]["annotation"] == int(stem.rsplit("_a", 1)[1])
    assert samples["p3_t1_a1"].is_sentence
    assert not samples["p4_t3_a3"].is_sentence


def test_manifest_lines_decode_back_to_the_accepted_masks(populated):
    store, root = populated
    out = root / "export"
    export_corrections(store, out, images=file_images(root, {local_ref("3.png")}))
    lines = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert [line["annotation"] for line in lines] == [1, 3]
    first, third = lines
    assert first["revision"] == "2025-03-01T12:00:00.000000Z"  # the latest revision only
    assert (first["project"], first["task"], first["annotator"], first["model_version"]) == (3, 1, "7", None)
    assert first["query"] == LONG_QUERY
    assert first["image"] == {
        "ref": local_ref("1.png"),
        "sha256": hashlib.sha256((root / "imgs" / "1.png").read_bytes()).hexdigest(),  # from the bytes
    }
    assert (third["annotator"], third["model_version"], third["prediction_id"]) == (
        "ann@example.com",
        "cores-test-2",
        70,
    )
    assert third["image"]["sha256"] == "cd" * 32  # known at record time
    for line, masks in ((first, (CONTEXT, TARGET_V2)), (third, (CONTEXT, ACC_C))):
        assert [lvl["level"] for lvl in line["levels"]] == [1, 2]
        for lvl, mask in zip(line["levels"], masks, strict=True):
            assert (lvl["height"], lvl["width"]) == (H, W)
            assert np.array_equal(decode_mask(lvl["rle"], lvl["height"], lvl["width"]), mask)
    assert [lvl["predicted_iou"] for lvl in first["levels"]] == [None, None]
    assert third["levels"][0]["predicted_iou"] == 1.0
    assert third["levels"][1]["predicted_iou"] == pytest.approx(mask_iou(PRED_C, ACC_C))
    assert third["levels"][1]["token"] == "[SEG]"


def test_export_filters(populated):
    store, root = populated
    images = file_images(root, {local_ref("3.png")})
    small = 1 - mask_iou(PRED_C, ACC_C)
    assert 0.05 < small < 0.5

    def stems(name: str, **filters: Any) -> list[str]:
        return export_corrections(store, root / name, images=images, **filters).stems

    assert stems("project", project=4) == ["p4_t3_a3"]
    assert stems("since", since="2025-03-02T00:00:00Z") == ["p4_t3_a3"]
    assert stems("until", until="2025-03-02T00:00:00Z") == ["p3_t1_a1"]
    # a window that ends before annotation 1's update exports its first revision
    early = export_corrections(store, root / "early", images=images, until="2025-03-01T11:00:00Z")
    manifest = json.loads((root / "early" / "manifest.jsonl").read_text())
    assert early.stems == ["p3_t1_a1"]
    assert manifest["revision"] == "2025-03-01T10:00:00.000000Z"
    assert stems("big", min_correction=0.5) == ["p3_t1_a1"]  # no prediction counts as a full correction
    assert stems("small", min_correction=small - 1e-6) == ["p3_t1_a1", "p4_t3_a3"]


def test_the_image_source_gets_each_records_task_and_the_store_is_read_once(populated):
    """Cloud URIs are presigned through their task: the source is handed each record's task id, so no
    caller lists the store a second time to find it; ``export_records`` exports exactly what it is given."""
    store, root = populated
    asked: list[tuple[str, int | None]] = []
    read = file_images(root)

    def source(ref: str, task_id: int | None) -> bytes | np.ndarray:
        asked.append((ref, task_id))
        return read(ref, task_id)

    records = select_records(store, project=3)
    summary = export_records(records, root / "given", images=source)
    assert [r.task_id for r in records] == [1, 4, 5]
    # task 4 has no accepted target (skipped before its image is needed); 5's image is missing on disk
    assert asked == [(local_ref("1.png"), 1), (local_ref("5.png"), 5)]
    assert (summary.considered, summary.exported, summary.skipped) == (
        3,
        1,
        {"image_error": 1, "no_target": 1},
    )


def test_export_refuses_a_folder_with_files(populated):
    store, root = populated
    (root / "busy").mkdir()
    (root / "busy" / "old.json").write_text("{}")
    with pytest.raises(ExportError, match="new or empty"):
        export_corrections(store, root / "busy", images=file_images(root))


# ----------------------------------------------------------------------------------------------- CLI


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "backend.corrections.cli", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cli_list_stats_export(populated):
    store, root = populated
    db = str(store.path)

    listed = cli("list", "--db", db, "--json")
    assert listed.returncode == 0, listed.stderr
    rows = [json.loads(line) for line in listed.stdout.splitlines()]
    assert [r["annotation"] for r in rows] == [1, 1, 3, 4, 5]
    assert rows[2]["levels"][1]["iou"] == pytest.approx(mask_iou(PRED_C, ACC_C))

    table = cli("list", "--db", db, "--project", "3", "--latest-only", "--include-deleted")
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split()[:4] == ["id", "project", "task", "annotation"]
    assert [line.split()[3] for line in lines[1:]] == ["1", "2", "4", "5"]
    assert "yes" in lines[2]  # annotation 2 is deleted

    filtered = cli("list", "--db", db, "--json", "--since", "2025-03-03", "--min-correction", "0.5")
    assert [json.loads(line)["annotation"] for line in filtered.stdout.splitlines()] == [4, 5]

    stats = cli("stats", "--db", db)
    assert stats.returncode == 0, stats.stderr
    body = json.loads(stats.stdout)
    assert (body["records"], body["annotations"], body["deleted_records"]) == (5, 4, 1)
    assert body["model_versions"] == {"cores-test-2": 2, "none": 2}

    out = root / "cli-export"
    exported = cli(
        "export",
        "--db",
        db,
        "--out",
        str(out),
        "--local-files-root",
        str(root),
        "--cache-dir",
        str(root / "cache"),
        "--label-studio-url",
        "",
        "--api-key",
        "",
    )
    assert exported.returncode == 0, exported.stderr
    summary = json.loads(exported.stdout)
    assert (summary["exported"], summary["skipped"]) == (2, {"image_error": 1, "no_target": 1})
    assert sorted(s.stem for s in iter_samples(out)) == ["p3_t1_a1", "p4_t3_a3"]

    missing = cli("stats", "--db", str(root / "nope.sqlite3"))
    assert missing.returncode == 1
    assert "no correction store" in missing.stderr
    bad_time = cli("list", "--db", db, "--since", "last week")
    assert bad_time.returncode == 2
    assert "ISO 8601" in bad_time.stderr
    again = cli("export", "--db", db, "--out", str(out))
    assert again.returncode == 1
    assert "new or empty" in again.stderr
