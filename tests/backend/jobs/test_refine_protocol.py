"""Clicks and warming through the real protocol: web app -> real Redis -> rq workers (in-process and a
``python -m backend worker`` subprocess) -> tiny model."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import redis
import torch
from flask.testing import FlaskClient
from rq import SimpleWorker, Worker

from backend.jobs import queues
from backend.jobs.chain_cache import KEY_PREFIX
from backend.jobs.embedded import REPO_ROOT
from backend.jobs.encodings import encoding_store_dir
from backend.jobs.refinement import CHAINS, level_prompts
from backend.jobs.warm_requests import DEDUPE_PREFIX
from backend.jobs.worker import get_pipeline
from backend.label_studio.predictions import decode_prediction
from backend.operations.settings import Settings
from cores.inference.image_keys import encoded_image_key
from tests.backend.conftest import run_with_worker, work
from tests.backend.fake_label_studio import data_uri, decode_png, png_bytes
from tests.backend.payloads import predict_body
from tests.backend.worker_subprocess import wait_for, worker_env

REFINE_CONFIG = (Path(REPO_ROOT) / "backend" / "label_config_refine.xml").read_text()
QUERY = "the thing you would use to cut the bread"
LEVELS = ("Context (level 1)", "Target (level 2)")


def _click_body(task_id: int, image: str, items: list[dict[str, Any]]) -> dict[str, Any]:
    body = predict_body([(task_id, {"image": image})], config=REFINE_CONFIG)
    body["params"]["context"] = {"result": items}
    return body


def _point(x: float, y: float, positive: bool, label: str = "Target (level 2)") -> dict[str, Any]:
    return {
        "from_name": "click",
        "to_name": "image",
        "type": "keypointlabels",
        "is_positive": positive,
        "value": {"x": x, "y": y, "width": 0.5, "keypointlabels": [label]},
    }


def _masks(answer: dict[str, Any]) -> tuple[dict[str, np.ndarray], list[str]]:
    [prediction] = answer["results"]
    return decode_prediction(prediction["result"]), [r["id"] for r in prediction["result"]]


def _expected(image: np.ndarray, points: list[list[float]]) -> list[np.ndarray]:
    pipe = get_pipeline()
    base = pipe.segment(image, QUERY)
    assert base.chain_embeddings is not None
    prompts = level_prompts([{"level": 2, "points": points}], image.shape[1], image.shape[0], 2)
    refined = pipe.refine(image, QUERY, base.chain_embeddings, prompts, text=base.text)
    return [level.mask for level in refined.levels]


def test_a_click_refines_the_last_query_keeps_region_ids_and_earlier_levels(
    client: FlaskClient, worker: SimpleWorker, redis_conn: redis.Redis
) -> None:
    png = png_bytes(64, 48, seed=11)
    image = data_uri(png)
    body = predict_body([(5, {"image": image})], config=REFINE_CONFIG, prompt=QUERY)
    first = run_with_worker(worker, lambda: client.post("/predict", json=body))
    assert first.status_code == 200, first.get_json()
    before, ids = _masks(first.get_json())
    assert redis_conn.keys(f"{KEY_PREFIX}*")  # the chain embeddings are kept in Redis

    points = [[30.0, 40.0, 1], [80.0, 20.0, 0]]
    items = [_point(30, 40, True), _point(80, 20, False)]
    clicked = run_with_worker(worker, lambda: client.post("/predict", json=_click_body(5, image, items)))
    assert clicked.status_code == 200, clicked.get_json()
    after, after_ids = _masks(clicked.get_json())
    assert after_ids == ids  # Label Studio replaces the regions rather than adding new ones
    np.testing.assert_array_equal(after[LEVELS[0]], before[LEVELS[0]])  # level 1 as it was
    expected = _expected(decode_png(png), points)
    np.testing.assert_array_equal(after[LEVELS[1]], expected[1])
    assert not np.array_equal(after[LEVELS[1]], before[LEVELS[1]])  # the click changed the target


def test_a_click_without_any_query_asks_for_one(client: FlaskClient, worker: SimpleWorker) -> None:
    body = _click_body(6, data_uri(png_bytes(32, 32, seed=2)), [_point(50, 50, True)])
    response = run_with_worker(worker, lambda: client.post("/predict", json=body))
    assert response.status_code == 200
    [slot] = response.get_json()["results"]
    assert slot["result"] == []
    assert slot["error"]["code"] == "missing_query"
    assert "type what to segment" in slot["error"]["message"]


def test_bad_click_coordinates_are_a_task_error(client: FlaskClient, worker: SimpleWorker) -> None:
    body = _click_body(7, data_uri(png_bytes(32, 32, seed=3)), [_point(50, 500, True)])
    response = run_with_worker(worker, lambda: client.post("/predict", json=body))
    [slot] = response.get_json()["results"]
    assert slot["error"]["code"] == "bad_prompt"


def test_a_worker_without_the_chain_reads_it_from_redis_or_recomputes_it(
    client: FlaskClient, worker: SimpleWorker, redis_conn: redis.Redis, settings: Settings
) -> None:
    png = png_bytes(64, 48, seed=12)
    image = data_uri(png)
    body = predict_body([(8, {"image": image})], config=REFINE_CONFIG, prompt=QUERY)
    assert run_with_worker(worker, lambda: client.post("/predict", json=body)).status_code == 200
    points = [[20.0, 30.0, 1]]
    expected = _expected(decode_png(png), points)
    click = _click_body(8, image, [_point(20, 30, True)])

    child = subprocess.Popen(
        [sys.executable, "-m", "backend", "worker", "--queues", "interactive"],
        env=worker_env(settings),
        cwd=REPO_ROOT,
    )
    try:
        wait_for(lambda: Worker.count(connection=redis_conn) > 0, 60, "the worker process to start")
        response = client.post("/predict", json=click)  # served by the fresh process: chain from Redis
        assert response.status_code == 200, response.get_json()
        masks, _ = _masks(response.get_json())
        np.testing.assert_array_equal(masks[LEVELS[1]], expected[1])
    finally:
        child.terminate()
        child.wait(timeout=30)

    redis_conn.delete(*redis_conn.keys(f"{KEY_PREFIX}*"))
    CHAINS.clear()  # nothing anywhere: this worker recomputes the chain
    response = run_with_worker(worker, lambda: client.post("/predict", json=click))
    masks, _ = _masks(response.get_json())
    np.testing.assert_array_equal(masks[LEVELS[1]], expected[1])


def test_opening_a_task_without_a_query_warms_its_image_once(
    client: FlaskClient, worker: SimpleWorker, redis_conn: redis.Redis, settings: Settings
) -> None:
    png = png_bytes(40, 30, seed=13)
    body = predict_body([(9, {"image": data_uri(png)})], config=REFINE_CONFIG)
    response = client.post("/predict", json=body)
    assert response.status_code == 200
    assert response.get_json()["results"][0]["error"]["code"] == "missing_query"
    warm = queues.get_queue(redis_conn, queues.WARM)
    assert warm.count == 1
    assert redis_conn.keys(f"{DEDUPE_PREFIX}*")
    client.post("/predict", json=body)
    assert warm.count == 1  # the same image is not queued twice

    pipe = get_pipeline()
    pipe.clear_cache()
    [job_id] = warm.job_ids
    work(worker)
    job = queues.fetch_job(redis_conn, job_id)
    assert job is not None
    assert job.return_value()["warmed"] == [9]
    assert pipe.encodings is not None
    key = encoded_image_key(hashlib.sha256(png).hexdigest())  # the key jobs look a fetched image up by
    assert pipe.encodings.contains(key)  # in the persistent store
    assert pipe.encodings.store.root == encoding_store_dir(settings)  # under MODEL_DIR
    calls: list[str] = []
    hook = pipe.model.sam.image_encoder.register_forward_hook(lambda *a: calls.append("sam"))
    try:
        with torch.no_grad():
            result = pipe.segment(decode_png(png), QUERY, key=key)  # the annotator's first query
    finally:
        hook.remove()
    assert calls == []
    assert result.timings["image_cache_hit"] == 1.0
