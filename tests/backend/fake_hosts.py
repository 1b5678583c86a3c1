"""Local HTTP servers that stand in for Label Studio and other hosts: they record every request's headers.

``FakeHost`` serves routes of the test's own on 127.0.0.1 (or another loopback address) and keeps what
each request carried, so a test can tell which host saw a token. Small PNGs and JWTs to serve with them.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from PIL import Image

LEGACY_TOKEN = "0123456789abcdef0123456789abcdef01234567"


def make_jwt(claims: dict[str, Any]) -> str:
    """An unsigned-looking JWT (the fetcher never verifies signatures)."""

    def part(obj: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).decode().rstrip("=")

    return f"{part({'alg': 'HS256', 'typ': 'JWT'})}.{part(claims)}.c2lnbmF0dXJl"


PAT = make_jwt({"token_type": "refresh", "exp": int(time.time()) + 86400, "jti": "pat"})


def encode(image: Image.Image, fmt: str = "PNG", **params: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def solid_png(width: int, height: int, color: tuple[int, int, int]) -> bytes:
    return encode(Image.new("RGB", (width, height), color))


RED = solid_png(8, 6, (255, 0, 0))
GREEN = solid_png(5, 4, (0, 255, 0))
BLUE = solid_png(3, 7, (0, 0, 255))


# ---- fake hosts ------------------------------------------------------------------------------------------


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]  # lower-cased names
    body: bytes


Route = Callable[["Handler", Seen], None]


class Handler(BaseHTTPRequestHandler):
    server: FakeHost

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def _dispatch(self, method: str) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        seen = Seen(method, self.path, {k.lower(): v for k, v in self.headers.items()}, body)
        host = self.server
        host.seen.append(seen)
        route = host.routes.get(urlsplit(self.path).path)
        if route is None:
            self.reply(404, b"not found", "text/plain")
        else:
            route(self, seen)

    def reply(
        self,
        status: int,
        body: bytes = b"",
        content_type: str = "image/png",
        headers: dict[str, str] | None = None,
        length: bool = True,
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        if length:
            self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self.wfile.write(body)

    def redirect(self, location: str, status: int = 302) -> None:
        self.reply(status, b"", "text/plain", {"Location": location})

    def log_message(self, format: str, *args: Any) -> None:
        pass


class FakeHost(ThreadingHTTPServer):
    """An HTTP/1.0 server on ``address`` (127.0.0.1) and ``port`` (ephemeral); records every request."""

    daemon_threads = True

    def __init__(self, address: str = "127.0.0.1", port: int = 0) -> None:
        super().__init__((address, port), Handler)
        self.routes: dict[str, Route] = {}
        self.seen: list[Seen] = []
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://{self.server_address[0]}:{self.server_address[1]}"

    def files(self, files: dict[str, bytes], content_type: str = "image/png") -> None:
        def serve(data: bytes) -> Route:
            return lambda h, _seen: h.reply(200, data, content_type)

        for path, data in files.items():
            self.routes[path] = serve(data)

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
