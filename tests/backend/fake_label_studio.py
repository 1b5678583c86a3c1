"""A small stand-in for Label Studio's REST API, run in a thread, for backend tests without a real server.

It implements just what the backend calls through label-studio-sdk (projects.get, tasks.list with pages,
predictions.list by task or project, predictions.create, predictions.get, ml.list, webhooks.list and
webhooks.update) and serves images: ``/data/upload/...`` needs ``Authorization: Token <token>`` like Label
Studio; ``/images/<name>`` is open. It records the predictions it receives and the API calls made
(``calls``). The real-server end-to-end tests live in ``tests/e2e``.
"""

from __future__ import annotations

import base64
import io
import itertools
import threading
import time
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import numpy as np
from flask import Flask, Response, abort, jsonify, request
from PIL import Image
from werkzeug.serving import BaseWSGIServer, make_server

TOKEN = "0123456789abcdef0123456789abcdef01234567"


def png_bytes(width: int, height: int, seed: int = 0) -> bytes:
    """A random RGB PNG of ``width`` x ``height`` pixels."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


def data_uri(png: bytes) -> str:
    """``data:image/png;base64,...`` for PNG bytes."""
    return "data:image/png;base64," + base64.b64encode(png).decode()


def decode_png(png: bytes) -> np.ndarray:
    """HxWx3 uint8 RGB array of PNG bytes."""
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


@dataclass
class FakeLabelStudio:
    """The fake server's data; ``url`` is set once started (use as a context manager)."""

    label_config: str = ""
    tasks: list[dict[str, Any]] = field(default_factory=list)
    predictions: list[dict[str, Any]] = field(default_factory=list)
    images: dict[str, bytes] = field(default_factory=dict)
    ml_backends: list[dict[str, Any]] = field(default_factory=list)
    webhooks: list[dict[str, Any]] = field(default_factory=list)
    calls: list[str] = field(default_factory=list)
    prediction_delay_s: float = 0.0
    """Seconds ``GET /api/predictions/<id>/`` takes (to show a caller does not wait for it)."""
    url: str = ""
    _server: BaseWSGIServer | None = None
    _thread: threading.Thread | None = None
    _ids: Any = field(default_factory=lambda: itertools.count(1))
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def predictions_for(self, task_id: int) -> list[dict[str, Any]]:
        """Predictions stored for one task."""
        with self._lock:
            return [p for p in self.predictions if p["task"] == task_id]

    def _app(self) -> Flask:
        app = Flask("fake_label_studio")

        def authorized() -> None:
            with self._lock:
                self.calls.append(f"{request.method} {request.path}")
            if request.headers.get("Authorization") != f"Token {TOKEN}":
                abort(401)

        def by_project(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
            if "project" not in request.args:
                return list(items)
            return [item for item in items if item.get("project") == int(request.args["project"])]

        @app.get("/api/ml/")
        def list_ml() -> Response:
            authorized()
            with self._lock:
                return jsonify(by_project(self.ml_backends))

        @app.get("/api/webhooks/")
        def list_webhooks() -> Response:
            authorized()
            with self._lock:
                return jsonify(by_project(self.webhooks))

        @app.patch("/api/webhooks/<int:hook_id>/")
        def update_webhook(hook_id: int) -> Response:
            authorized()
            body = request.get_json(force=True)
            with self._lock:
                for hook in self.webhooks:
                    if hook["id"] == hook_id:
                        hook.update({k: v for k, v in body.items() if k in ("headers", "url", "is_active")})
                        return jsonify(hook)
            abort(404)

        @app.get("/api/predictions/<int:prediction_id>/")
        def get_prediction(prediction_id: int) -> Response:
            authorized()
            time.sleep(self.prediction_delay_s)
            with self._lock:
                for prediction in self.predictions:
                    if prediction["id"] == prediction_id:
                        return jsonify(prediction)
            abort(404)

        @app.get("/api/projects/<int:project>/")
        def project(project: int) -> Response:
            authorized()
            return jsonify({"id": project, "title": "fake", "label_config": self.label_config})

        @app.get("/api/tasks/")
        def tasks() -> Response:
            authorized()
            page = int(request.args.get("page", 1))
            size = int(request.args.get("page_size", 100))
            chunk = self.tasks[(page - 1) * size : page * size]
            if page > 1 and not chunk:
                abort(404)  # like Django REST framework past the last page
            return jsonify(
                {"tasks": chunk, "total": len(self.tasks), "total_annotations": 0, "total_predictions": 0}
            )

        @app.get("/api/predictions/")
        def list_predictions() -> Response:
            authorized()
            with self._lock:
                found = list(self.predictions)
            if "task" in request.args:
                found = [p for p in found if p["task"] == int(request.args["task"])]
            return jsonify(found)

        @app.post("/api/predictions/")
        def create_prediction() -> Response:
            authorized()
            body = request.get_json(force=True)
            with self._lock:
                record = {
                    "id": next(self._ids),
                    "task": int(body["task"]),
                    "result": body["result"],
                    "score": body.get("score"),
                    "model_version": body.get("model_version"),
                    "project": body.get("project"),
                }
                self.predictions.append(record)
            response = jsonify(record)
            response.status_code = 201
            return response

        @app.get("/data/upload/<path:name>")
        def upload(name: str) -> Response:
            authorized()
            return serve_image(name)

        @app.get("/images/<path:name>")
        def open_image(name: str) -> Response:
            return serve_image(name)

        def serve_image(name: str) -> Response:
            if name not in self.images:
                abort(404)
            return Response(self.images[name], mimetype="image/png")

        return app

    def __enter__(self) -> FakeLabelStudio:
        self._server = make_server("127.0.0.1", 0, self._app(), threaded=True)
        self.url = f"http://127.0.0.1:{self._server.server_port}"
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
