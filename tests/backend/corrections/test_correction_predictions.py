"""The prediction an annotation started from reaches its correction record with Label Studio 1.23's real
webhook payloads (no ``task.predictions``, ``annotation.prediction == {}``, only ``parent_prediction``):

- the workers' prediction memory in Redis (interactive and batch predictions), read by the webhook;
- a prediction named only by id, fetched from (a fake) Label Studio after the webhook was answered;
- ``python -m backend corrections enrich`` for records still missing their prediction;
- ``CorrectionStore.update_prediction`` / ``missing_predictions``.

Real Redis, real rq worker on the tiny model, the Flask test client, the fake Label Studio API.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import pytest
import redis
from flask.testing import FlaskClient
from rq import SimpleWorker

from backend.corrections import cli as corrections_cli
from backend.corrections.prediction_memory import (
    MAX_ENTRIES,
    RememberedPrediction,
    memory_key,
    recall,
    remember,
)
from backend.corrections.store import CorrectionStore
from backend.jobs.payloads import PredictRequest, TaskInput
from backend.jobs.predict import _remember
from backend.label_studio.label_config import parse_label_config, shipped_label_config
from backend.operations.settings import Settings
from backend.web.webhooks import CorrectionWebhooks
from tests.backend.conftest import PROMPT_CONFIG, run_with_worker
from tests.backend.fake_label_studio import TOKEN, FakeLabelStudio, data_uri, png_bytes
from tests.backend.payloads import predict_body
from tests.backend.webhook_fixtures import annotation_webhook, load

SHIPPED = shipped_label_config()
SCHEMA = parse_label_config(SHIPPED)
WEEK_S = 7 * 24 * 3600


def store_of(settings: Settings) -> CorrectionStore:
    return CorrectionStore(settings.model_dir / "corrections.sqlite3")


def handler_of(client: FlaskClient) -> CorrectionWebhooks:
    handler: CorrectionWebhooks = client.application.extensions["cores"].webhook_handler
    return handler


def real_ls_payload(name: str = "annotation_created_with_prediction.json") -> dict[str, Any]:
    """A fixture webhook shaped like Label Studio 1.23's: the task has no ``predictions``, the annotation's
    ``prediction`` is ``{}`` and only ``parent_prediction`` names the prediction."""
    body = load(name)
    body["task"].pop("predictions", None)
    body["annotation"]["prediction"] = {}
    return body


def fixture_prediction() -> dict[str, Any]:
    """The prediction (id 55, ``cores-test-1``) the fixture's annotation started from."""
    (prediction,) = load("annotation_created_with_prediction.json")["task"]["predictions"]
    return dict(prediction, task=22)


def interactive(
    worker: SimpleWorker, client: FlaskClient, task: int, data: dict[str, Any], query: str
) -> Any:
    response = run_with_worker(
        worker, lambda: client.post("/predict", json=predict_body([(task, data)], prompt=query))
    )
    assert response.status_code == 200, response.get_json()
    return response.get_json()["results"][0]


# ---- prediction memory ------------------------------------------------------------------------------------


def test_an_accepted_interactive_prediction_is_recorded_from_the_prediction_memory(
    client: FlaskClient, worker: SimpleWorker, redis_conn: redis.Redis, settings: Settings
) -> None:
    data = {"image": data_uri(png_bytes(40, 30, seed=1))}
    first = interactive(worker, client, 7, data, "the cup")
    second = interactive(worker, client, 7, data, "the plate")

    key = memory_key(1, 7)  # predict_body's project "1.1795672559"
    assert WEEK_S - 60 < redis_conn.ttl(key) <= WEEK_S
    entries = [json.loads(item) for item in redis_conn.lrange(key, 0, -1)]
    assert [(e["query"], e["kind"], e["model_version"]) for e in entries] == [
        ("the plate", "interactive", "cores-cores"),
        ("the cup", "interactive", "cores-cores"),
    ]
    assert (entries[0]["width"], entries[0]["height"]) == (40, 30)
    assert [region["label"] for region in entries[0]["regions"]] == list(SCHEMA.labels)
    remembered = recall(redis_conn, 1, 7, "  The CUP ")  # the annotation's query picks the entry
    assert remembered is not None
    assert remembered.query == "the cup"
    assert [region.value["rle"] for region in remembered.regions] == [
        r["value"]["rle"] for r in first["result"]
    ]
    assert remembered.regions[0].score == pytest.approx(first["result"][0]["score"])

    # the annotator kept the first prediction unchanged (older than the second: the query decides)
    body = annotation_webhook(1, 7, data, first["result"], "the cup", annotation=501)
    answer = client.post("/webhook", json=body)
    assert answer.status_code == 200, answer.get_json()
    assert answer.get_json()["status"] == "created"
    with store_of(settings) as store:
        (record,) = store.list()
    assert (record.model_version, record.query, record.prediction_id) == ("cores-cores", "the cup", None)
    assert [lvl.predicted is not None for lvl in record.levels] == [True, True]
    assert [lvl.iou for lvl in record.levels] == [pytest.approx(1.0)] * 2
    assert record.final_iou == pytest.approx(1.0)
    assert [lvl.predicted_score for lvl in record.levels] == [
        pytest.approx(r["score"]) for r in first["result"]
    ]
    # the other query's prediction would not be an exact match (the tiny model answers per query)
    if [r["value"]["rle"] for r in second["result"]] != [r["value"]["rle"] for r in first["result"]]:
        other = annotation_webhook(1, 7, data, first["result"], "the plate", annotation=502)
        client.post("/webhook", json=other)
        with store_of(settings) as store:
            assert store.list()[-1].final_iou != pytest.approx(1.0)


def test_batch_predictions_are_remembered_per_task(
    client: FlaskClient, worker: SimpleWorker, redis_conn: redis.Redis
) -> None:
    tasks = [
        (11, {"image": data_uri(png_bytes(16, 12, seed=2)), "query": "the mug"}),
        (12, {"image": "http://127.0.0.1:1/gone.png", "query": "the spoon"}),  # fails: nothing kept
    ]
    response = run_with_worker(
        worker, lambda: client.post("/predict", json=predict_body(tasks, config=PROMPT_CONFIG))
    )
    assert response.status_code == 200
    results = response.get_json()["results"]
    remembered = recall(redis_conn, 1, 11, "the mug")
    assert remembered is not None
    assert (remembered.kind, remembered.query, remembered.width, remembered.height) == (
        "bulk",
        "the mug",
        16,
        12,
    )
    assert [region.value["rle"] for region in remembered.regions] == [
        r["value"]["rle"] for r in results[0]["result"]
    ]
    assert "error" in results[1]
    assert redis_conn.exists(memory_key(1, 12)) == 0


def test_the_memory_keeps_a_few_entries_per_task_and_can_be_turned_off(
    redis_conn: redis.Redis, settings: Settings
) -> None:
    prediction = fixture_prediction()
    for i in range(MAX_ENTRIES + 2):
        entry = RememberedPrediction.from_prediction(prediction, query=f"q{i}", kind="bulk", schema=SCHEMA)
        assert entry is not None
        remember(redis_conn, 3, [(22, entry)], ttl_s=60)
    assert redis_conn.llen(memory_key(3, 22)) == MAX_ENTRIES
    newest = recall(redis_conn, 3, 22, "no such query")
    assert newest is not None
    assert newest.query == f"q{MAX_ENTRIES + 1}"
    assert recall(redis_conn, 3, 23, "q1") is None

    request = PredictRequest(
        tasks=(TaskInput(id=5, image="x", query="q"),), schema=SCHEMA, model_version="v", project=3
    )
    _remember(redis_conn, settings.with_changes(prediction_memory_ttl=0), request, [prediction])
    assert redis_conn.exists(memory_key(3, 5)) == 0
    _remember(redis_conn, settings, request, [prediction])
    assert redis_conn.exists(memory_key(3, 5)) == 1


def test_the_memory_comes_first_and_links_the_parent_prediction(
    client: FlaskClient, redis_conn: redis.Redis, settings: Settings, fake_ls: FakeLabelStudio
) -> None:
    entry = RememberedPrediction.from_prediction(
        fixture_prediction(), query="Where would you keep the knives?", kind="bulk", schema=SCHEMA
    )
    assert entry is not None
    remember(redis_conn, 3, [(22, entry)], ttl_s=60)

    answer = client.post("/webhook", json=real_ls_payload())
    assert answer.get_json()["status"] == "created"
    assert handler_of(client).drain(10)
    assert not any(call.startswith("GET /api/predictions/") for call in fake_ls.calls)
    with store_of(settings) as store:
        (record,) = store.list()
    assert (record.prediction_id, record.model_version) == (55, "cores-test-1")
    assert [lvl.iou for lvl in record.levels] == [pytest.approx(0.75), pytest.approx(0.6)]


# ---- parent_prediction fetched after the answer -----------------------------------------------------------


def test_a_parent_prediction_is_fetched_after_the_webhook_is_answered(
    client: FlaskClient, settings: Settings, fake_ls: FakeLabelStudio
) -> None:
    fake_ls.predictions.append(fixture_prediction())
    fake_ls.prediction_delay_s = 1.5

    started = time.monotonic()
    answer = client.post("/webhook", json=real_ls_payload())
    assert time.monotonic() - started < 1.0  # Label Studio's request does not wait for the fetch
    assert answer.status_code == 200
    assert answer.get_json()["status"] == "created"
    with store_of(settings) as store:
        (record,) = store.list()
        assert (record.prediction_id, record.model_version) == (55, None)
        assert [lvl.predicted for lvl in record.levels] == [None, None]
        assert [r.id for r in store.missing_predictions()] == [record.id]

    assert handler_of(client).drain(10)
    assert "GET /api/predictions/55/" in fake_ls.calls
    with store_of(settings) as store:
        (record,) = store.list()
        assert (record.prediction_id, record.model_version) == (55, "cores-test-1")
        assert [lvl.iou for lvl in record.levels] == [pytest.approx(0.75), pytest.approx(0.6)]
        assert record.final_iou == pytest.approx(0.6)
        assert store.missing_predictions() == []

    # a replayed webhook is a duplicate and fetches nothing again
    fake_ls.calls.clear()
    assert client.post("/webhook", json=real_ls_payload()).get_json()["status"] == "duplicate"
    assert handler_of(client).drain(10)
    assert fake_ls.calls == []


def test_a_parent_prediction_gone_from_label_studio_is_logged(
    client: FlaskClient, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    body = real_ls_payload()
    body["annotation"]["parent_prediction"] = 999
    with caplog.at_level(logging.WARNING, logger="backend.web.webhooks"):
        assert client.post("/webhook", json=body).get_json()["status"] == "created"
        assert handler_of(client).drain(10)
    assert "prediction 999 no longer exists in Label Studio" in caplog.text
    with store_of(settings) as store:
        (record,) = store.list()
    assert record.prediction_id == 999
    assert [lvl.predicted for lvl in record.levels] == [None, None]


# ---- the store and the enrich command ----------------------------------------------------------------------


def test_update_prediction_gives_the_same_record_as_a_payload_with_the_prediction(tmp_path: Path) -> None:
    with CorrectionStore(tmp_path / "a.sqlite3") as direct, CorrectionStore(tmp_path / "b.sqlite3") as later:
        direct.record_webhook(load("annotation_created_with_prediction.json"), schema=SCHEMA)
        outcome = later.record_webhook(real_ls_payload(), schema=SCHEMA)
        assert outcome.record_id is not None
        assert later.update_prediction(outcome.record_id, fixture_prediction(), schema=SCHEMA)
        assert not later.update_prediction(outcome.record_id + 1, fixture_prediction(), schema=SCHEMA)
        (want,), (got,) = direct.list(), later.list()
    assert got.levels == want.levels
    assert (got.prediction_id, got.model_version, got.final_level, got.final_iou) == (
        want.prediction_id,
        want.model_version,
        want.final_level,
        want.final_iou,
    )


def test_corrections_enrich_resolves_what_the_web_could_not(
    tmp_path: Path, fake_ls: FakeLabelStudio, capsys: pytest.CaptureFixture[str]
) -> None:
    fake_ls.label_config = SHIPPED  # the fake project's config (read by enrich)
    fake_ls.predictions.append(fixture_prediction())
    db = tmp_path / "corrections.sqlite3"
    gone = real_ls_payload("annotation_created_with_prediction.json")
    gone["annotation"].update(id=203, parent_prediction=77)
    with CorrectionStore(db) as store:
        store.record_webhook(real_ls_payload(), schema=SCHEMA)
        store.record_webhook(gone, schema=SCHEMA)
        assert len(store.missing_predictions()) == 2
        assert store.missing_predictions(project=4) == []

    unreachable = ["enrich", "--db", str(db), "--label-studio-url", "http://127.0.0.1:1", "--api-key", TOKEN]
    assert corrections_cli.main(unreachable) == 1
    failed = json.loads(capsys.readouterr().out)
    assert failed["checked"] == 2
    assert len(failed["failed"]) == 2

    args = ["enrich", "--db", str(db), "--label-studio-url", fake_ls.url, "--api-key", TOKEN]
    assert corrections_cli.main(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["checked"], summary["updated"], summary["failed"]) == (2, [1], {})
    assert summary["gone"] == {"2": 77}
    with CorrectionStore(db) as store:
        record = store.get(1)
        assert record is not None
        assert record.model_version == "cores-test-1"
        assert [lvl.iou for lvl in record.levels] == [pytest.approx(0.75), pytest.approx(0.6)]
        assert [r.id for r in store.missing_predictions()] == [2]
