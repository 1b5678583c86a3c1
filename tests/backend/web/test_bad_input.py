"""Bad input gets a per-task error or a 4xx with a message, never a 500, and never fails its neighbours.

The inputs of the outside test: queries holding ``<image>``, added tokens, lone surrogates, only NULs or
zero-width characters; malformed URLs (``http://[::1/x.png``, port 99999) and a NUL in a local path; ids
in Unicode digits, beyond 64 bits or thousands of digits long; text that no UTF-8 can hold in configs,
tokens and ids; over-long job ids; bodies, task counts and brush masks beyond their limits.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import redis
from flask.testing import FlaskClient
from rq import SimpleWorker

from backend.corrections.prediction_memory import recall
from backend.jobs import queues
from backend.jobs.payloads import PredictRequest, TaskInput
from backend.label_studio.connection import resolve
from backend.label_studio.label_config import parse_label_config
from backend.label_studio.rle import encode_mask
from backend.operations.settings import Settings
from backend.web.app import create_app
from tests.backend.conftest import PROMPT_CONFIG, run_with_worker, work
from tests.backend.fake_label_studio import data_uri, png_bytes
from tests.backend.payloads import predict_body
from tests.backend.webhook_fixtures import load

GOOD = data_uri(png_bytes(24, 24, seed=5))


def post_raw(client: FlaskClient, path: str, body: Any) -> Any:
    """POST ``body`` as JSON with non-ASCII escaped (``\\ud800`` stays an escape, as a client sends it)."""
    return client.post(path, data=json.dumps(body, ensure_ascii=True), content_type="application/json")


def codes_of(results: list[dict[str, Any]], ids: list[int]) -> dict[int, str]:
    return {task: r["error"]["code"] for task, r in zip(ids, results, strict=True) if "error" in r}


def test_one_bad_task_never_fails_its_batch(
    client: FlaskClient, worker: SimpleWorker, redis_conn: redis.Redis
) -> None:
    tasks = [
        (1, {"image": GOOD, "query": "the  big\tdog "}),  # inner whitespace is the query's own
        (2, {"image": GOOD, "query": "segment <image> here"}),
        (3, {"image": GOOD, "query": "the \ud800 dog"}),
        (4, {"image": GOOD, "query": "\x00\x00"}),
        (5, {"image": GOOD, "query": "\u200b\u200d\ufeff "}),
        (6, {"image": GOOD, "query": "the [SEG] token"}),
        (7, {"image": "http://[::1/x.png", "query": "the dog"}),
        (8, {"image": "http://example.com:99999/x.png", "query": "the dog"}),
        (9, {"image": "/srv/images/a\x00b.png", "query": "the dog"}),
        (10, {"image": "file:///srv/images/a%00b.png", "query": "the dog"}),
        (11, {"image": GOOD, "query": "the cat"}),
    ]
    ids = [task for task, _ in tasks]
    body = predict_body(tasks, config=PROMPT_CONFIG)
    response = run_with_worker(worker, lambda: post_raw(client, "/predict", body))
    assert response.status_code == 200, response.get_json()
    results = response.get_json()["results"]
    assert "result" in results[0]
    assert "result" in results[-1]
    assert codes_of(results, ids) == {
        2: "bad_query",
        3: "bad_query",
        4: "empty_query",
        5: "empty_query",
        6: "bad_query",
        7: "image_fetch",
        8: "image_fetch",
        9: "image_fetch",
        10: "image_fetch",
    }
    assert all(results[i]["error"]["reason"] == "bad_url" for i in (6, 7, 8, 9))
    remembered = recall(redis_conn, 1, 1, None)
    assert remembered is not None
    assert remembered.query == "the  big\tdog"


def test_bad_tasks_inside_a_job_are_per_task_errors(
    settings: Settings, redis_conn: redis.Redis, worker: SimpleWorker
) -> None:
    """Tasks that reach the worker anyway (enqueued by another client): whatever the model or the fetcher
    raises on one task is that task's error; the others are predicted."""
    schema = parse_label_config(PROMPT_CONFIG)
    tasks = (
        TaskInput(1, GOOD, "the dog"),
        TaskInput(2, GOOD, "segment <image> <image> here"),
        TaskInput(3, GOOD, "the \ud800 dog"),
        TaskInput(4, "http://[::1/x.png", "the dog"),
        TaskInput(5, "/srv/a\x00b.png", "the dog"),
        TaskInput(6, GOOD, "the cat"),
    )
    request = PredictRequest(tasks=tasks, schema=schema, model_version="cores-cores").to_json()
    job = queues.enqueue(redis_conn, settings, queues.BULK, queues.PREDICT_JOB, request)
    assert work(worker)
    outcome = queues.job_outcome(redis_conn, job.id)
    assert outcome is not None
    assert outcome[1] is None, outcome
    results = outcome[0]["results"]
    assert "result" in results[0]
    assert "result" in results[5]
    assert all("error" in results[i] for i in (1, 2, 3, 4)), results


@pytest.mark.parametrize(
    ("query", "code"),
    [("the <image> dog", "bad_query"), ("a \ud800", "bad_query"), ("\x00", "empty_query")],
)
def test_interactive_bad_queries_get_an_error_answer_without_a_job(
    client: FlaskClient, redis_conn: redis.Redis, query: str, code: str
) -> None:
    response = post_raw(client, "/predict", predict_body([(1, {"image": GOOD})], prompt=query))
    assert response.status_code == 200
    [slot] = response.get_json()["results"]
    assert (slot["result"], slot["error"]["code"]) == ([], code)
    assert queues.get_queue(redis_conn, queues.INTERACTIVE).count == 0


def test_interactive_malformed_url_is_an_error_answer_not_a_500(
    client: FlaskClient, worker: SimpleWorker
) -> None:
    for url in ("http://[::1/x.png", "http://example.com:99999/x.png"):
        body = predict_body([(1, {"image": url})], prompt="the dog")
        response = run_with_worker(worker, lambda body=body: client.post("/predict", json=body))
        assert response.status_code == 200
        [slot] = response.get_json()["results"]
        assert (slot["error"]["code"], slot["error"]["reason"]) == ("image_fetch", "bad_url")


@pytest.mark.parametrize("task_id", [2**63, -1, True, 1.5, "7", "٤٢"])
def test_task_ids_out_of_range_or_not_integers_are_400(client: FlaskClient, task_id: Any) -> None:
    body = predict_body([(1, {"image": GOOD, "query": "a"})], config=PROMPT_CONFIG)
    body["tasks"][0]["id"] = task_id
    response = client.post("/predict", json=body)
    assert response.status_code == 400
    assert "tasks[0].id" in response.get_json()["error"]["message"]


def test_webhook_ids_in_unicode_digits_huge_or_endless_are_400(client: FlaskClient) -> None:
    for bad in ("٤٢", 2**64, "9" * 5000):
        body = load("annotation_created.json")
        body["annotation"]["id"] = bad
        response = client.post("/webhook", json=body)
        assert response.status_code == 400, (bad, response.get_json())
        assert "annotation.id" in response.get_json()["error"]["message"]
    endless = '{"action": "ANNOTATION_CREATED", "annotation": {"id": ' + "9" * 5000 + "}}"
    response = client.post("/webhook", data=endless, content_type="application/json")
    assert response.status_code == 400  # Python refuses integers of over 4300 digits: not JSON to us


def test_text_no_utf8_can_hold_is_400_in_configs_and_webhooks_and_ignored_in_setup(
    client: FlaskClient, settings: Settings, redis_conn: redis.Redis
) -> None:
    body = predict_body(
        [(1, {"image": GOOD, "query": "a"})], config=PROMPT_CONFIG.replace("Level 1", "L\ud800")
    )
    response = post_raw(client, "/predict", body)
    assert response.status_code == 400
    assert "lone surrogate" in response.get_json()["error"]["message"]

    webhook = load("annotation_created.json")
    webhook["annotation"]["completed_by"] = {"email": "a\udc00@example.com"}
    response = post_raw(client, "/webhook", webhook)
    assert response.status_code == 400
    assert "lone surrogate" in response.get_json()["error"]["message"]

    learned = settings.with_changes(label_studio_url=None, label_studio_api_key=None)
    learned_client = create_app(learned, connection=redis_conn).test_client()
    setup = {"project": "9.1", "hostname": "http://ls.example:8080", "access_token": "tok\ud800en"}
    assert post_raw(learned_client, "/setup", setup).status_code == 400
    setup["access_token"] = "a b"  # not a plain token
    assert learned_client.post("/setup", json=setup).status_code == 200
    assert resolve(learned, redis_conn, 9) is None


def test_an_over_long_or_odd_job_id_is_a_json_404(client: FlaskClient) -> None:
    for job_id in ("x" * 5000, "a b", "..%2f"):
        response = client.get(f"/jobs/{job_id}")
        assert response.status_code == 404
        assert response.get_json()["error"]["code"] == "not_found"


def test_bodies_and_task_counts_over_their_limits_are_413(
    settings: Settings, redis_conn: redis.Redis
) -> None:
    client = create_app(
        settings.with_changes(max_request_bytes=10_000, max_predict_tasks=3), connection=redis_conn
    ).test_client()
    big = predict_body([(1, {"image": "x" * 20_000, "query": "a"})], config=PROMPT_CONFIG)
    response = client.post("/predict", json=big)
    assert response.status_code == 413
    assert "MAX_REQUEST_BYTES=10000" in response.get_json()["error"]["message"]
    many = predict_body([(i, {"image": GOOD[:50], "query": "a"}) for i in range(1, 5)], config=PROMPT_CONFIG)
    response = client.post("/predict", json=many)
    assert response.status_code == 413
    assert "MAX_PREDICT_TASKS=3" in response.get_json()["error"]["message"]


def test_a_brush_mask_claiming_a_huge_image_is_refused_before_decoding(client: FlaskClient) -> None:
    import numpy as np

    body = load("annotation_created.json")
    region = next(r for r in body["annotation"]["result"] if r["type"] == "brushlabels")
    side = 16384  # 16384 x 16384 x 4 bytes would be a 1 GiB bitmap
    rle = encode_mask(np.zeros((1, 1), dtype=bool))
    rle[:4] = (
        list((side * side * 4).to_bytes(4, "big", signed=False)) if side * side * 4 < 2**32 else [255] * 4
    )
    region.update(original_width=side, original_height=side, value={**region["value"], "rle": rle})
    response = client.post("/webhook", json=body)
    assert response.status_code == 400
    assert "MAX_MASK_PIXELS" in response.get_json()["error"]["message"]
