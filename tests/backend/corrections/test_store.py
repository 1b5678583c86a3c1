"""backend.corrections.store: webhooks -> durable, idempotent correction records (threads, processes,
kill -9).

The webhook fixtures under ``tests/fixtures/webhooks/`` come from ``tests.backend.webhook_fixtures``; their
masks are rectangles so every IoU below is checked by hand.
"""

from __future__ import annotations

import copy
import json
import multiprocessing
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pytest

from backend.corrections.store import (
    SCHEMA_VERSION,
    CorrectionError,
    CorrectionRecord,
    CorrectionStore,
    decode_brush_rle,
    utc_iso,
)
from backend.label_studio.label_config import label_levels
from backend.label_studio.rle import decode_mask, encode_mask
from tests.backend.webhook_fixtures import (
    ACC_L1,
    ACC_L2,
    L1,
    L2,
    OTHER_SCHEMA,
    PRED_L1,
    PRED_L2,
    QUERY,
    SCHEMA,
    UPDATED_L2,
    WEBHOOKS,
    WRITER_SCRIPT,
    H,
    W,
    assert_sqlite_intact,
    brush,
    kill_9_after_acks,
    load,
    make_webhook_fixtures,
    project,
    prompt,
    rect,
)
from tests.paths import REPO_ROOT as ROOT

T = TypeVar("T")


def present(value: T | None) -> T:
    """``value``, which must not be None (a mask, an RLE, a record)."""
    assert value is not None
    return value


def recorded(store: CorrectionStore, body: dict[str, Any], **kwargs: Any) -> CorrectionRecord:
    """Record ``body`` and return the stored record."""
    outcome = store.record_webhook(body, schema=kwargs.pop("schema", SCHEMA), **kwargs)
    return present(store.get(present(outcome.record_id)))


@pytest.fixture
def store(tmp_path: Path):
    with CorrectionStore(tmp_path / "corrections.sqlite3") as s:
        yield s


def test_fixture_files_match_their_generator():
    for name, payload in make_webhook_fixtures().items():
        assert load(name) == json.loads(json.dumps(payload)), (
            f"{name}: run python -m tests.backend.webhook_fixtures"
        )


# --------------------------------------------------------------------------------------------- codec


def _bits_to_bytes(bits: str) -> list[int]:
    bits += "0" * (8 - len(bits) % 8)  # always at least one padding bit, like the reference encoder
    return [int(bits[i : i + 8], 2) for i in range(0, len(bits), 8)]


def test_decode_brush_rle_round_trips_and_reads_multi_value_literals():
    # Comparison with the SDK's decoder lives in tests/backend/label_studio/test_rle.py.
    rng = np.random.default_rng(0)
    for h, w in [(30, 40), (1, 1), (7, 300), (64, 50)]:
        ragged = rng.random((h, w)) < 0.5
        assert np.array_equal(decode_brush_rle(encode_mask(ragged), h, w), ragged)
        assert np.array_equal(decode_brush_rle(encode_mask(~ragged), h, w), ~ragged)
    # A literal chunk of several values (the browser's encoder writes these; ours writes single literals).
    header = f"{8:032b}{7:05b}" + "".join(f"{s - 1:04b}" for s in (3, 4, 8, 16))
    literal = "0" + "00" + f"{4 - 1:03b}" + "".join(f"{v:08b}" for v in (0, 9, 0, 0))  # 4 literal bytes
    run = "1" + "01" + f"{4 - 1:04b}" + f"{200:08b}"  # 4 x 200
    rle = _bits_to_bytes(header + literal + run)
    assert decode_brush_rle(rle, 1, 2).tolist() == [[False, True]]


def test_decode_brush_rle_rejects_bad_streams():
    rle = encode_mask(rect(0, 0, 5, 5))
    with pytest.raises(ValueError, match="original_height"):
        decode_brush_rle(rle, H, W + 1)
    with pytest.raises(ValueError, match="ends early"):
        decode_brush_rle(rle[:10], H, W)
    with pytest.raises(ValueError, match="header"):
        decode_brush_rle(rle[:5], H, W)


# ---------------------------------------------------------------------------------------- recording


def test_created_webhook_becomes_one_full_record(store: CorrectionStore):
    outcome = store.record_webhook(load("annotation_created.json"), schema=SCHEMA, image_sha256="ab" * 32)
    assert (outcome.status, outcome.record_id) == ("created", 1)
    record = present(store.get(1))
    assert (record.project_id, record.task_id, record.annotation_id) == (3, 11, 101)
    assert record.revision == "2025-03-01T10:00:00.123456Z"
    assert record.action == "ANNOTATION_CREATED"
    assert record.annotator == "7"
    assert record.annotation_created_at == "2025-03-01T09:59:00.000000Z"
    assert record.query == QUERY
    assert (record.image_ref, record.image_sha256) == ("/data/upload/3/kitchen-11.jpg", "ab" * 32)
    assert (record.prediction_id, record.model_version) == (None, None)
    assert [lvl.level for lvl in record.levels] == [1, 2]
    assert [lvl.label for lvl in record.levels] == [L1, L2]
    level1, level2 = record.levels
    assert np.array_equal(present(level1.accepted_mask()), ACC_L1)  # the two level-1 regions are OR-ed
    assert np.array_equal(present(level2.accepted_mask()), ACC_L2)
    assert (level1.height, level1.width) == (H, W)
    assert level1.predicted is None
    assert level1.iou is None
    assert record.final_level == 2
    assert record.final_iou is None
    assert record.correction == 1.0
    # the stored mask is zlib'd canonical brush RLE, readable by the SDK's decoder
    assert np.array_equal(decode_mask(present(level2.accepted_rle()), H, W), ACC_L2)
    assert record.deleted_at is None
    assert record.received_at.endswith("Z")


def test_prediction_from_the_task_payload_and_hand_checked_iou(store: CorrectionStore):
    record = recorded(store, load("annotation_created_with_prediction.json"))
    assert (record.prediction_id, record.model_version, record.annotator) == (55, "cores-test-1", "8")
    assert record.query == "Where would you keep the knives?"
    level1, level2 = record.levels
    assert np.array_equal(present(level1.predicted_mask()), PRED_L1)
    assert np.array_equal(present(level2.predicted_mask()), PRED_L2)
    assert (level1.predicted_score, level2.predicted_score) == (0.91, 0.78)
    assert level1.iou == pytest.approx(1200 / 1600)  # 0.75
    assert level2.iou == pytest.approx(150 / 250)  # 0.6
    assert record.final_iou == pytest.approx(0.6)
    assert record.correction == pytest.approx(0.4)


def test_prediction_passed_by_the_caller_wins(store: CorrectionStore):
    payload = load("annotation_created.json")
    prediction = {
        "id": 77,
        "model_version": "cores-v2",
        "result": [brush("p1", ACC_L1, L1, 0.5), brush("p2", PRED_L2, L2, 0.4)],
    }
    record = recorded(store, payload, prediction=prediction)
    assert (record.prediction_id, record.model_version) == (77, "cores-v2")
    assert [lvl.iou for lvl in record.levels] == [1.0, pytest.approx(0.6)]


def test_annotation_prediction_dict_and_newest_task_prediction_are_used():
    payload = load("annotation_created.json")
    embedded = copy.deepcopy(payload)
    embedded["annotation"]["prediction"] = {
        "id": 9,
        "model_version": "v-embedded",
        "result": [brush("e2", ACC_L2, L2, 0.3)],
    }
    newest = copy.deepcopy(payload)
    old = {
        "id": 1,
        "model_version": "old",
        "created_at": "2025-01-01T00:00:00Z",
        "result": [brush("o", ACC_L2, L2)],
    }
    new = {
        "id": 2,
        "model_version": "new",
        "created_at": "2025-02-01T00:00:00Z",
        "result": [brush("n", PRED_L2, L2)],
    }
    newest["task"]["predictions"] = [new, old]
    from backend.corrections.annotations import parse_annotation as _parse_annotation

    kwargs = {"image_sha256": None, "prediction": None, "mapping": None, "n_levels": None}
    first = _parse_annotation(embedded, SCHEMA, **kwargs).values
    assert (first["prediction_id"], first["model_version"], first["final_iou"]) == (9, "v-embedded", 1.0)
    second = _parse_annotation(newest, SCHEMA, **kwargs).values
    assert (second["prediction_id"], second["model_version"]) == (2, "new")
    assert second["final_iou"] == pytest.approx(0.6)
    # a named parent prediction that the payload does not carry: its id is kept, no masks are guessed
    named = copy.deepcopy(newest)
    named["annotation"]["parent_prediction"] = 99
    third = _parse_annotation(named, SCHEMA, **kwargs).values
    assert (third["prediction_id"], third["model_version"], third["final_iou"]) == (99, None, None)


def test_replayed_webhooks_store_one_record_per_revision(store: CorrectionStore):
    created, updated = load("annotation_created.json"), load("annotation_updated.json")
    outcomes = [store.record_webhook(created, schema=SCHEMA) for _ in range(3)]
    assert [o.status for o in outcomes] == ["created", "duplicate", "duplicate"]
    assert {o.record_id for o in outcomes} == {1}
    assert store.record_webhook(updated, schema=SCHEMA).status == "created"
    assert store.record_webhook(updated, schema=SCHEMA).status == "duplicate"
    records = store.list()
    assert [r.revision for r in records] == ["2025-03-01T10:00:00.123456Z", "2025-03-01T10:05:00.000000Z"]
    latest = store.list(latest_only=True)
    assert [r.id for r in latest] == [2]
    assert np.array_equal(present(present(latest[0].level(2)).accepted_mask()), UPDATED_L2)
    # the same instant written with another offset is the same revision
    shifted = copy.deepcopy(created)
    shifted["annotation"]["updated_at"] = "2025-03-01T11:00:00.123456+01:00"
    assert store.record_webhook(shifted, schema=SCHEMA).status == "duplicate"


@pytest.mark.parametrize("delete_fixture", ["annotation_deleted.json", "annotations_deleted.json"])
def test_deletion_marks_every_revision(store: CorrectionStore, delete_fixture: str):
    store.record_webhook(load("annotation_created.json"), schema=SCHEMA)
    store.record_webhook(load("annotation_updated.json"), schema=SCHEMA)
    store.record_webhook(load("annotation_created_with_prediction.json"), schema=SCHEMA)
    outcome = store.record_webhook(load(delete_fixture), schema=SCHEMA)
    assert outcome.status == "deleted"
    assert "2 record(s)" in outcome.detail
    assert [r.annotation_id for r in store.list()] == [202]
    everything = store.list(include_deleted=True)
    assert sorted((r.annotation_id, r.deleted_at is not None) for r in everything) == [
        (101, True),
        (101, True),
        (202, False),
    ]
    assert store.record_webhook(load(delete_fixture), schema=SCHEMA).status == "deleted"  # replay
    # a revision that arrives after the deletion is stored, already deleted
    late = load("annotation_updated.json")
    late["annotation"]["updated_at"] = "2025-03-01T11:00:00Z"
    assert store.record_webhook(late, schema=SCHEMA).status == "created"
    assert [r.annotation_id for r in store.list()] == [202]
    assert store.stats()["deleted_records"] == 3


def test_actions_without_a_correction_are_ignored(store: CorrectionStore):
    cancelled = load("annotation_created.json")
    cancelled["annotation"]["was_cancelled"] = True
    for payload in (
        {"action": "START_TRAINING", "project": project()},
        {"action": "PROJECT_UPDATED", "project": project()},
        cancelled,
    ):
        assert store.record_webhook(payload, schema=SCHEMA).status == "ignored"
    assert store.list(include_deleted=True) == []


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda p: p["annotation"].pop("id"), "annotation.id"),
        (lambda p: (p["annotation"].pop("task"), p.pop("task")), "no task id"),
        (lambda p: p["annotation"].pop("updated_at"), "updated_at"),
        (lambda p: p["annotation"].update(updated_at="yesterday"), "ISO 8601"),
        (lambda p: p.pop("annotation"), "no 'annotation'"),
        (lambda p: p["annotation"]["result"][1].update(original_width=W + 1), "original_height"),
        (lambda p: p["annotation"]["result"][1].pop("original_height"), "needs original_height"),
        (
            lambda p: p["annotation"]["result"][2].update(
                original_width=W * 2, value=brush("x", np.zeros((H, W * 2), bool), L1)["value"]
            ),
            "different sizes",
        ),
    ],
)
def test_bad_payloads_raise_clear_errors(store: CorrectionStore, edit, message):
    payload = load("annotation_created.json")
    edit(payload)
    with pytest.raises(CorrectionError, match=message):
        store.record_webhook(payload, schema=SCHEMA)
    assert store.list(include_deleted=True) == []


def test_bad_delete_and_non_object_payloads_raise(store: CorrectionStore):
    with pytest.raises(CorrectionError, match="no annotation id"):
        store.record_webhook({"action": "ANNOTATION_DELETED", "project": project()}, schema=SCHEMA)
    with pytest.raises(CorrectionError, match="payload object"):
        store.record_webhook([], schema=SCHEMA)  # type: ignore[arg-type]


def test_annotation_without_brush_regions_is_still_recorded(store: CorrectionStore):
    bare = load("annotation_created.json")
    bare["annotation"]["result"] = [prompt(QUERY)]
    record = recorded(store, bare)
    assert record is not None
    assert record.levels == ()
    assert record.final_level is None
    assert record.correction == 1.0
    # with a prediction, "every mask removed" is an IoU of 0 on each predicted level
    rejected = load("annotation_created_with_prediction.json")
    rejected["annotation"]["result"] = [prompt(QUERY)]
    record = recorded(store, rejected)
    assert [(lvl.level, lvl.accepted, lvl.iou) for lvl in record.levels] == [(1, None, 0.0), (2, None, 0.0)]
    assert record.correction == 1.0


def test_query_falls_back_to_the_task_data_and_labels_follow_the_config(store: CorrectionStore):
    kitchen, knife, spare = OTHER_SCHEMA.labels
    payload = load("annotation_created.json")
    payload["task"]["data"] = {"img_url": "s3://bucket/k.jpg", "query": " the bread knife "}
    payload["annotation"]["result"] = [
        {**brush("a", ACC_L1, kitchen), "from_name": "masks", "to_name": "photo"},
        {**brush("b", ACC_L2, knife), "from_name": "masks", "to_name": "photo"},
        {**brush("c", ACC_L2, spare), "from_name": "masks", "to_name": "photo"},
        brush("d", ACC_L2, L2),  # another tag's region: not ours
    ]
    record = recorded(store, payload, schema=OTHER_SCHEMA, n_levels=2)
    assert (record.query, record.image_ref) == ("the bread knife", "s3://bucket/k.jpg")
    assert [(lvl.level, lvl.label) for lvl in record.levels] == [(1, kitchen), (2, knife)]
    assert label_levels(OTHER_SCHEMA.controls[0]) == {kitchen: 1, knife: 2, spare: 3}
    assert label_levels(SCHEMA.controls[0], {1: L2, 2: L1}) == {L2: 1, L1: 2}


def test_utc_iso_normalises_times():
    assert utc_iso("2025-03-01T11:00:00+01:00") == "2025-03-01T10:00:00.000000Z"
    assert utc_iso("2025-03-01") == "2025-03-01T00:00:00.000000Z"
    with pytest.raises(CorrectionError):
        utc_iso("not a time")


# ----------------------------------------------------------------------------------------- the file


def test_store_is_wal_full_sync_and_schema_versioned(tmp_path: Path):
    path = tmp_path / "c.sqlite3"
    CorrectionStore(path).close()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"  # persistent in the file
    assert conn.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]
    conn.execute("UPDATE schema_version SET version = 99")
    conn.commit()
    conn.close()
    with pytest.raises(CorrectionError, match="newer backend"):
        CorrectionStore(path)
    with CorrectionStore(tmp_path / "d.sqlite3") as store:
        conn = store._connect()
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        assert conn.execute("PRAGMA busy_timeout").fetchone()[0] == 30000
    other = tmp_path / "other.sqlite3"
    sqlite3.connect(other).execute("CREATE TABLE t (x)").connection.close()
    with pytest.raises(CorrectionError, match="not a correction store"):
        CorrectionStore(other)
    (tmp_path / "junk.sqlite3").write_bytes(b"not sqlite at all" * 100)
    with pytest.raises(CorrectionError):
        CorrectionStore(tmp_path / "junk.sqlite3")


def test_default_path_is_under_model_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("MODEL_DIR", str(tmp_path / "models"))
    with CorrectionStore() as store:
        assert store.path == tmp_path / "models" / "corrections.sqlite3"
        assert store.path.is_file()


# -------------------------------------------------------------------------------------- concurrency


def _payload_set() -> list[dict[str, Any]]:
    return [
        load("annotation_created.json"),
        load("annotation_updated.json"),
        load("annotation_created_with_prediction.json"),
    ]


def test_eight_threads_replaying_the_same_webhooks(store: CorrectionStore):
    payloads = _payload_set()
    statuses: list[str] = []
    lock = threading.Lock()
    barrier = threading.Barrier(8)

    def work(seed: int) -> None:
        order = payloads * 3
        random.Random(seed).shuffle(order)
        barrier.wait()
        for payload in order:
            status = store.record_webhook(payload, schema=SCHEMA).status
            with lock:
                statuses.append(status)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(statuses) == 8 * 9
    assert statuses.count("created") == 3
    records = store.list()
    assert sorted((r.annotation_id, r.revision) for r in records) == [
        (101, "2025-03-01T10:00:00.123456Z"),
        (101, "2025-03-01T10:05:00.000000Z"),
        (202, "2025-03-02T08:30:00.000000Z"),
    ]
    assert all(len(r.levels) == 2 for r in records)


def _process_worker(path: str, index: int, store: CorrectionStore | None, queue: Any) -> None:
    """Record the shared webhooks plus one of its own; report the statuses."""
    own = store if store is not None else CorrectionStore(Path(path))
    payloads = _payload_set()
    mine = load("annotation_created.json")
    mine["annotation"].update(id=300 + index, updated_at=f"2025-03-03T10:00:0{index}Z")
    payloads.append(mine)
    random.Random(index).shuffle(payloads)
    statuses = [own.record_webhook(p, schema=SCHEMA).status for p in payloads * 2]
    queue.put(statuses)


def test_four_processes_writing_the_same_and_different_revisions(tmp_path: Path):
    path = tmp_path / "shared.sqlite3"
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    inherited = CorrectionStore(path)  # opened before fork: children must not reuse its connection
    inherited.record_webhook(load("annotation_created.json"), schema=SCHEMA)
    procs = [
        ctx.Process(target=_process_worker, args=(str(path), i, inherited if i % 2 else None, queue))
        for i in range(4)
    ]
    for p in procs:
        p.start()
    results = [queue.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    statuses = [s for r in results for s in r]
    assert statuses.count("created") == 2 + 4  # updated + with_prediction + one own revision each
    records = inherited.list()
    assert len(records) == 3 + 4
    assert len({(r.annotation_id, r.revision) for r in records}) == 7
    assert all(len(r.levels) == 2 for r in records)
    inherited.close()


def _open_and_record(path: str, index: int, barrier: Any) -> None:
    barrier.wait()
    with CorrectionStore(Path(path)) as store:
        body = load("annotation_created.json")
        body["annotation"]["id"] = 500 + index
        assert store.record_webhook(body, schema=SCHEMA).status == "created"


def test_processes_creating_a_new_store_at_the_same_moment(tmp_path: Path):
    ctx = multiprocessing.get_context("fork")
    for trial in range(8):
        path = tmp_path / f"new-{trial}.sqlite3"
        barrier = ctx.Barrier(4)
        procs = [ctx.Process(target=_open_and_record, args=(str(path), i, barrier)) for i in range(4)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(timeout=60)
        assert [p.exitcode for p in procs] == [0, 0, 0, 0]
        with CorrectionStore(path) as store:
            assert sorted(r.annotation_id for r in store.list()) == [500, 501, 502, 503]


def test_kill_9_mid_stream_loses_no_acknowledged_record(tmp_path: Path):
    path = tmp_path / "killed.sqlite3"
    acked, returncode = kill_9_after_acks(
        [WRITER_SCRIPT, str(path), str(WEBHOOKS / "annotation_created_with_prediction.json")],
        40,
        "the writer died before acknowledging 40 writes",
    )
    assert returncode == -signal.SIGKILL

    assert_sqlite_intact(path)
    with CorrectionStore(path) as store:
        records = {r.id: r for r in store.list()}
        for record_id, revision in acked:
            assert records[record_id].revision == revision
        assert len(records) >= len(acked)  # a write may have committed before it was printed
        for record in records.values():  # no half-written record: every one has both levels
            assert [lvl.level for lvl in record.levels] == [1, 2]
            assert record.levels[1].iou == pytest.approx(0.6)
            assert np.array_equal(present(record.levels[1].accepted_mask()), ACC_L2)


# --------------------------------------------------------------------------------- queries and stats


def test_list_filters_and_stats(store: CorrectionStore):
    store.record_webhook(load("annotation_created.json"), schema=SCHEMA)  # 2025-03-01 10:00, no prediction
    store.record_webhook(load("annotation_updated.json"), schema=SCHEMA)  # 10:05
    store.record_webhook(load("annotation_created_with_prediction.json"), schema=SCHEMA)  # 03-02, IoU .6
    other = load("annotation_created_with_prediction.json")
    other["annotation"].update(id=404, task=44, project=9, completed_by=7, updated_at="2025-03-05T00:00:00Z")
    other["annotation"]["result"] = [
        brush("t", PRED_L1, L1),
        brush("u", PRED_L2, L2),
    ]  # accepted as predicted
    other["project"] = project(9)
    store.record_webhook(other, schema=SCHEMA)

    assert [r.annotation_id for r in store.list(project=3)] == [101, 101, 202]
    assert [r.annotation_id for r in store.list(project=9)] == [404]
    assert [r.id for r in store.list(since="2025-03-01T10:05:00Z")] == [2, 3, 4]
    assert [r.id for r in store.list(until="2025-03-01T10:05:00Z")] == [1]
    assert [r.id for r in store.list(since="2025-03-01T10:01:00", until="2025-03-03")] == [2, 3]
    assert [r.id for r in store.list(min_correction=0.4)] == [1, 2, 3]  # 1.0, 1.0, 0.4 (boundary kept)
    assert [r.id for r in store.list(min_correction=0.41)] == [1, 2]
    assert [r.id for r in store.list(min_correction=0.0)] == [1, 2, 3, 4]
    assert [r.id for r in store.list(latest_only=True)] == [2, 3, 4]
    assert [r.id for r in store.list(until="2025-03-01T10:01:00Z", latest_only=True)] == [1]

    stats = store.stats()
    assert (stats["records"], stats["annotations"], stats["with_prediction"]) == (4, 3, 2)
    assert stats["mean_correction"] == pytest.approx((1.0 + 0.4 + 0.0) / 3)
    level1, level2 = stats["levels"]
    assert (level1["level"], level1["labels"], level1["count"], level1["with_prediction"]) == (1, [L1], 3, 2)
    assert level1["mean_iou"] == pytest.approx((0.75 + 1.0) / 2)
    assert level2["mean_iou"] == pytest.approx((0.6 + 1.0) / 2)
    assert stats["annotators"] == {"7": 2, "8": 1}
    assert stats["model_versions"] == {"cores-test-1": 2, "none": 1}
    assert store.stats(project=9)["annotations"] == 1
    assert store.get(12345) is None


# --------------------------------------------------------------------------------------- web process


def test_importing_the_correction_modules_does_not_import_torch():
    code = (
        "import sys, backend.corrections.store, backend.corrections.export, backend.corrections.cli\n"
        "heavy = ('torch', 'cores.inference.pipeline', 'cores.modeling.model', 'transformers')\n"
        "bad = [m for m in heavy if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_record_webhook_time_for_a_1024x768_two_level_annotation(store: CorrectionStore):
    h, w = 768, 1024
    yy, xx = np.mgrid[:h, :w]
    blob1 = ((yy - 400) / 300.0) ** 2 + ((xx - 500) / 420.0) ** 2 <= 1
    blob2 = ((yy - 380) / 90.0) ** 2 + ((xx - 520) / 160.0) ** 2 <= 1
    shifted2 = ((yy - 390) / 95.0) ** 2 + ((xx - 540) / 150.0) ** 2 <= 1
    payload = load("annotation_created_with_prediction.json")
    payload["annotation"]["result"] = [prompt(QUERY), brush("a", blob1, L1), brush("b", shifted2, L2)]
    payload["task"]["predictions"][0]["result"] = [brush("p", blob1, L1, 0.9), brush("q", blob2, L2, 0.8)]
    times = []
    for i in range(5):
        payload["annotation"]["updated_at"] = f"2025-05-01T00:00:0{i}Z"
        start = time.perf_counter()
        outcome = store.record_webhook(payload, schema=SCHEMA)
        times.append(time.perf_counter() - start)
        assert outcome.status == "created"
    assert present(store.get(present(outcome.record_id))).levels[0].iou == 1.0
    print(
        f"\nrecord_webhook, 1024x768, 2 accepted + 2 predicted levels: "
        f"median {sorted(times)[2] * 1000:.1f} ms, max {max(times) * 1000:.1f} ms"
    )
