"""``ImageFetchError``, its stable reason codes, and the mapping from transport exceptions to it.

Every failure to fetch or decode a task image is an ``ImageFetchError`` whose ``reason`` is one of
``FetchErrorReason``; ``transport_error`` turns a requests/urllib3/socket exception into one, with a message
that names the host but never a query string (presigned URLs carry signatures there).
"""

from __future__ import annotations

import re
import socket
from typing import Literal

import requests
import urllib3.exceptions

from backend.images.url_safety import display_hop

FetchErrorReason = Literal[
    "bad_url",  # not a form we can fetch, or malformed
    "config",  # needs label_studio_url / api_key / task_id that were not given
    "forbidden_host",  # private/loopback/link-local/reserved address without permission
    "forbidden_path",  # local path outside allow_local_files_root (or local files not allowed)
    "unreachable",  # DNS failure, refused connection, broken transfer
    "timeout",  # connect/read timeout or the overall deadline
    "redirects",  # more than MAX_REDIRECTS redirects
    "auth",  # Label Studio rejected the API key
    "not_found",  # HTTP 404/410 or a missing local file
    "http_error",  # any other non-2xx answer
    "too_large",  # byte cap or pixel cap
    "not_image",  # an HTML/JSON page or a non-image data: URI
    "corrupt",  # bytes that do not decode as a supported image
]


class ImageFetchError(Exception):
    """An image could not be fetched or decoded.

    Attributes:
        reason: a stable machine-readable code (see ``FetchErrorReason``).
        url: the requested URL as shown to users (credentials in it removed, data: URIs shortened).
        detail: what went wrong and what to do about it. Never contains the API key or access token.
    """

    def __init__(self, reason: FetchErrorReason, url: str, detail: str) -> None:
        self.reason: FetchErrorReason = reason
        self.url = url
        self.detail = detail
        super().__init__(f"cannot fetch image {url}: {detail} [{reason}]")

    def __reduce__(self) -> tuple[type[ImageFetchError], tuple[str, str, str]]:
        return (type(self), (self.reason, self.url, self.detail))


def transport_error(exc: Exception, url: str, shown: str) -> ImageFetchError:
    """Map a requests/urllib3/socket exception (connection, timeout, decoding) to an ImageFetchError."""
    where = display_hop(url)
    if _is_timeout(exc):
        return ImageFetchError(
            "timeout", shown, f"{where} did not answer in time ({_timeout_kind(exc)} timeout)"
        )
    if isinstance(exc, requests.exceptions.ContentDecodingError | urllib3.exceptions.DecodeError):
        return ImageFetchError("corrupt", shown, f"{where} sent a body that does not decompress ({exc})")
    if isinstance(exc, requests.exceptions.InvalidURL | requests.exceptions.MissingSchema):
        return ImageFetchError("bad_url", shown, f"invalid URL {where}")
    return ImageFetchError(
        "unreachable", shown, f"cannot connect to or read from {where} ({_short_reason(exc)})"
    )


def _is_timeout(exc: BaseException) -> bool:
    """True when ``exc`` or what it wraps is a timeout (urllib3's NewConnectionError subclasses its
    ConnectTimeoutError for history's sake, but is a refused or failed connection)."""
    cause: BaseException | None = exc
    for _ in range(10):
        if cause is None or isinstance(cause, urllib3.exceptions.NewConnectionError):
            return False
        if isinstance(cause, requests.Timeout | urllib3.exceptions.TimeoutError | socket.timeout):
            return True
        nested = cause.args[0] if cause.args and isinstance(cause.args[0], BaseException) else None
        cause = nested or getattr(cause, "reason", None) or cause.__cause__
        if not isinstance(cause, BaseException):
            return False
    return False


def _timeout_kind(exc: BaseException) -> str:
    """``connect`` for a connect timeout, else ``read``."""
    connect = requests.ConnectTimeout | urllib3.exceptions.ConnectTimeoutError
    return "connect" if isinstance(exc, connect) else "read"


def _short_reason(exc: BaseException) -> str:
    """The innermost cause's message (e.g. ``[Errno 111] Connection refused``), without URLs or queries."""
    inner: BaseException = exc
    for _ in range(10):
        nested = getattr(inner, "reason", None)
        if not isinstance(nested, BaseException) and inner.args and isinstance(inner.args[0], BaseException):
            nested = inner.args[0]
        if not isinstance(nested, BaseException) or nested is inner:
            break
        inner = nested
    text = str(inner)
    match = re.search(r"\[Errno -?\d+\][^'\"()]*", text)
    return match.group(0).strip() if match else type(inner).__name__
