"""Flask's JSON on the project's codec (orjson): ``jsonify`` responses and ``request.get_json`` bodies.

Responses are encoded straight to bytes (no str round trip); keys keep their insertion order, as the
answers to Label Studio are built in the order its docs show.
"""

from __future__ import annotations

from typing import Any

from flask import Response
from flask.json.provider import JSONProvider

from backend.operations import json_codec


class FastJSONProvider(JSONProvider):
    """``app.json`` for the backend: ``backend.operations.json_codec`` underneath."""

    mimetype = "application/json"

    def dumps(self, obj: Any, **kwargs: Any) -> str:
        return json_codec.dumps_text(obj)

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        return json_codec.loads(s)

    def response(self, *args: Any, **kwargs: Any) -> Response:
        obj = self._prepare_response_obj(args, kwargs)
        return Response(json_codec.dumps(obj), mimetype=self.mimetype)
