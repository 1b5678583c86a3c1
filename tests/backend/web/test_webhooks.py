"""POST /webhook through the Flask app: annotation events land in the correction store exactly once,
deletions, malformed bodies, a kill -9 mid-stream, and START_TRAINING enqueueing one training job.

The webhook bodies are the fixtures of ``tests.backend.webhook_fixtures`` (rectangle masks, hand-checked
IoU); the store's own thread, process and kill tests live in ``tests/backend/corrections/test_store.py``."""

from __future__ import annotations

import copy
import json
import os
import random
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient

from backend.corrections.store import CorrectionStore
from backend.jobs import queues
from backend.jobs.embedded import REPO_ROOT
from backend.operations.settings import Settings
from backend.training.requests import ACTIVE_KEY, TRAIN_JOB
from tests.backend.signing import signed_client
from tests.backend.webhook_fixtures import (
    WEBHOOKS,
    assert_sqlite_intact,
    kill_9_after_acks,
    load,
    project,
)


def store_of(settings: Settings) -> CorrectionStore:
    return CorrectionStore(settings.model_dir / "corrections.sqlite3")


def post(client: FlaskClient, body: Any) -> tuple[int, dict[str, Any]]:
    response = client.post("/webhook", json=body)
    return response.status_code, response.get_json()


def test_annotation_webhooks_are_recorded_once_each(client: FlaskClient, settings: Settings) -> None:
    created, updated = load("annotation_created.json"), load("annotation_updated.json")

    assert post(client, created) == (
        200,
        {"status": "created", "action": "ANNOTATION_CREATED", "record": 1, "detail": "stored"},
    )
    for _ in range(2):  # Label Studio retries, proxies replay
        code, answer = post(client, created)
        assert (code, answer["status"], answer["record"]) == (200, "duplicate", 1)
    assert post(client, updated)[1]["status"] == "created"
    code, answer = post(client, load("annotation_created_with_prediction.json"))
    assert (code, answer["status"], answer["record"]) == (200, "created", 3)

    with store_of(settings) as store:
        records = store.list()
        assert [(r.annotation_id, r.action) for r in records] == [
            (101, "ANNOTATION_CREATED"),
            (101, "ANNOTATION_UPDATED"),
            (202, "ANNOTATION_CREATED"),
        ]
        with_prediction = records[2]
        assert (with_prediction.prediction_id, with_prediction.model_version) == (55, "cores-test-1")
        assert [lvl.iou for lvl in with_prediction.levels] == [pytest.approx(0.75), pytest.approx(0.6)]
        assert with_prediction.query == "Where would you keep the knives?"


@pytest.mark.parametrize("fixture", ["annotation_deleted.json", "annotations_deleted.json"])
def test_deletions_mark_the_annotations_records(
    client: FlaskClient, settings: Settings, fixture: str
) -> None:
    for name in (
        "annotation_created.json",
        "annotation_updated.json",
        "annotation_created_with_prediction.json",
    ):
        post(client, load(name))
    code, answer = post(client, load(fixture))
    assert (code, answer["status"], answer["action"]) == (200, "deleted", load(fixture)["action"])
    assert "2 record(s)" in answer["detail"]
    assert post(client, load(fixture))[1]["status"] == "deleted"  # a replay changes nothing
    with store_of(settings) as store:
        assert [r.annotation_id for r in store.list()] == [202]
        assert store.stats()["deleted_records"] == 2


def test_concurrent_replays_through_the_app_store_one_record_per_revision(
    app: Flask, settings: Settings
) -> None:
    payloads = [
        load("annotation_created.json"),
        load("annotation_updated.json"),
        load("annotation_created_with_prediction.json"),
    ]
    statuses: list[str] = []
    lock = threading.Lock()
    barrier = threading.Barrier(8)

    def send(seed: int) -> None:
        client = signed_client(app)
        order = payloads * 3
        random.Random(seed).shuffle(order)
        barrier.wait()
        for body in order:
            code, answer = post(client, body)
            assert code == 200, answer
            with lock:
                statuses.append(answer["status"])

    threads = [threading.Thread(target=send, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(statuses) == 72
    assert (statuses.count("created"), statuses.count("duplicate")) == (3, 69)
    with store_of(settings) as store:
        records = store.list()
    assert sorted((r.annotation_id, r.revision) for r in records) == [
        (101, "2025-03-01T10:00:00.123456Z"),
        (101, "2025-03-01T10:05:00.000000Z"),
        (202, "2025-03-02T08:30:00.000000Z"),
    ]
    assert all(len(r.levels) == 2 for r in records)


def _without_label_config(body: dict[str, Any]) -> None:
    body["project"].pop("label_config")


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda b: b.pop("annotation"), "no 'annotation' object"),
        (lambda b: b["annotation"].pop("id"), "annotation.id is missing"),
        (lambda b: b["annotation"].pop("updated_at"), "updated_at is missing"),
        (lambda b: b["annotation"].update(updated_at="yesterday"), "ISO 8601"),
        (lambda b: b["annotation"]["result"][1]["value"].update(rle=[1, 2, 3]), "annotation 101.result[1]"),
        (_without_label_config, "needs project.label_config"),
        (lambda b: b.update(project=3), "needs project.label_config"),
    ],
)
def test_malformed_annotation_bodies_are_400_and_record_nothing(
    client: FlaskClient, settings: Settings, edit, message: str
) -> None:
    body = load("annotation_created.json")
    edit(body)
    code, answer = post(client, body)
    assert code == 400
    assert answer["error"]["code"] == "bad_request"
    assert message in answer["error"]["message"]
    with store_of(settings) as store:
        assert store.list(include_deleted=True) == []


def test_other_malformed_bodies_are_400(client: FlaskClient) -> None:
    assert client.post("/webhook", data="{not json", content_type="application/json").status_code == 400
    assert post(client, {"action": "ANNOTATION_DELETED", "project": project()})[0] == 400
    code, answer = post(client, {"action": "START_TRAINING", "project": {"title": "no id"}})
    assert code == 401  # no project: no secret can vouch for it
    assert answer["error"]["code"] == "unauthorized"


def test_unusable_configs_skipped_tasks_and_unknown_actions_are_ignored(
    client: FlaskClient, settings: Settings
) -> None:
    no_brush = load("annotation_created.json")
    no_brush["project"]["label_config"] = (
        '<View><Image name="image" value="$image"/>'
        '<RectangleLabels name="box" toName="image"><Label value="Dog"/></RectangleLabels></View>'
    )
    code, answer = post(client, no_brush)
    assert (code, answer["status"]) == (200, "ignored")
    assert "<BrushLabels>" in answer["detail"]
    skipped = load("annotation_created.json")
    skipped["annotation"]["was_cancelled"] = True
    assert post(client, skipped)[1]["status"] == "ignored"
    assert post(client, {"action": "TASKS_CREATED", "project": project()}) == (
        200,
        {"status": "ignored", "action": "TASKS_CREATED"},
    )
    with store_of(settings) as store:
        assert store.list(include_deleted=True) == []


def test_labeling_configs_are_parsed_once_per_config(
    client: FlaskClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    from backend.label_studio import label_config

    calls: list[str] = []
    real = label_config.parse_label_config

    def counting(config: str):
        calls.append(config)
        return real(config)

    label_config.configure_schema_cache(0)  # the memo is per process: start from an empty one
    label_config.configure_schema_cache(label_config.DEFAULT_CACHE_BYTES)
    monkeypatch.setattr(label_config, "parse_label_config", counting)
    for name in (
        "annotation_created.json",
        "annotation_updated.json",
        "annotation_created_with_prediction.json",
    ):
        assert post(client, load(name))[0] == 200
    assert len(calls) == 1


_WEB_WRITER = """
import json, sys
from pathlib import Path
from backend.web.app import create_app
from backend.operations.settings import Settings
from tests.backend.signing import signed_client
client = signed_client(create_app(Settings(redis_url=sys.argv[3], model_dir=Path(sys.argv[1]))))
payload = json.loads(Path(sys.argv[2]).read_text())
for i in range(100000):
    payload["annotation"]["updated_at"] = f"2025-04-01T00:00:00.{i:06d}Z"
    answer = client.post("/webhook", json=payload).get_json()
    print(answer["record"], payload["annotation"]["updated_at"], flush=True)
"""


def test_kill_9_during_webhook_writes_through_the_web_leaves_the_store_consistent(
    tmp_path: Path, redis_url: str
) -> None:
    model_dir = tmp_path / "models"
    acked, _ = kill_9_after_acks(
        [_WEB_WRITER, str(model_dir), str(WEBHOOKS / "annotation_created_with_prediction.json"), redis_url],
        25,
        "the web writer died before acknowledging 25 webhooks",
    )

    path = model_dir / "corrections.sqlite3"
    assert_sqlite_intact(path)
    with CorrectionStore(path) as store:
        records = {r.id: r for r in store.list()}
    for record_id, revision in acked:  # every acknowledged webhook is there...
        assert records[record_id].revision == revision
    for record in records.values():  # ...and no record is half-written
        assert [lvl.level for lvl in record.levels] == [1, 2]


# ------------------------------------------------------------------------------------------ training


def _training(project_id: int) -> dict[str, Any]:
    return {"action": "START_TRAINING", "project": project(project_id)}


def test_start_training_enqueues_one_job_per_project(client: FlaskClient, redis_conn: redis.Redis) -> None:
    code, first = post(client, _training(3))
    assert (code, first["status"], first["action"], first["project"]) == (200, "queued", "START_TRAINING", 3)
    again = post(client, _training(3))[1]
    assert (again["status"], again["job"]) == ("already_queued", first["job"])
    other = post(client, _training(4))[1]
    assert other["status"] == "queued"
    assert other["job"] != first["job"]

    train = queues.get_queue(redis_conn, queues.TRAIN)
    assert sorted(train.job_ids) == sorted([first["job"], other["job"]])
    job = queues.fetch_job(redis_conn, first["job"])
    assert job is not None
    assert job.func_name == TRAIN_JOB
    assert job.args[0]["project"] == 3
    assert job.args[0]["source"] == "webhook"
    assert job.timeout == 6 * 3600  # TRAIN_TIMEOUT, not JOB_TIMEOUT
    info = client.get(f"/jobs/{first['job']}").get_json()
    assert (info["status"], info["queue"]) == ("queued", "train")

    job.cancel()  # once the job is over (here: cancelled), the next click trains again
    third = post(client, _training(3))[1]
    assert third["status"] == "queued"
    assert third["job"] != first["job"]
    assert redis_conn.get(f"{ACTIVE_KEY}3") == third["job"].encode()


def test_concurrent_start_training_clicks_enqueue_one_job(app: Flask, redis_conn: redis.Redis) -> None:
    answers: list[Mapping[str, Any]] = []
    barrier = threading.Barrier(8)

    def click() -> None:
        client = signed_client(app)
        barrier.wait()
        answers.append(post(client, _training(5))[1])

    threads = [threading.Thread(target=click) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(a["status"] for a in answers) == ["already_queued"] * 7 + ["queued"]
    assert len({a["job"] for a in answers}) == 1
    assert queues.get_queue(redis_conn, queues.TRAIN).count == 1


def test_train_command_enqueues_once(settings: Settings, redis_conn: redis.Redis) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CORES_", "REDIS_URL", "MODEL_"))}
    env.update(settings.to_env(), PYTHONPATH=str(REPO_ROOT))

    def run(*args: str) -> dict[str, Any]:
        done = subprocess.run(
            [sys.executable, "-m", "backend", "train", *args],
            cwd=REPO_ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    first = run("--project", "3", "--steps", "5", "--min-correction", "0.2")
    assert first["status"] == "queued"
    assert run("--project", "3")["job"] == first["job"]
    assert run("--project", "3")["status"] == "already_queued"
    job = queues.fetch_job(redis_conn, first["job"])
    assert job is not None
    request = job.args[0]
    assert (request["project"], request["steps"], request["min_correction"], request["source"]) == (
        3,
        5,
        0.2,
        "cli",
    )
    bad = subprocess.run(
        [sys.executable, "-m", "backend", "train", "--min-correction", "2"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 2
    assert "between 0 and 1" in bad.stderr


def test_webhook_answers_stay_fast(client: FlaskClient) -> None:
    body = load("annotation_created_with_prediction.json")
    post(client, body)  # opens the store, parses the config
    started = time.perf_counter()
    for i in range(20):
        replay = copy.deepcopy(body)
        replay["annotation"]["updated_at"] = f"2025-05-01T00:00:{i:02d}Z"
        assert post(client, replay)[1]["status"] == "created"
    assert (time.perf_counter() - started) / 20 < 0.1  # synchronous SQLite commit, no network, no model


def test_webhooks_never_import_torch_in_the_web(
    tmp_path: Path, redis_url: str, redis_conn: redis.Redis
) -> None:
    code = f"""
import json, sys
from pathlib import Path
from backend.web.app import create_app
from backend.operations.settings import Settings
from tests.backend.signing import signed_client
client = signed_client(create_app(Settings(redis_url={redis_url!r}, model_dir=Path({str(tmp_path)!r}))))
body = json.loads(Path({str(WEBHOOKS / "annotation_created_with_prediction.json")!r}).read_text())
assert client.post("/webhook", json=body).get_json()["status"] == "created"
train = client.post("/webhook", json={{"action": "START_TRAINING", "project": {{"id": 77}}}}).get_json()
assert train["status"] == "queued", train
heavy = (
    "torch", "transformers", "cores.inference.pipeline", "backend.training.job", "backend.jobs.worker",
    "backend.jobs.predict",
)
print(",".join(m for m in heavy if m in sys.modules) or "none")
"""
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "none"
    assert queues.get_queue(redis_conn, queues.TRAIN).count == 1
