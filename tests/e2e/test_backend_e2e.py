"""The CoReS backend driven end to end by a real Label Studio 1.23.2.

Everything is real: Label Studio (``label_studio`` fixture), the backend's web (``python -m backend serve``,
gunicorn) and its worker (``python -m backend worker`` on the tiny CoReS checkpoint and the tests' Redis),
an image host on loopback (``image_http_server``). Label Studio talks to the backend exactly as in
production: /health and /setup when the backend is connected, /predict for interactive pre-annotation and
for "Retrieve predictions", /webhook for annotation events; the worker fetches uploaded images from Label
Studio with the API key and writes deferred predictions back through Label Studio's API.

Projects (module-scoped, built once):

- ``shipped``: the shipped ``backend/label_config.xml``; tasks: an image uploaded to Label Studio
  (``/data/upload/...``), an image on the loopback HTTP host, an image URL nobody answers.
- ``with_query``: the shipped config with ``value="$query"`` on the prompt TextArea (the shipped config has
  no value, so its tasks cannot carry a query for batch predictions); the same three images, each task with
  a ``query`` field.

Further backends, each for one concern: one in the one-command mode with a tiny ``PREDICT_DEADLINE`` and no
Label Studio settings (deferred write-back with the credentials /setup sent), one with basic auth.
"""

from __future__ import annotations

import base64
import io
import math
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
import redis
import requests
from label_studio_sdk import ImportApiRequest, LabelStudio
from label_studio_sdk.converter.brush import decode_rle
from lxml import etree
from PIL import Image

from backend.label_studio.connection import PROJECT_KEY
from backend.label_studio.label_config import parse_label_config, shipped_label_config
from backend.label_studio.rle import decode_mask, encode_mask
from backend.label_studio.webhook_secret import SECRET_HEADER
from tests.backend_server import REPO_ROOT, BackendServer, correction_records
from tests.e2e.label_studio import LabelStudioServer, free_tcp_port, log_tail

if TYPE_CHECKING:
    from tests.e2e.conftest import ImageHttpServer

pytestmark = pytest.mark.e2e

QUERY = "the thing you would use to cut the bread"
SHIPPED_CONFIG = shipped_label_config()
SCHEMA = parse_label_config(SHIPPED_CONFIG)


def with_query_field(config: str, prompt_name: str) -> str:
    """``config`` with ``value="$query"`` on the TextArea ``prompt_name``: tasks' ``query`` fills it."""
    root = etree.fromstring(config.encode("utf-8"))
    (prompt,) = [tag for tag in root.iter("TextArea") if tag.get("name") == prompt_name]
    prompt.set("value", "$query")
    return str(etree.tostring(root, encoding="unicode"))


assert SCHEMA.prompt_from_name is not None
QUERY_CONFIG = with_query_field(SHIPPED_CONFIG, SCHEMA.prompt_from_name)
LEVEL_LABELS = SCHEMA.labels  # level 1 (context), level 2 (target), in the config's order
N_LEVELS = 2

UPLOADED, HTTP, UNREACHABLE = "uploaded", "http", "unreachable"
IMAGE_SIZES = {UPLOADED: (96, 64), HTTP: (80, 60)}  # (width, height): different, so a mix-up shows
HTTP_IMAGE_NAME = "counter.png"
WAIT_S = 60.0


# --- helpers ---------------------------------------------------------------------------------------------


def wait_for(
    condition: Callable[[], Any],
    timeout_s: float,
    what: str,
    details: Callable[[], str] | None = None,
    interval_s: float = 0.25,
) -> Any:
    """Poll ``condition`` until it returns something truthy (returned); fail naming ``what`` (and
    ``details()``, e.g. log tails) after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            extra = details() if details is not None else ""
            pytest.fail(f"timed out after {timeout_s:.0f} s waiting for {what}{extra}")
        time.sleep(interval_s)


def png_bytes(width: int, height: int, seed: int) -> bytes:
    """A random RGB PNG of the given size."""
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


_SERIES = re.compile(r"^([A-Za-z_:][A-Za-z0-9_:]*)(?:\{(.*)\})?\s+(\S+)$")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def metrics(backend: BackendServer) -> list[tuple[str, dict[str, str], float]]:
    """The backend's ``/metrics`` as ``(name, labels, value)`` series."""
    text = requests.get(f"{backend.url}/metrics", timeout=10).text
    series = []
    for line in text.splitlines():
        found = _SERIES.match(line.strip())
        if found is None or line.startswith("#"):
            continue
        labels = dict(_LABEL.findall(found.group(2) or ""))
        series.append((found.group(1), labels, float(found.group(3))))
    return series


def metric(backend: BackendServer, name: str, **labels: str) -> float:
    """Sum of the series of ``name`` whose labels include ``labels`` (0 when there is none)."""
    return sum(
        value
        for found, have, value in metrics(backend)
        if found == name and all(have.get(k) == v for k, v in labels.items())
    )


def log_since(path: Path, offset: int) -> str:
    """The text appended to the log at ``path`` after byte ``offset``."""
    with path.open("rb") as log:
        log.seek(offset)
        return log.read().decode(errors="replace")


def log_size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


def diagnostics(ls: LabelStudioServer, backend: BackendServer) -> str:
    """Log tails of both servers, for failure messages."""
    return (
        f"\n--- Label Studio log tail ---\n{log_tail(ls.log_path, 3000)}"
        f"\n--- backend log tail ---\n{backend.log_tail(3000)}"
    )


@dataclass
class Project:
    """A Label Studio project connected to the backend: ids, task ids by role, the image size per role."""

    id: int
    ml_backend_id: int
    tasks: dict[str, int]
    image_urls: dict[str, str]
    label_config: str
    sizes: dict[str, tuple[int, int]] = field(default_factory=lambda: dict(IMAGE_SIZES))


def create_project(client: LabelStudio, title: str, config: str) -> int:
    project = client.projects.create(title=title, label_config=config)
    assert project.id is not None
    return project.id


def import_json_tasks(client: LabelStudio, project: int, datas: list[dict[str, Any]]) -> list[int]:
    """Import tasks and return their ids in the order given (matched by image URL)."""
    client.projects.import_tasks(id=project, request=[ImportApiRequest(data=data) for data in datas])
    by_image: dict[str, int] = {}
    listed: list[Any] = list(client.tasks.list(project=project))
    for task in listed:
        assert task.data is not None
        assert task.id is not None
        by_image[task.data["image"]] = task.id
    return [by_image[data["image"]] for data in datas]


def connect_backend(client: LabelStudio, project: int, backend: BackendServer, title: str) -> int:
    """Connect the backend to the project (Label Studio calls /health and /setup); returns the ML id."""
    ml = client.ml.create(project=project, url=backend.url, is_interactive=True, title=title)
    assert ml.id is not None
    return ml.id


def retrieve_predictions(ls: LabelStudioServer, project: int, task_ids: list[int]) -> dict[str, Any]:
    """Data Manager's "Retrieve predictions" action on the given tasks (synchronous in Label Studio)."""
    response = ls.api(
        "POST",
        f"/api/dm/actions?id=retrieve_tasks_predictions&project={project}",
        json={"selectedItems": {"all": False, "included": task_ids}},
        timeout=150,
    )
    body: dict[str, Any] = response.json()
    return body


def predictions_of(client: LabelStudio, task: int, model_version: str) -> list[Any]:
    return [p for p in client.predictions.list(task=task) if p.model_version == model_version]


def interactive(ls: LabelStudioServer, project: Project, role: str, text: str = QUERY) -> dict[str, Any]:
    """Interactive pre-annotation through Label Studio, with the prompt TextArea as the context."""
    context = {
        "result": [{"from_name": "prompt", "to_name": "image", "type": "textarea", "value": {"text": [text]}}]
    }
    response = ls.api(
        "POST",
        f"/api/ml/{project.ml_backend_id}/interactive-annotating",
        json={"task": project.tasks[role], "context": context},
        timeout=120,
    )
    body: dict[str, Any] = response.json()
    return body


def check_chain_prediction(
    prediction: dict[str, Any], size: tuple[int, int], model_version: str
) -> list[np.ndarray]:
    """Assert a prediction holds one brush region per chain level at the image size; return the masks."""
    width, height = size
    regions = [r for r in prediction["result"] if r["type"] == "brushlabels"]
    assert len(regions) == N_LEVELS, prediction["result"]
    assert [r["value"]["brushlabels"] for r in regions] == [[label] for label in LEVEL_LABELS]
    assert len({r["id"] for r in regions}) == N_LEVELS, "region ids must be unique"
    masks = []
    for region in regions:
        assert region["from_name"] == SCHEMA.controls[0].name
        assert region["to_name"] == SCHEMA.image_name
        assert (region["original_width"], region["original_height"]) == (width, height)
        assert region["value"]["format"] == "rle"
        mask = decode_mask(region["value"]["rle"], height, width)
        assert mask.shape == (height, width)
        sdk_pixels = decode_rle(region["value"]["rle"])  # Label Studio's own decoder agrees
        assert sdk_pixels.size == height * width * 4
        np.testing.assert_array_equal(sdk_pixels.reshape(height, width, 4)[:, :, 3] > 0, mask)
        assert isinstance(region["score"], float)
        assert math.isfinite(region["score"])
        meta_text = region["meta"]["text"]
        assert isinstance(meta_text, list)
        assert meta_text
        assert meta_text[0].strip()
        masks.append(mask)
    score = prediction["score"]
    assert isinstance(score, float)
    assert math.isfinite(score)
    assert prediction.get("model_version", model_version) == model_version
    return masks


# --- fixtures --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_version(e2e_backend: BackendServer) -> str:
    health = requests.get(f"{e2e_backend.url}/health", timeout=5).json()
    version: str = health["model_version"]
    return version


@pytest.fixture(scope="module")
def http_image_url(image_http_server: ImageHttpServer) -> str:
    (image_http_server.root / HTTP_IMAGE_NAME).write_bytes(png_bytes(*IMAGE_SIZES[HTTP], seed=2))
    return image_http_server.url_for(HTTP_IMAGE_NAME)


@pytest.fixture(scope="module")
def unreachable_url() -> str:
    """An image URL on a loopback port nothing listens on: the worker's download is refused."""
    return f"http://127.0.0.1:{free_tcp_port()}/gone.png"


@pytest.fixture(scope="module")
def shipped(
    label_studio: LabelStudioServer, e2e_backend: BackendServer, http_image_url: str, unreachable_url: str
) -> Project:
    """A project on the shipped label config, its three tasks imported, then the backend connected."""
    client = label_studio.sdk()
    project = create_project(client, "cores e2e shipped config", SHIPPED_CONFIG)
    # An image file uploaded to Label Studio: the task's image becomes /data/upload/<project>/<file>.
    label_studio.api(
        "POST",
        f"/api/projects/{project}/import",
        files={"file": ("kitchen.png", png_bytes(*IMAGE_SIZES[UPLOADED], seed=1), "image/png")},
    )
    listed: list[Any] = list(client.tasks.list(project=project))
    (uploaded,) = listed
    assert uploaded.id is not None
    assert uploaded.data is not None
    uploaded_url: str = uploaded.data["image"]
    assert uploaded_url.startswith("/data/upload/"), uploaded.data
    http_task, unreachable_task = import_json_tasks(
        client, project, [{"image": http_image_url}, {"image": unreachable_url}]
    )
    ml_id = connect_backend(client, project, e2e_backend, "CoReS (shipped config)")
    return Project(
        id=project,
        ml_backend_id=ml_id,
        tasks={UPLOADED: uploaded.id, HTTP: http_task, UNREACHABLE: unreachable_task},
        image_urls={UPLOADED: uploaded_url, HTTP: http_image_url, UNREACHABLE: unreachable_url},
        label_config=SHIPPED_CONFIG,
    )


@pytest.fixture(scope="module")
def with_query(label_studio: LabelStudioServer, e2e_backend: BackendServer, shipped: Project) -> Project:
    """A project whose TextArea reads ``$query``: tasks carry their query, so batch predictions work."""
    assert parse_label_config(QUERY_CONFIG).query_field == "query"
    client = label_studio.sdk()
    project = create_project(client, "cores e2e query field", QUERY_CONFIG)
    roles = [UPLOADED, HTTP, UNREACHABLE]
    ids = import_json_tasks(
        client, project, [{"image": shipped.image_urls[role], "query": QUERY} for role in roles]
    )
    ml_id = connect_backend(client, project, e2e_backend, "CoReS (query field)")
    return Project(
        id=project,
        ml_backend_id=ml_id,
        tasks=dict(zip(roles, ids, strict=True)),
        image_urls=dict(shipped.image_urls),
        label_config=QUERY_CONFIG,
    )


@pytest.fixture
def redis_db(redis_url: str) -> Iterator[redis.Redis]:
    """A client for the backend's Redis database (not flushed: the module's backend lives in it)."""
    conn = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        yield conn
    finally:
        conn.close()


# --- connection ------------------------------------------------------------------------------------------


def test_label_studio_connects_the_backend(
    label_studio: LabelStudioServer,
    e2e_backend: BackendServer,
    shipped: Project,
    model_version: str,
    redis_db: redis.Redis,
) -> None:
    health = requests.get(f"{e2e_backend.url}/health", timeout=5)
    assert health.status_code == 200
    assert health.json()["status"] == "UP"
    assert health.json()["model_class"] == "CoReS"

    ml = label_studio.api("GET", f"/api/ml/{shipped.ml_backend_id}").json()
    assert ml["state"] == "CO", f"ML backend not connected: {ml}" + diagnostics(label_studio, e2e_backend)
    assert ml["model_version"] == model_version
    assert ml["is_interactive"] is True

    # Label Studio's /setup call told the backend its host and the project creator's token.
    stored = redis_db.hgetall(f"{PROJECT_KEY}{shipped.id}")
    assert stored.get("hostname") == label_studio.url
    assert stored.get("access_token") == label_studio.token

    versions = label_studio.api("GET", f"/api/ml/{shipped.ml_backend_id}/versions").json()
    assert versions["versions"] == [model_version]

    # Label Studio 1.23 creates the backend's webhook itself when the backend is connected.
    hooks = label_studio.api("GET", f"/api/webhooks/?project={shipped.id}").json()
    ours = [hook for hook in hooks if hook["url"] == f"{e2e_backend.url}/webhook"]
    assert len(ours) == 1, hooks
    assert ours[0]["is_active"] is True
    assert ours[0]["send_payload"] is True
    assert ours[0]["send_for_all_actions"] is True
    # ... and the backend put the project's webhook secret on it (no basic auth: the secure default)
    wait_for(
        lambda: (
            SECRET_HEADER
            in (label_studio.api("GET", f"/api/webhooks/{ours[0]['id']}/").json()["headers"] or {})
        ),
        30.0,
        "the backend to give its webhook the project's secret",
        details=lambda: diagnostics(label_studio, e2e_backend),
    )


# --- interactive pre-annotation --------------------------------------------------------------------------


@pytest.mark.parametrize("role", [UPLOADED, HTTP])
def test_interactive_prediction_gives_one_mask_per_chain_level(
    label_studio: LabelStudioServer,
    e2e_backend: BackendServer,
    image_http_server: ImageHttpServer,
    shipped: Project,
    model_version: str,
    role: str,
) -> None:
    before = metric(e2e_backend, "cores_predict_requests_total", kind="interactive", outcome="ok")
    body = interactive(label_studio, shipped, role)
    assert "errors" not in body, f"{body}" + diagnostics(label_studio, e2e_backend)
    prediction = body["data"]
    assert "error" not in prediction, prediction
    masks = check_chain_prediction(prediction, shipped.sizes[role], model_version)
    assert len(masks) == N_LEVELS
    assert metric(e2e_backend, "cores_predict_requests_total", kind="interactive", outcome="ok") == before + 1
    if role == HTTP:
        assert image_http_server.requested(HTTP_IMAGE_NAME) >= 1, "the worker never fetched the image"
    else:  # the worker downloaded the upload from Label Studio with the API key
        served = f'"GET {shipped.image_urls[UPLOADED]} HTTP/1.1" 200'
        assert served in label_studio.log_path.read_text(errors="replace")
    # Label Studio stores nothing for interactive calls.
    client = label_studio.sdk()
    assert predictions_of(client, shipped.tasks[role], model_version) == []


def test_interactive_prediction_of_an_unreachable_image_is_an_error(
    label_studio: LabelStudioServer, e2e_backend: BackendServer, shipped: Project
) -> None:
    body = interactive(label_studio, shipped, UNREACHABLE)
    assert "errors" not in body, f"{body}" + diagnostics(label_studio, e2e_backend)
    prediction = body["data"]
    assert prediction["result"] == []
    assert prediction["error"]["code"] == "image_fetch", prediction
    assert prediction["error"]["task"] == shipped.tasks[UNREACHABLE]
    # ... and the backend still answers the next annotator.
    again = interactive(label_studio, shipped, UPLOADED)
    assert len(again["data"]["result"]) == N_LEVELS, again


# --- batch predictions ("Retrieve predictions") ----------------------------------------------------------


def test_retrieve_predictions_stores_one_chain_per_task_once(
    label_studio: LabelStudioServer, e2e_backend: BackendServer, with_query: Project, model_version: str
) -> None:
    client = label_studio.sdk()
    good = [with_query.tasks[UPLOADED], with_query.tasks[HTTP]]
    bad = with_query.tasks[UNREACHABLE]
    errors_before = metric(e2e_backend, "cores_task_errors_total", code="image_fetch")
    ls_log = log_size(label_studio.log_path)

    answer = retrieve_predictions(label_studio, with_query.id, [*good, bad])
    assert answer.get("processed_items") == 3, answer

    def stored() -> dict[int, list[Any]] | None:
        found = {task: predictions_of(client, task, model_version) for task in good}
        return found if all(found.values()) else None

    found = wait_for(
        stored,
        WAIT_S,
        "the predictions of the two reachable tasks",
        details=lambda: diagnostics(label_studio, e2e_backend),
    )
    for role in (UPLOADED, HTTP):
        (prediction,) = found[with_query.tasks[role]]
        check_chain_prediction(
            {
                "result": prediction.result,
                "score": prediction.score,
                "model_version": prediction.model_version,
            },
            with_query.sizes[role],
            model_version,
        )
    # The unreachable image gave a per-task error: nothing stored for it, the others unharmed.
    assert client.predictions.list(task=bad) == []
    assert metric(e2e_backend, "cores_task_errors_total", code="image_fetch") >= errors_before + 1
    ls_said = log_since(label_studio.log_path, ls_log)
    assert "image_fetch" in ls_said, "Label Studio did not log the task's error element:\n" + ls_said[-3000:]

    # Again: Label Studio skips tasks that hold this model version and asks only for the failed one,
    # which fails again; no task gets a second prediction.
    retrieve_predictions(label_studio, with_query.id, [*good, bad])
    time.sleep(1.0)  # a (wrong) late write-back would land within this
    for task in good:
        assert len(predictions_of(client, task, model_version)) == 1
    assert client.predictions.list(task=bad) == []


def test_retrieve_predictions_with_the_shipped_config_reports_a_missing_query(
    label_studio: LabelStudioServer, e2e_backend: BackendServer, shipped: Project, model_version: str
) -> None:
    """The shipped config's TextArea has no ``value``: tasks carry no query, so batch calls predict
    nothing (each task gets a ``missing_query`` error element) and Label Studio stores nothing."""
    client = label_studio.sdk()
    before = metric(e2e_backend, "cores_task_errors_total", code="missing_query")
    tasks = [shipped.tasks[UPLOADED], shipped.tasks[HTTP]]
    retrieve_predictions(label_studio, shipped.id, tasks)
    assert metric(e2e_backend, "cores_task_errors_total", code="missing_query") == before + len(tasks)
    for task in tasks:
        assert predictions_of(client, task, model_version) == []


def test_deferred_predictions_are_written_back_once_with_setup_credentials(
    label_studio: LabelStudioServer,
    tiny_checkpoint: Path,
    tmp_path: Path,
    with_query: Project,
    model_version: str,
) -> None:
    """A backend configured with nothing about Label Studio (no LABEL_STUDIO_URL/API_KEY: only what
    /setup sent) and a tiny ``PREDICT_DEADLINE``: its web answers ``[]`` for tasks still running, and the
    job fetches the uploaded image and writes the predictions through Label Studio's API, exactly once;
    asked again, the write-back skips tasks that already hold the model version.

    It runs in the one-command mode (embedded Redis and worker) so that its worker is the only one that
    can take its jobs (the module's backend has the Label Studio settings in its environment).
    """
    client = label_studio.sdk()
    ls_log = log_size(label_studio.log_path)
    project = create_project(client, "cores e2e deferred write-back", QUERY_CONFIG)
    roles = [UPLOADED, HTTP]
    ids = import_json_tasks(
        client, project, [{"image": with_query.image_urls[role], "query": QUERY} for role in roles]
    )
    with BackendServer(
        tmp_path / "impatient",
        checkpoint=tiny_checkpoint,
        redis_url=None,
        env={"PREDICT_DEADLINE": "0.001"},  # past before the jobs are even queued
    ) as impatient:
        assert "LABEL_STUDIO_URL" not in impatient.environment()
        connect_backend(client, project, impatient, "CoReS (short deadline, /setup credentials)")
        retrieve_predictions(label_studio, project, ids)
        assert metric(impatient, "cores_tasks_total", outcome="deferred") == len(ids)

        def written() -> bool:
            done = metric(impatient, "cores_writebacks_total", outcome="created") >= len(ids)
            return done and all(predictions_of(client, task, model_version) for task in ids)

        wait_for(
            written,
            WAIT_S,
            "the write-back of the deferred predictions",
            details=lambda: diagnostics(label_studio, impatient),
        )
        for role, task in zip(roles, ids, strict=True):
            (prediction,) = predictions_of(client, task, model_version)
            check_chain_prediction(
                {"result": prediction.result, "score": prediction.score}, IMAGE_SIZES[role], model_version
            )

        # The backend's own write-back is idempotent: asked again directly (past Label Studio's filter),
        # the job finds this model version on the tasks and writes nothing.
        payload: dict[str, Any] = {
            "tasks": [
                {"id": task, "data": {"image": with_query.image_urls[role], "query": QUERY}}
                for role, task in zip(roles, ids, strict=True)
            ],
            "project": f"{project}.1",
            "label_config": QUERY_CONFIG,
            "params": {"login": None, "password": None, "context": None},
        }
        answer = requests.post(f"{impatient.url}/predict", json=payload, timeout=30)
        assert answer.status_code == 200, answer.text
        assert answer.json()["results"] == [[]] * len(ids)
        wait_for(
            lambda: metric(impatient, "cores_writebacks_total", outcome="skipped") >= len(ids),
            WAIT_S,
            "the repeated jobs to skip the tasks",
            details=lambda: diagnostics(label_studio, impatient),
        )
        for task in ids:
            assert len(predictions_of(client, task, model_version)) == 1
        assert metric(impatient, "cores_writebacks_total", outcome="failed") == 0
        # the write-back names the project (Label Studio warns for every prediction created without it)
        assert "project_id is not set for prediction" not in log_since(label_studio.log_path, ls_log)


# --- webhooks --------------------------------------------------------------------------------------------


def annotation_result(size: tuple[int, int], query: str = QUERY) -> list[dict[str, Any]]:
    """An annotator's result on the shipped config: a level-2 brush region and the prompt text."""
    width, height = size
    mask = np.zeros((height, width), dtype=bool)
    mask[height // 6 : height // 2, width // 4 : 3 * width // 4] = True
    return [
        {
            "id": "knife1",
            "from_name": SCHEMA.controls[0].name,
            "to_name": SCHEMA.image_name,
            "type": "brushlabels",
            "original_width": width,
            "original_height": height,
            "image_rotation": 0,
            "value": {"format": "rle", "rle": encode_mask(mask), "brushlabels": [LEVEL_LABELS[-1]]},
        },
        {
            "id": "prompt1",
            "from_name": SCHEMA.prompt_from_name,
            "to_name": SCHEMA.image_name,
            "type": "textarea",
            "value": {"text": [query]},
        },
    ]


_WEBHOOK_ANSWER = re.compile(r'POST /webhook\S*(?: HTTP/1\.[01]")? (\d{3})\b')
"""An access-log line of a POST /webhook and its status: gunicorn's (``"POST /webhook HTTP/1.1" 200 52``)
or the backend's own (``POST /webhook 200 3.1 ms 127.0.0.1``)."""


def webhook_statuses(backend: BackendServer, offset: int) -> list[str]:
    """HTTP statuses of the POST /webhook requests the backend logged after byte ``offset``."""
    return _WEBHOOK_ANSWER.findall(log_since(backend.log_path, offset))


def test_annotation_created_reaches_the_backend_webhook(
    label_studio: LabelStudioServer, e2e_backend: BackendServer, shipped: Project
) -> None:
    """Submitting an annotation makes Label Studio POST ANNOTATION_CREATED to <backend>/webhook.

    Observed without hooks into the backend: its access log shows the POST answered 2xx, and the event is
    visible in what the backend provides: a record in the correction log (``corrections list``), a
    webhook counter in /metrics, or the action's name in its log.
    """

    def webhook_counter() -> float:
        return sum(
            value
            for name, labels, value in metrics(e2e_backend)
            if "webhook" in name and labels.get("action") == "ANNOTATION_CREATED"
        )

    counter_before = webhook_counter()
    offset = log_size(e2e_backend.log_path)
    client = label_studio.sdk()
    annotation = client.annotations.create(
        id=shipped.tasks[UPLOADED], result=annotation_result(shipped.sizes[UPLOADED])
    )
    assert annotation.id is not None

    def recorded() -> list[dict[str, Any]]:
        return [
            r for r in correction_records(e2e_backend, shipped.id) if r.get("annotation") == annotation.id
        ]

    def received() -> bool:
        if not webhook_statuses(e2e_backend, offset):
            return False
        seen = "ANNOTATION_CREATED" in log_since(e2e_backend.log_path, offset)
        return seen or webhook_counter() > counter_before or bool(recorded())

    wait_for(
        received,
        30.0,
        "the ANNOTATION_CREATED webhook at the backend",
        details=lambda: diagnostics(label_studio, e2e_backend),
    )
    statuses = webhook_statuses(e2e_backend, offset)
    assert all(status.startswith("2") for status in statuses), statuses
    for record in recorded():  # when the correction loop records it, it records it right
        assert record["action"] == "ANNOTATION_CREATED"
        assert record["task"] == shipped.tasks[UPLOADED]
        assert record["query"] == QUERY


def test_an_accepted_prediction_is_recorded_as_uncorrected(
    label_studio: LabelStudioServer, e2e_backend: BackendServer, with_query: Project, model_version: str
) -> None:
    """An annotator who submits a stored prediction unchanged (as the editor does: ``parent_prediction``
    set, the prediction's regions as the result): the correction log links the record to that prediction
    and finds nothing corrected (IoU 1 on every level)."""
    client = label_studio.sdk()
    task = with_query.tasks[HTTP]
    retrieve_predictions(label_studio, with_query.id, [task])  # a no-op when the task already holds one
    (prediction,) = wait_for(
        lambda: predictions_of(client, task, model_version),
        WAIT_S,
        "the task's prediction",
        details=lambda: diagnostics(label_studio, e2e_backend),
    )
    result = [dict(region) for region in prediction.result if region["type"] == "brushlabels"]
    assert len(result) == N_LEVELS
    result += [r for r in annotation_result(with_query.sizes[HTTP]) if r["type"] == "textarea"]
    annotation = client.annotations.create(id=task, result=result, parent_prediction=prediction.id)
    assert annotation.id is not None

    def recorded() -> list[dict[str, Any]]:
        return [
            r for r in correction_records(e2e_backend, with_query.id) if r.get("annotation") == annotation.id
        ]

    (record,) = wait_for(
        recorded,
        30.0,
        "the correction record of the annotation",
        details=lambda: diagnostics(label_studio, e2e_backend),
    )
    assert record["action"] == "ANNOTATION_CREATED"
    assert record["query"] == QUERY
    assert record["prediction_id"] == prediction.id, record
    assert record["model_version"] == model_version, record
    assert [level["has_prediction"] for level in record["levels"]] == [True] * N_LEVELS, record
    assert record["final_iou"] == pytest.approx(1.0), record


def test_a_prediction_named_only_by_id_is_fetched_from_label_studio(
    label_studio: LabelStudioServer, e2e_backend: BackendServer, shipped: Project
) -> None:
    """A prediction the backend does not remember (another model's, stored in Label Studio): the webhook
    names it only by ``parent_prediction``; the backend records the annotation at once and then fetches
    the prediction from Label Studio's API and sets its masks and IoUs on the record."""
    client = label_studio.sdk()
    task = shipped.tasks[UNREACHABLE]  # its image never loaded: the backend predicted nothing for it
    width, height = IMAGE_SIZES[HTTP]
    accepted = annotation_result((width, height))
    context = np.zeros((height, width), dtype=bool)
    context[: height // 2, :] = True
    level1 = {
        **accepted[0],
        "id": "ctx1",
        "value": {"format": "rle", "rle": encode_mask(context), "brushlabels": [LEVEL_LABELS[0]]},
    }
    prediction = client.predictions.create(
        task=task,
        result=[level1, accepted[0]],
        score=0.5,
        model_version="hand-made-v0",
        project=shipped.id,
    )
    assert prediction.id is not None
    annotation = client.annotations.create(id=task, result=accepted, parent_prediction=prediction.id)

    def enriched() -> list[dict[str, Any]]:
        return [
            r
            for r in correction_records(e2e_backend, shipped.id)
            if r.get("annotation") == annotation.id and r.get("model_version") is not None
        ]

    (record,) = wait_for(
        enriched,
        30.0,
        "the record of the annotation with the fetched prediction",
        details=lambda: diagnostics(label_studio, e2e_backend),
    )
    assert (record["prediction_id"], record["model_version"]) == (prediction.id, "hand-made-v0"), record
    assert [level["has_prediction"] for level in record["levels"]] == [True, True], record
    assert [level["iou"] for level in record["levels"]] == [pytest.approx(0.0), pytest.approx(1.0)], record
    assert record["final_iou"] == pytest.approx(1.0), record


# --- HTTP basic auth -------------------------------------------------------------------------------------

BASIC_AUTH = ("label-studio", "e2e-secret")


@pytest.fixture(scope="module")
def guarded_backend(
    label_studio: LabelStudioServer,
    e2e_backend: BackendServer,
    tiny_checkpoint: Path,
    redis_url: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[BackendServer]:
    """A second backend with BASIC_AUTH_USER/PASS on the module's Redis."""
    user, password = BASIC_AUTH
    with BackendServer(
        tmp_path_factory.mktemp("guarded"),
        checkpoint=tiny_checkpoint,
        redis_url=redis_url,
        env={
            "LABEL_STUDIO_URL": label_studio.url,
            "LABEL_STUDIO_API_KEY": label_studio.token,
            "BASIC_AUTH_USER": user,
            "BASIC_AUTH_PASS": password,
        },
    ) as server:
        yield server


@pytest.fixture
def guarded(label_studio: LabelStudioServer, guarded_backend: BackendServer, http_image_url: str) -> Project:
    """A fresh shipped-config project connected to ``guarded_backend`` with the user and password in
    the ML connection (as the README says)."""
    client = label_studio.sdk()
    project = create_project(client, "cores e2e basic auth", SHIPPED_CONFIG)
    (task,) = import_json_tasks(client, project, [{"image": http_image_url}])
    user, password = BASIC_AUTH
    ml = client.ml.create(
        project=project,
        url=guarded_backend.url,
        is_interactive=True,
        title="CoReS (basic auth)",
        auth_method="BASIC_AUTH",
        basic_auth_user=user,
        basic_auth_pass=password,
    )
    assert ml.id is not None
    return Project(
        id=project,
        ml_backend_id=ml.id,
        tasks={HTTP: task},
        image_urls={HTTP: http_image_url},
        label_config=SHIPPED_CONFIG,
    )


def annotate_and_wait_for_webhook(
    label_studio: LabelStudioServer, backend: BackendServer, project: Project
) -> list[str]:
    """Create an annotation on the project's task; return the statuses of the POST /webhook it caused."""
    offset = log_size(backend.log_path)
    label_studio.sdk().annotations.create(id=project.tasks[HTTP], result=annotation_result(IMAGE_SIZES[HTTP]))
    statuses: list[str] = wait_for(
        lambda: webhook_statuses(backend, offset),
        30.0,
        "Label Studio's webhook POST at the basic-auth backend",
        details=lambda: diagnostics(label_studio, backend),
    )
    return statuses


def test_basic_auth_connection_predicts(
    label_studio: LabelStudioServer, guarded_backend: BackendServer, guarded: Project, model_version: str
) -> None:
    """Label Studio sends the connection's user and password on /setup and /predict."""
    assert requests.post(f"{guarded_backend.url}/setup", json={}, timeout=5).status_code == 401
    ml = label_studio.api("GET", f"/api/ml/{guarded.ml_backend_id}").json()
    assert ml["state"] == "CO", f"{ml}" + diagnostics(label_studio, guarded_backend)
    body = interactive(label_studio, guarded, HTTP)
    assert "errors" not in body, f"{body}" + diagnostics(label_studio, guarded_backend)
    check_chain_prediction(body["data"], IMAGE_SIZES[HTTP], model_version)


BASIC_HEADER = "Basic " + base64.b64encode(":".join(BASIC_AUTH).encode()).decode()


def wait_for_webhook_credentials(
    label_studio: LabelStudioServer, backend: BackendServer, project: Project
) -> list[dict[str, Any]]:
    """Wait until every webhook of the project carries the backend's basic-auth header; return them."""

    def authorized() -> list[dict[str, Any]] | None:
        hooks: list[dict[str, Any]] = label_studio.api("GET", f"/api/webhooks/?project={project.id}").json()
        ok = hooks and all((hook["headers"] or {}).get("Authorization") == BASIC_HEADER for hook in hooks)
        return hooks if ok else None

    found: list[dict[str, Any]] = wait_for(
        authorized,
        30.0,
        "the backend to give the project's webhook its basic-auth credentials",
        details=lambda: diagnostics(label_studio, backend),
    )
    return found


def test_basic_auth_backend_accepts_label_studio_webhooks(
    label_studio: LabelStudioServer, guarded_backend: BackendServer, guarded: Project
) -> None:
    """Label Studio 1.23 creates the backend's webhook without credentials (the ML connection's user and
    password go only to /setup, /predict, /versions, /train); after /setup the backend puts them on the
    webhook itself, so annotation webhooks are accepted and recorded."""
    hooks = wait_for_webhook_credentials(label_studio, guarded_backend, guarded)
    assert [hook["url"] for hook in hooks] == [f"{guarded_backend.url}/webhook"]
    statuses = annotate_and_wait_for_webhook(label_studio, guarded_backend, guarded)
    assert statuses == ["200"], f"POST /webhook answered {statuses}"
    wait_for(
        lambda: correction_records(guarded_backend, guarded.id),
        30.0,
        "the correction record of the annotation",
        details=lambda: diagnostics(label_studio, guarded_backend),
    )


def test_basic_auth_webhook_401_is_logged_and_the_ensure_command_fixes_it(
    label_studio: LabelStudioServer, guarded_backend: BackendServer, guarded: Project
) -> None:
    """A webhook that lost its credentials: the 401 is a WARNING in the backend's log, and
    ``python -m backend webhooks ensure --project ID`` puts the credentials back."""
    (hook,) = wait_for_webhook_credentials(label_studio, guarded_backend, guarded)
    label_studio.api("PATCH", f"/api/webhooks/{hook['id']}/", json={"headers": {}})
    offset = log_size(guarded_backend.log_path)
    statuses = annotate_and_wait_for_webhook(label_studio, guarded_backend, guarded)
    assert statuses == ["401"], statuses
    assert "WARNING" in log_since(guarded_backend.log_path, offset)
    assert "POST /webhook from 127.0.0.1 answered 401" in log_since(guarded_backend.log_path, offset)

    ensured = subprocess.run(
        [sys.executable, "-m", "backend", "webhooks", "ensure", "--project", str(guarded.id)],
        cwd=REPO_ROOT,
        env=guarded_backend.environment(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert ensured.returncode == 0, ensured.stderr
    assert "Authorization header set" in ensured.stdout
    wait_for_webhook_credentials(label_studio, guarded_backend, guarded)
    statuses = annotate_and_wait_for_webhook(label_studio, guarded_backend, guarded)
    assert statuses == ["200"], statuses


def test_basic_auth_webhook_with_credentials_in_its_headers(
    label_studio: LabelStudioServer, guarded_backend: BackendServer, guarded: Project
) -> None:
    """The operator's workaround: put an Authorization header on the project's webhook in Label Studio."""
    (hook,) = label_studio.api("GET", f"/api/webhooks/?project={guarded.id}").json()
    token = base64.b64encode(":".join(BASIC_AUTH).encode()).decode()
    label_studio.api(
        "PATCH", f"/api/webhooks/{hook['id']}/", json={"headers": {"Authorization": f"Basic {token}"}}
    )
    statuses = annotate_and_wait_for_webhook(label_studio, guarded_backend, guarded)
    assert statuses == ["200"], f"POST /webhook answered {statuses}" + diagnostics(
        label_studio, guarded_backend
    )


# --- bulk pre-annotation through the real Label Studio API -------------------------------------------
def test_preannotate_writes_one_prediction_per_task_and_resumes(
    label_studio: LabelStudioServer, e2e_backend: BackendServer, http_image_url: str, model_version: str
) -> None:
    """``python -m backend preannotate`` lists the project's tasks, lets the worker predict them, writes
    the predictions through Label Studio's API, and on a second run skips every task (resumable). The
    workers write with the token Label Studio's /setup gave for the project (they have no
    LABEL_STUDIO_API_KEY), so the backend is connected to it first; the command itself uses the key."""
    client = label_studio.sdk()
    project = create_project(client, "cores e2e preannotate", SHIPPED_CONFIG)
    tasks = import_json_tasks(client, project, [{"image": http_image_url} for _ in range(3)])
    connect_backend(client, project, e2e_backend, "CoReS (preannotate)")

    def run() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "backend",
                "preannotate",
                "--project",
                str(project),
                "--query",
                QUERY,
                "--no-progress",
            ],
            env={**e2e_backend.environment(), "LABEL_STUDIO_API_KEY": label_studio.token},
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=WAIT_S,
        )

    first = run()
    assert first.returncode == 0, first.stdout + first.stderr
    assert "3 tasks, 3 done, 0 skipped (already predicted), 0 failed" in first.stdout, first.stdout
    size = IMAGE_SIZES[HTTP]
    for task in tasks:
        (prediction,) = predictions_of(client, task, model_version)
        check_chain_prediction(
            {
                "result": prediction.result,
                "score": prediction.score,
                "model_version": prediction.model_version,
            },
            size,
            model_version,
        )
    second = run()
    assert second.returncode == 0, second.stdout + second.stderr
    for task in tasks:
        assert len(predictions_of(client, task, model_version)) == 1
    assert "3 tasks, 0 done, 3 skipped (already predicted), 0 failed" in second.stdout, second.stdout
