"""/predict through the real queue: web app -> Redis -> in-process SimpleWorker -> tiny model."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import redis
from flask.testing import FlaskClient
from label_studio_sdk.converter.brush import decode_rle
from rq import SimpleWorker

from backend.jobs import queues
from backend.jobs.worker import get_pipeline
from backend.label_studio.predictions import decode_prediction
from backend.operations.settings import Settings
from backend.review.score import review_score
from backend.versions.serving import model_version
from backend.web.app import create_app
from tests.backend.conftest import PROMPT_CONFIG, quiet, run_with_worker, work
from tests.backend.fake_label_studio import FakeLabelStudio, data_uri, decode_png, png_bytes
from tests.backend.payloads import predict_body
from tests.redis_server import free_tcp_port


def test_interactive_predict_returns_one_brush_region_per_level(
    client: FlaskClient, worker: SimpleWorker, settings: Settings
) -> None:
    png = png_bytes(40, 30, seed=1)
    body = predict_body([(7, {"image": data_uri(png)})], prompt="  the thing you cut bread with ")

    response = run_with_worker(worker, lambda: client.post("/predict", json=body))

    assert response.status_code == 200, response.get_json()
    answer = response.get_json()
    assert answer["model_version"] == model_version(settings) == "cores-cores"
    [prediction] = answer["results"]
    regions = prediction["result"]
    labels = ["Context (level 1)", "Target (level 2)"]
    assert [region["value"]["brushlabels"] for region in regions] == [[label] for label in labels]
    assert len({region["id"] for region in regions}) == 2
    for region in regions:
        assert (region["original_width"], region["original_height"]) == (40, 30)
        assert (region["from_name"], region["to_name"], region["type"]) == ("tag", "image", "brushlabels")
        assert region["value"]["format"] == "rle"
        assert isinstance(region["score"], float)
        assert region["meta"]["text"][0].endswith(("[SEG_SEMA].", "[SEG]."))

    expected = get_pipeline().segment(decode_png(png), "the thing you cut bread with")
    masks = decode_prediction(regions)
    review = review_score(
        [{"index": lv.index, "mask": lv.mask, "score": lv.score, "stats": lv.stats} for lv in expected.levels]
    )
    assert all(0.0 <= lv.stats["margin"] <= 1.0 for lv in expected.levels)
    for level, label, region in zip(expected.levels, labels, regions, strict=True):
        np.testing.assert_array_equal(masks[label], level.mask)
        alpha = np.asarray(decode_rle(bytes(region["value"]["rle"]))).reshape(30, 40, 4)[:, :, 3]
        np.testing.assert_array_equal(alpha > 0, level.mask)  # the SDK's own decoder agrees
        assert region["score"] == pytest.approx(level.score)
        assert region["meta"]["review"] == review.level_meta(level.index)
    # the top-level score is the review score of the model's own levels (backend.review.score)
    assert prediction["score"] == pytest.approx(review.score)
    assert 0.0 <= prediction["score"] <= 1.0
    assert prediction["model_version"] == "cores-cores"


def test_batch_predict_reads_queries_from_task_data_and_images_from_label_studio(
    client: FlaskClient, worker: SimpleWorker, fake_ls: FakeLabelStudio
) -> None:
    fake_ls.images = {"open.png": png_bytes(32, 24, seed=2), "1/upload.png": png_bytes(20, 36, seed=3)}
    tasks = [
        (1, {"image": f"{fake_ls.url}/images/open.png", "query": "the cup"}),
        (2, {"image": "/data/upload/1/upload.png", "query": "where would the knife be"}),
        (3, {"image": data_uri(png_bytes(16, 16, seed=4)), "query": "the plate"}),
    ]

    response = run_with_worker(
        worker, lambda: client.post("/predict", json=predict_body(tasks, config=PROMPT_CONFIG))
    )

    assert response.status_code == 200
    results = response.get_json()["results"]
    assert len(results) == 3
    sizes = [(r["result"][0]["original_width"], r["result"][0]["original_height"]) for r in results]
    assert sizes == [(32, 24), (20, 36), (16, 16)]
    for result in results:
        assert [region["value"]["brushlabels"] for region in result["result"]] == [["Level 1"], ["Level 2"]]
    assert fake_ls.predictions == []  # answered in time: nothing written back


def test_bad_tasks_get_clear_errors_and_the_others_are_still_predicted(
    client: FlaskClient, worker: SimpleWorker, fake_ls: FakeLabelStudio
) -> None:
    fake_ls.images = {"corrupt.png": b"\x89PNG\r\n\x1a\n this is not really a png"}
    good = data_uri(png_bytes(24, 24, seed=5))
    tasks = [
        (1, {"image": good, "query": "the dog"}),
        (2, {"image": good}),
        (3, {"image": good, "query": "   "}),
        (4, {"query": "the dog"}),
        (5, {"image": f"http://127.0.0.1:{free_tcp_port()}/gone.png", "query": "the dog"}),
        (6, {"image": f"{fake_ls.url}/images/corrupt.png", "query": "the dog"}),
        (7, {"image": good, "query": "x" * 2001}),
        (8, {"image": good, "query": "the cat"}),
    ]

    response = run_with_worker(
        worker, lambda: client.post("/predict", json=predict_body(tasks, config=PROMPT_CONFIG))
    )

    assert response.status_code == 200
    results = response.get_json()["results"]
    assert len(results) == len(tasks)
    assert "result" in results[0]
    assert "result" in results[7]
    codes = {
        task_id: r["error"]["code"] for (task_id, _), r in zip(tasks, results, strict=True) if "error" in r
    }
    assert codes == {
        2: "missing_query",
        3: "empty_query",
        4: "missing_image",
        5: "image_fetch",
        6: "image_fetch",
        7: "query_too_long",
    }
    errors = {r["error"]["task"]: r["error"] for r in results if "error" in r}
    assert 'task data field "query"' in errors[2]["message"]
    assert errors[5]["reason"] == "unreachable"
    assert errors[6]["reason"] == "corrupt"
    assert "2000" in errors[7]["message"]
    assert all("result" not in r for r in results if "error" in r)  # Label Studio stores nothing for them


def test_interactive_error_answers_an_empty_suggestion_with_the_error(
    client: FlaskClient, worker: SimpleWorker
) -> None:
    body = predict_body([(1, {"image": "ftp://example.com/x.png"})], prompt="the dog")
    response = run_with_worker(worker, lambda: client.post("/predict", json=body))
    assert response.status_code == 200
    [slot] = response.get_json()["results"]
    assert slot["result"] == []
    assert slot["error"]["code"] == "image_fetch"
    assert slot["error"]["reason"] == "bad_url"


def test_interactive_empty_prompt_is_rejected_without_a_job(
    client: FlaskClient, redis_conn: redis.Redis
) -> None:
    body = predict_body([(1, {"image": data_uri(png_bytes(8, 8))})], prompt="")
    response = client.post("/predict", json=body)
    assert response.status_code == 200
    assert response.get_json()["results"][0]["error"]["code"] == "empty_query"
    assert queues.get_queue(redis_conn, queues.INTERACTIVE).count == 0


def test_late_batch_predictions_are_written_back_by_the_job_and_not_answered(
    settings: Settings, redis_conn: redis.Redis, worker: SimpleWorker, fake_ls: FakeLabelStudio
) -> None:
    client = create_app(settings.with_changes(predict_deadline=0.5), connection=redis_conn).test_client()
    tasks = [(11, {"image": data_uri(png_bytes(16, 12, seed=6)), "query": "the mug"})]

    started = time.monotonic()
    response = client.post(
        "/predict", json=predict_body(tasks, config=PROMPT_CONFIG)
    )  # no worker running yet
    assert time.monotonic() - started < 5

    assert response.status_code == 200
    assert response.get_json()["results"] == [[]]  # no prediction now, and no empty one stored
    assert work(worker)
    [written] = fake_ls.predictions_for(11)
    assert written["model_version"] == "cores-cores"
    assert written["project"] == 1  # Label Studio warns for every prediction created without it
    assert [r["value"]["brushlabels"] for r in written["result"]] == [["Level 1"], ["Level 2"]]
    assert (written["result"][0]["original_width"], written["result"][0]["original_height"]) == (16, 12)

    # the write-back is idempotent: a second job for the same task finds the prediction and skips it
    queues.enqueue(redis_conn, settings, queues.BULK, queues.PREDICT_JOB, _bulk_request(settings, 11))
    assert work(worker)
    assert len(fake_ls.predictions_for(11)) == 1


def test_batch_returns_what_finished_by_the_deadline_and_writes_the_rest_back(
    settings: Settings, redis_conn: redis.Redis, worker: SimpleWorker, fake_ls: FakeLabelStudio
) -> None:
    client = create_app(
        settings.with_changes(predict_deadline=3.0, predict_batch_size=1), connection=redis_conn
    ).test_client()
    tasks = [
        (21, {"image": data_uri(png_bytes(16, 16, seed=7)), "query": "the first"}),
        (22, {"image": data_uri(png_bytes(16, 16, seed=8)), "query": "the second"}),
    ]
    box: dict[str, object] = {}
    thread = threading.Thread(
        target=lambda: box.update(
            response=client.post("/predict", json=predict_body(tasks, config=PROMPT_CONFIG))
        )
    )
    thread.start()
    bulk = queues.get_queue(redis_conn, queues.BULK)
    for _ in range(200):
        if bulk.count == 2:
            break
        time.sleep(0.01)
    assert bulk.count == 2  # one job per task

    work(worker, max_jobs=1)  # the first job finishes while the web waits
    thread.join(timeout=30)
    results = box["response"].get_json()["results"]  # type: ignore[attr-defined]

    assert "result" in results[0]
    assert results[1] == []
    assert fake_ls.predictions == []
    work(worker)  # the second job finds the web gone and writes its prediction itself
    assert [p["task"] for p in fake_ls.predictions] == [22]


def test_failed_job_keeps_its_error_and_the_worker_keeps_serving(
    client: FlaskClient, settings: Settings, redis_conn: redis.Redis, worker: SimpleWorker
) -> None:
    job = queues.enqueue(redis_conn, settings, queues.BULK, queues.PREDICT_JOB, {"tasks": "not a list"})
    work(worker)

    failed = queues.get_queue(redis_conn, queues.BULK).failed_job_registry
    assert job.id in failed.get_job_ids()
    info = client.get(f"/jobs/{job.id}").get_json()
    assert info["status"] == "failed"
    assert info["queue"] == "bulk"
    assert info["func"] == queues.PREDICT_JOB
    assert "ValueError" in info["error"]
    assert "Traceback" in info["error"]

    body = predict_body([(1, {"image": data_uri(png_bytes(8, 8))})], prompt="the dog")
    response = run_with_worker(worker, lambda: client.post("/predict", json=body))
    assert response.status_code == 200
    assert "result" in response.get_json()["results"][0]

    metrics = client.get("/metrics").get_data(as_text=True)
    assert 'cores_jobs_failed{queue="bulk"} 1' in metrics
    assert 'cores_job_duration_seconds_count{queue="interactive"} 1' in metrics
    assert 'cores_job_wait_seconds_count{queue="interactive"} 1' in metrics
    assert 'cores_task_errors_total{code="empty_query"}' not in metrics
    assert 'cores_predict_requests_total{kind="interactive",outcome="ok"} 1' in metrics
    assert 'cores_tasks_total{outcome="predicted"} 1' in metrics


def test_model_version_mismatch_is_a_clear_per_task_error(
    settings: Settings, redis_conn: redis.Redis, worker: SimpleWorker
) -> None:
    client = create_app(settings.with_changes(model_version="cores-v2"), connection=redis_conn).test_client()
    body = predict_body([(1, {"image": data_uri(png_bytes(8, 8))})], prompt="the dog")
    response = run_with_worker(worker, lambda: client.post("/predict", json=body))
    error = response.get_json()["results"][0]["error"]
    assert error["code"] == "model_version_mismatch"
    assert "cores-cores" in error["message"]
    assert "cores-v2" in error["message"]


def test_generate_mode_chain_errors_are_per_task(settings: Settings, redis_conn: redis.Redis) -> None:
    from backend.jobs.worker import build_worker, load_model

    generate = settings.with_changes(mode="generate")
    load_model(generate)
    try:
        client = create_app(generate, connection=redis_conn).test_client()
        body = predict_body([(1, {"image": data_uri(png_bytes(8, 8))})], prompt="the dog")
        response = run_with_worker(
            quiet(build_worker(redis_conn, generate)), lambda: client.post("/predict", json=body)
        )
        error = response.get_json()["results"][0]["error"]
        assert error["code"] == "model"  # the random tiny model never emits the chain tokens
        assert "chain tokens" in error["message"]
    finally:
        load_model(settings)


def _bulk_request(settings: Settings, task_id: int) -> dict[str, object]:
    from backend.jobs.payloads import PredictRequest, TaskInput
    from backend.label_studio.label_config import parse_label_config

    return PredictRequest(
        tasks=(TaskInput(id=task_id, image=data_uri(png_bytes(16, 12, seed=6)), query="the mug"),),
        schema=parse_label_config(PROMPT_CONFIG),
        model_version=model_version(settings),
        project=1,
        write_back=True,
    ).to_json()


def test_interactive_call_past_the_deadline_answers_504_and_drops_the_job(
    settings: Settings, redis_conn: redis.Redis
) -> None:
    client = create_app(settings.with_changes(predict_deadline=0.3), connection=redis_conn).test_client()
    body = predict_body([(1, {"image": data_uri(png_bytes(8, 8))})], prompt="the dog")

    response = client.post("/predict", json=body)  # no worker: nobody answers

    assert response.status_code == 504
    error = response.get_json()["error"]
    assert error["code"] == "timeout"
    assert "PREDICT_DEADLINE=0.3" in error["message"]
    assert queues.get_queue(redis_conn, queues.INTERACTIVE).count == 0  # cancelled, never run late


def test_a_crashing_job_is_500_interactively_and_per_task_in_batches(
    client: FlaskClient, worker: SimpleWorker, monkeypatch: pytest.MonkeyPatch
) -> None:
    from backend.jobs import predict as jobs

    def out_of_memory(*args: object, **kwargs: object) -> None:
        raise RuntimeError("CUDA out of memory")

    monkeypatch.setattr(jobs, "run_chains", out_of_memory)
    image = data_uri(png_bytes(8, 8))

    interactive = run_with_worker(
        worker, lambda: client.post("/predict", json=predict_body([(1, {"image": image})], prompt="the dog"))
    )
    assert interactive.status_code == 500
    error = interactive.get_json()["error"]
    assert error["code"] == "job_failed"
    assert "RuntimeError: CUDA out of memory" in error["message"]

    batch = run_with_worker(
        worker,
        lambda: client.post(
            "/predict", json=predict_body([(1, {"image": image, "query": "a"})], config=PROMPT_CONFIG)
        ),
    )
    assert batch.status_code == 200
    [slot] = batch.get_json()["results"]
    assert slot["error"]["code"] == "job_failed"
    job_id = slot["error"]["job"]
    assert "CUDA out of memory" in client.get(f"/jobs/{job_id}").get_json()["error"]
