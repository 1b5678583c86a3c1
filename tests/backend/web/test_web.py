"""The web app alone (no worker): protocol routes, auth, webhooks, errors, queue bounds, metrics."""

from __future__ import annotations

import base64
import json
import pickle
import subprocess
import sys
import textwrap
import zlib
from collections.abc import Mapping
from typing import Any

import pytest
import redis
from flask.testing import FlaskClient

from backend.jobs import queues
from backend.jobs.embedded import REPO_ROOT
from backend.label_studio.connection import resolve
from backend.operations.settings import Settings
from backend.web.app import create_app
from tests.backend.conftest import PROMPT_CONFIG
from tests.backend.fake_label_studio import data_uri, png_bytes
from tests.backend.payloads import predict_body
from tests.backend.signing import signed_client
from tests.redis_server import free_tcp_port

NO_BRUSH_CONFIG = """<View>
  <Image name="image" value="$image"/>
  <RectangleLabels name="box" toName="image"><Label value="Dog"/></RectangleLabels>
</View>"""


def test_creating_the_web_app_does_not_import_torch(settings: Settings) -> None:
    code = textwrap.dedent(
        f"""
        import sys, time
        from backend.web.app import create_app
        from backend.operations.settings import Settings
        app = create_app(Settings(redis_url={settings.redis_url!r}))
        client = app.test_client()
        started = time.perf_counter()
        assert client.get("/health").status_code == 200
        assert client.post("/setup", json={{"project": "1.2", "schema": "<View/>"}}).status_code == 200
        elapsed = time.perf_counter() - started
        assert elapsed < 1.0, elapsed
        heavy = ("torch", "cores.inference.pipeline", "backend.jobs.predict", "backend.jobs.worker")
        heavy = sorted(m for m in heavy if m in sys.modules)
        print(",".join(heavy) or "none")
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "none"


def test_health_and_root_report_up_with_the_model_version(client: FlaskClient) -> None:
    for path in ("/", "/health"):
        answer = client.get(path).get_json()
        assert {k: answer[k] for k in ("status", "model_class", "model_version")} == {
            "status": "UP",
            "model_class": "CoReS",
            "model_version": "cores-cores",
        }


def test_setup_answers_the_version_and_remembers_label_studio(
    settings: Settings, redis_conn: redis.Redis
) -> None:
    settings = settings.with_changes(label_studio_url=None, label_studio_api_key=None)
    client = create_app(settings, connection=redis_conn).test_client()
    body = {
        "project": "3.1795672559",
        "schema": PROMPT_CONFIG,
        "hostname": "http://ls.example:8080",
        "access_token": "f" * 40,
        "extra_params": None,
    }
    response = client.post("/setup", json=body)
    assert response.status_code == 200
    assert response.get_json() == {"model_version": "cores-cores"}
    found = resolve(settings.with_changes(label_studio_url=None, label_studio_api_key=None), redis_conn, 3)
    assert found is not None
    assert (found.url, found.api_key) == ("http://ls.example:8080", "f" * 40)
    assert (
        resolve(settings.with_changes(label_studio_url=None, label_studio_api_key=None), redis_conn, 4)
        is None
    )


def test_versions_lists_the_current_version(client: FlaskClient) -> None:
    assert client.get("/versions").get_json() == {"versions": ["cores-cores"], "model_version": "cores-cores"}


def test_basic_auth_guards_every_route_but_health(settings: Settings, redis_conn: redis.Redis) -> None:
    client = create_app(
        settings.with_changes(basic_auth_user="ls", basic_auth_pass="s3cret"), connection=redis_conn
    ).test_client()
    good = {"Authorization": "Basic " + base64.b64encode(b"ls:s3cret").decode()}
    bad = {"Authorization": "Basic " + base64.b64encode(b"ls:wrong").decode()}

    assert client.get("/health").status_code == 200
    for method, path in (("GET", "/"), ("POST", "/setup"), ("GET", "/versions"), ("GET", "/metrics")):
        refused = client.open(path, method=method, json={})
        assert refused.status_code == 401
        assert refused.headers["WWW-Authenticate"].startswith("Basic")
        assert refused.get_json()["error"]["code"] == "unauthorized"
        assert client.open(path, method=method, json={}, headers=bad).status_code == 401
        assert client.open(path, method=method, json={}, headers=good).status_code == 200
    assert client.post("/predict", data="{", headers=bad).status_code == 401


def test_webhook_accepts_handled_actions_and_ignores_others(
    settings: Settings, redis_conn: redis.Redis
) -> None:
    calls: list[tuple[str, Mapping[str, Any]]] = []

    def handler(action: str, payload: Mapping[str, Any]) -> Mapping[str, Any] | None:
        calls.append((action, payload))
        return {"recorded": True}

    client = signed_client(create_app(settings, connection=redis_conn, webhook_handler=handler))
    created = {
        "action": "ANNOTATION_CREATED",
        "annotation": {"id": 1, "result": [], "task": 1},
        "project": {"id": 1},
    }

    assert client.post("/webhook", json=created).get_json() == {
        "status": "accepted",
        "action": "ANNOTATION_CREATED",
        "recorded": True,
    }
    assert client.post("/webhook", json={"action": "START_TRAINING", "project": {"id": 1}}).status_code == 200
    assert [action for action, _ in calls] == ["ANNOTATION_CREATED", "START_TRAINING"]
    ignored = client.post("/webhook", json={"action": "PROJECT_UPDATED", "project": {"id": 1}})
    assert ignored.status_code == 200
    assert ignored.get_json() == {"status": "ignored", "action": "PROJECT_UPDATED"}
    assert len(calls) == 2
    assert client.post("/webhook", data="{not json", content_type="application/json").status_code == 400
    assert client.post("/webhook", json={"no": "action", "project": {"id": 1}}).status_code == 400
    assert client.post("/webhook", json={"no": "action"}).status_code == 401  # no project to vouch for


def test_default_webhook_handler_records_in_the_correction_store(
    client: FlaskClient, settings: Settings
) -> None:
    answer = client.post(
        "/webhook", json={"action": "ANNOTATION_DELETED", "annotation": {"id": 3}, "project": {"id": 1}}
    )
    assert answer.get_json()["status"] == "deleted"
    assert answer.get_json()["action"] == "ANNOTATION_DELETED"
    assert (settings.model_dir / "corrections.sqlite3").is_file()


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("{not json", "not valid JSON"),
        ({"label_config": PROMPT_CONFIG}, "'tasks'"),
        ({"tasks": [{"id": 1}], "label_config": PROMPT_CONFIG}, "'data'"),
        ({"tasks": [{"id": "x", "data": {}}], "label_config": PROMPT_CONFIG}, "integer task id"),
        ({"tasks": [{"id": 1, "data": {}}]}, "label_config"),
        ({"tasks": [{"id": 1, "data": {}}], "label_config": NO_BRUSH_CONFIG}, "<BrushLabels>"),
        ({"tasks": [{"id": 1, "data": {}}], "label_config": "<View><Image"}, "well-formed"),
    ],
)
def test_bad_predict_requests_get_400_with_a_clear_message(
    client: FlaskClient, body: Any, message: str
) -> None:
    if isinstance(body, str):
        response = client.post("/predict", data=body, content_type="application/json")
    else:
        response = client.post("/predict", json=body)
    assert response.status_code == 400
    error = response.get_json()["error"]
    assert error["code"] == "bad_request"
    assert message in error["message"]


def test_full_queue_answers_503_with_retry_after(settings: Settings, redis_conn: redis.Redis) -> None:
    client = create_app(settings.with_changes(max_queued=1), connection=redis_conn).test_client()
    queues.enqueue(redis_conn, settings, queues.BULK, "time.sleep", 0)
    queues.enqueue(redis_conn, settings, queues.INTERACTIVE, "time.sleep", 0)
    image = data_uri(png_bytes(8, 8))

    batch = client.post(
        "/predict", json=predict_body([(1, {"image": image, "query": "a"})], config=PROMPT_CONFIG)
    )
    interactive = client.post("/predict", json=predict_body([(1, {"image": image})], prompt="the dog"))

    for response in (batch, interactive):
        assert response.status_code == 503
        assert response.headers["Retry-After"] == str(queues.RETRY_AFTER_S)
        assert response.get_json()["error"]["code"] == "queue_full"
        assert "MAX_QUEUED=1" in response.get_json()["error"]["message"]
    assert queues.get_queue(redis_conn, queues.BULK).count == 1  # nothing more was enqueued
    metrics = client.get("/metrics").get_data(as_text=True)
    assert 'cores_predict_requests_total{kind="batch",outcome="queue_full"} 1' in metrics
    assert 'cores_queue_depth{queue="bulk"} 1' in metrics
    assert "cores_queue_limit 1" in metrics


def test_unreachable_redis_answers_503_and_health_stays_up(settings: Settings) -> None:
    down = settings.with_changes(redis_url=f"redis://127.0.0.1:{free_tcp_port()}/0")
    client = create_app(down).test_client()
    body = predict_body([(1, {"image": data_uri(png_bytes(8, 8))})], prompt="the dog")

    response = client.post("/predict", json=body)

    assert response.status_code == 503
    assert response.headers["Retry-After"] == str(queues.RETRY_AFTER_S)
    error = response.get_json()["error"]
    assert error["code"] == "queue_unavailable"
    assert "unreachable" in error["message"]
    assert client.get("/health").status_code == 200
    assert client.post("/setup", json={"project": "1.2", "access_token": "x"}).status_code == 200
    assert client.get("/jobs/abc").status_code == 503
    metrics = client.get("/metrics")
    assert metrics.status_code == 200
    text = metrics.get_data(as_text=True)
    assert "cores_redis_up 0" in text
    assert "cores_web_redis_errors_total 2" in text


def test_unknown_job_is_404(client: FlaskClient) -> None:
    response = client.get("/jobs/0123456789abcdef")
    assert response.status_code == 404
    assert response.get_json()["error"]["code"] == "not_found"


def test_jobs_are_stored_as_json_never_pickle(settings: Settings, redis_conn: redis.Redis) -> None:
    job = queues.enqueue(redis_conn, settings, queues.BULK, queues.PREDICT_JOB, {"tasks": [], "note": "é"})
    raw = redis_conn.hgetall(f"rq:job:{job.id}")
    stored = raw[b"data"]
    assert isinstance(stored, bytes)
    data = zlib.decompress(stored)
    assert json.loads(data) == [queues.PREDICT_JOB, None, [{"tasks": [], "note": "é"}], {}]
    with pytest.raises(pickle.UnpicklingError):
        pickle.loads(data)
    fetched = queues.fetch_job(redis_conn, job.id)
    assert fetched is not None
    assert fetched.serializer is queues.SERIALIZER


def test_metrics_exposition(client: FlaskClient, redis_conn: redis.Redis, settings: Settings) -> None:
    queues.enqueue(redis_conn, settings, queues.BULK, "time.sleep", 0)
    text = client.get("/metrics").get_data(as_text=True)
    lines = text.splitlines()
    assert 'cores_model_info{model_version="cores-cores"} 1' in lines
    assert "cores_redis_up 1" in lines
    assert 'cores_queue_depth{queue="bulk"} 1' in lines
    assert 'cores_queue_depth{queue="interactive"} 0' in lines
    assert 'cores_jobs_started{queue="train"} 0' in lines
    assert "# TYPE cores_job_duration_seconds histogram" in lines
    assert "# TYPE cores_predict_requests_total counter" in lines
    for line in lines:  # every sample line is "name{labels} value"
        if not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            float(value.replace("+Inf", "inf"))
            assert name.startswith("cores_")
