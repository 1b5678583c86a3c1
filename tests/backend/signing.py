"""A Flask test client that signs ``POST /webhook`` as Label Studio does once the backend set up its webhook.

Kept apart from ``conftest`` so that subprocess tests can use it without importing the worker.
"""

from __future__ import annotations

from typing import Any

from flask import Flask
from flask.testing import FlaskClient

from backend.label_studio.webhook_secret import SECRET_HEADER, event_project, project_secret


class LabelStudioClient(FlaskClient):
    """A test client that, like Label Studio once the backend set up its webhook, sends the project's
    ``X-Cores-Webhook-Secret`` on ``POST /webhook`` (the project read from the JSON body as the web reads
    it). Other requests are sent as given."""

    def open(self, *args: Any, **kwargs: Any) -> Any:
        path = args[0] if args and isinstance(args[0], str) else kwargs.get("path", "")
        body = kwargs.get("json")
        master = self.application.extensions["cores"].webhook_master
        if path == "/webhook" and isinstance(body, dict) and master is not None:
            project = event_project(body)
            if project is not None:
                headers = dict(kwargs.pop("headers", None) or {})
                headers.setdefault(SECRET_HEADER, project_secret(master, project))
                kwargs["headers"] = headers
        return super().open(*args, **kwargs)


def signed_client(app: Flask) -> FlaskClient:
    """A ``LabelStudioClient`` of ``app``."""
    app.test_client_class = LabelStudioClient
    return app.test_client()
