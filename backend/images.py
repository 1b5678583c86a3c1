"""Fetch task images: resolve Label Studio URLs, download them safely, decode them to RGB arrays.

Task data names an image in one of these forms (the same rules as label-studio-sdk's resolver):

- ``/data/upload/<project>/<file>`` or ``/data/local-files/?d=<path>``: relative to Label Studio; fetched
  from ``label_studio_url`` with the API key (a ``/data/upload`` 404 is retried through
  ``/storage-data/uploaded/``).
  A ``/data/local-files`` file found under ``allow_local_files_root`` is read from disk instead.
- ``http(s)://...``: fetched directly; the API key is sent only when the URL is on the Label Studio origin
  (same scheme, host and port).
- ``s3://``, ``gs://``, ``azure-blob://``, ``azure-spi://``: resolved through Label Studio's
  ``/tasks/<task_id>/presign/?fileuri=<base64 uri>``, which redirects to the storage.
- ``data:image/...;base64,...``: decoded in place.
- a local path (``/abs/path`` or ``file://``): read only when it lies under ``allow_local_files_root``.

Downloads stream with timeouts, a byte cap and an overall deadline; redirects are followed by hand (at most
``MAX_REDIRECTS``) and every hop is re-checked, so credentials never leave the Label Studio origin and hosts
that resolve to private, loopback, link-local or reserved addresses are refused unless allowed. Decoded
images pass a pixel cap before any pixel is decoded, are turned upright from EXIF and converted to RGB.

Bytes are cached on disk by content hash (``cache_dir/<sha256[:2]>/<sha256>``, bounded by
``max_cache_bytes``); a bounded in-memory URL -> sha256 index and a bounded decoded-array cache let a repeated
URL skip the download and the decode.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import ipaddress
import json
import logging
import os
import re
import socket
import tempfile
import threading
import time
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import parse_qs, quote, unquote, urljoin, urlsplit

import numpy as np
import numpy.typing as npt
import requests
import urllib3.exceptions
from PIL import Image, ImageOps, UnidentifiedImageError

logger = logging.getLogger(__name__)

MB = 1024 * 1024
DEFAULT_MAX_BYTES = 50 * MB
DEFAULT_MAX_PIXELS = 80_000_000
DEFAULT_MAX_CACHE_BYTES = 2048 * MB
MAX_REDIRECTS = 5
CLOUD_SCHEMES = ("s3://", "gs://", "azure-blob://", "azure-spi://")
# Formats a browser (and so Label Studio) can show, plus TIFF; never EPS (it runs Ghostscript).
IMAGE_FORMATS = ("JPEG", "MPO", "PNG", "WEBP", "GIF", "BMP", "TIFF", "AVIF")

_TOKEN_REFRESH_MARGIN_S = 30.0
_ACCESS_TOKEN_DEFAULT_TTL_S = 300.0
_TMP_PREFIX = ".tmp-"
_SHA256_RE = re.compile(r"[0-9a-f]{64}")
_NOT_IMAGE_TYPES = ("text/html", "application/xhtml+xml", "application/json")
_REDIRECT_CODES = (301, 302, 303, 307, 308)
_USER_AGENT = "cores-labelstudio-backend image fetcher"

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


@dataclass(frozen=True)
class FetchedImage:
    """A decoded image.

    ``array`` is HxWx3 uint8 RGB, upright (EXIF orientation applied), read-only because it may be shared
    with the fetcher's cache (copy it before writing). ``width``/``height`` are its pixel size after
    orientation. ``sha256`` is the hex digest of the downloaded (encoded) bytes; ``source`` is the URL asked
    for.
    """

    array: npt.NDArray[np.uint8]
    sha256: str
    width: int
    height: int
    source: str


class ImageFetcher:
    """Resolves, downloads, caches and decodes task images. Safe to share between threads."""

    def __init__(
        self,
        *,
        cache_dir: Path,
        label_studio_url: str | None = None,
        api_key: str | None = None,
        max_bytes: int = DEFAULT_MAX_BYTES,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        timeout: float | tuple[float, float] = (10.0, 30.0),
        total_timeout: float = 120.0,
        allow_private_networks: bool = False,
        allow_local_files_root: Path | None = None,
        max_cache_bytes: int = DEFAULT_MAX_CACHE_BYTES,
        url_cache_size: int = 1024,
        url_cache_ttl: float = 600.0,
        decoded_cache_bytes: int = 256 * MB,
        verify_tls: bool | str = True,
    ) -> None:
        """Configure a fetcher; nothing is contacted until ``fetch``.

        Args:
            cache_dir: directory for the content-addressed byte cache (created if missing).
            label_studio_url: Label Studio base URL, e.g. ``http://ls:8080`` (a path prefix is kept).
            api_key: legacy token (sent as ``Token``) or personal access token (a JWT refresh token,
                exchanged at ``/api/token/refresh/`` and sent as ``Bearer``). Sent only to Label Studio.
            max_bytes: largest accepted encoded image, bytes.
            max_pixels: largest accepted width*height, checked before decoding.
            timeout: connect and read timeouts in seconds (one number for both).
            total_timeout: deadline in seconds for one download, redirects included.
            allow_private_networks: allow hosts other than Label Studio that resolve to private, loopback,
                link-local or reserved addresses (e.g. a MinIO on the same docker network).
            allow_local_files_root: local paths under this directory may be read; None refuses all.
            max_cache_bytes: disk cache bound; the oldest files (by mtime) are evicted beyond it.
            url_cache_size: entries in the in-memory URL -> sha256 index.
            url_cache_ttl: seconds a URL -> sha256 entry is trusted before the URL is downloaded again.
            decoded_cache_bytes: bound on decoded arrays kept in memory.
            verify_tls: ``requests``' ``verify``: True, False or a CA bundle path. Environment proxies,
                ``.netrc`` and CA variables are ignored (the session does not trust the environment).

        Raises:
            ValueError: a setting is out of range or ``label_studio_url`` is not an http(s) URL.
        """
        if label_studio_url is not None and not label_studio_url.startswith(("http://", "https://")):
            raise ValueError(
                f"label_studio_url must start with http:// or https://, got {label_studio_url!r}"
            )
        if min(max_bytes, max_pixels, total_timeout, max_cache_bytes, url_cache_size) <= 0:
            raise ValueError(
                "max_bytes, max_pixels, total_timeout, max_cache_bytes and url_cache_size must be > 0"
            )
        self._ls_url = label_studio_url.rstrip("/") if label_studio_url else None
        self._ls_origin = _origin(self._ls_url) if self._ls_url else None
        self._api_key = api_key.strip() if api_key and api_key.strip() else None
        self._token_kind = _token_kind(self._api_key)
        self._max_bytes = max_bytes
        self._max_pixels = max_pixels
        self._timeout = timeout
        self._total_timeout = total_timeout
        self._allow_private = allow_private_networks
        self._local_root: Path | None = None
        if allow_local_files_root is not None:
            root = Path(os.path.realpath(allow_local_files_root))
            if root == Path(root.anchor):
                raise ValueError("allow_local_files_root must not be the filesystem root")
            self._local_root = root
        self._cache_dir = Path(cache_dir)
        self._cache_dir.mkdir(parents=True, exist_ok=True)
        self._max_cache_bytes = max_cache_bytes
        self._url_cache_size = url_cache_size
        self._url_cache_ttl = url_cache_ttl
        self._decoded_cache_bytes = decoded_cache_bytes
        self._verify = verify_tls

        self._session = requests.Session()
        self._session.trust_env = False
        self._lock = threading.Lock()
        self._token_lock = threading.Lock()
        self._access_token: str | None = None
        self._access_expires = 0.0
        self._url_index: OrderedDict[str, tuple[str, float]] = OrderedDict()
        self._decoded: OrderedDict[str, npt.NDArray[np.uint8]] = OrderedDict()
        self._decoded_total = 0
        self._disk_total: int | None = None

    def close(self) -> None:
        """Close pooled HTTP connections."""
        self._session.close()

    def cached_path(self, sha256: str) -> Path | None:
        """Path of the cached bytes for a digest returned by ``fetch``; None if not (or no longer) cached."""
        if not _SHA256_RE.fullmatch(sha256):
            return None
        path = self._cache_path(sha256)
        return path if path.is_file() else None

    def fetch(self, url: str, task_id: int | None = None) -> FetchedImage:
        """Fetch and decode the image ``url`` names (see the module docstring for the accepted forms).

        Args:
            url: the value of the task's image field.
            task_id: the Label Studio task id; required for ``s3://``/``gs://``/``azure-blob://`` URIs.

        Returns:
            The decoded image; see ``FetchedImage``.

        Raises:
            ImageFetchError: with a ``reason`` code and a message naming the URL.
        """
        shown = _display_url(url)
        if url.startswith("data:"):
            return self._from_bytes(self._decode_data_uri(url, shown), url, shown)
        location = "/data/" + url.lstrip("/") if url.startswith(("upload/", "/upload/")) else url
        local = self._local_path(location, shown)
        if local is not None:
            return self._from_bytes(self._read_local(local, shown), url, shown)
        candidates = self._http_candidates(location, task_id, shown)
        cached = self._from_url_index(location, url, shown)
        if cached is not None:
            return cached
        image = self._from_bytes(self._download_first(candidates, shown), url, shown)
        with self._lock:
            self._url_index[location] = (image.sha256, time.monotonic())
            self._url_index.move_to_end(location)
            while len(self._url_index) > self._url_cache_size:
                self._url_index.popitem(last=False)
        return image

    # ---- resolution -------------------------------------------------------------------------------------

    def _decode_data_uri(self, url: str, shown: str) -> bytes:
        header, sep, payload = url.partition(",")
        media = header[len("data:") :].split(";")
        if not sep or "base64" not in media[1:]:
            raise ImageFetchError(
                "bad_url", shown, "only base64 data: URIs are supported (data:image/png;base64,...)"
            )
        if not media[0].lower().startswith("image/"):
            raise ImageFetchError(
                "not_image", shown, f"the data: URI holds {media[0] or 'text/plain'}, not an image"
            )
        payload = "".join(unquote(payload).split())
        if len(payload) * 3 // 4 > self._max_bytes:
            raise ImageFetchError(
                "too_large", shown, f"the data: URI holds more than max_bytes={self._max_bytes} bytes"
            )
        try:
            return base64.b64decode(payload + "=" * (-len(payload) % 4), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ImageFetchError("corrupt", shown, f"the data: URI is not valid base64 ({exc})") from exc

    def _local_path(self, url: str, shown: str) -> Path | None:
        """Local file to read for ``url``, None when it must be fetched over HTTP."""
        if url.startswith("/data/local-files"):
            if self._local_root is None:
                return None
            values = parse_qs(urlsplit(url).query, keep_blank_values=True).get("d")
            relative = os.path.normpath(values[-1] if values else "").lstrip("/")
            candidate = self._local_root / relative
            inside = _is_within(candidate, self._local_root)
            return candidate if relative not in ("", ".") and inside and candidate.is_file() else None
        if url.startswith("file://"):
            path = Path(unquote(urlsplit(url).path))
        elif url.startswith("/") and not _is_ls_relative(url):
            path = Path(url)
        else:
            return None
        if self._local_root is None:
            raise ImageFetchError(
                "forbidden_path",
                shown,
                "local file paths are refused; set allow_local_files_root to allow a directory",
            )
        if not _is_within(path, self._local_root):
            raise ImageFetchError(
                "forbidden_path", shown, f"the path is outside allow_local_files_root ({self._local_root})"
            )
        return path

    def _read_local(self, path: Path, shown: str) -> bytes:
        try:
            size = path.stat().st_size
            if not path.is_file():
                raise ImageFetchError("not_found", shown, "the path is not a regular file")
            if size > self._max_bytes:
                raise ImageFetchError(
                    "too_large", shown, f"the file has {size} bytes, above max_bytes={self._max_bytes}"
                )
            return path.read_bytes()
        except FileNotFoundError as exc:
            raise ImageFetchError("not_found", shown, "no such file") from exc
        except OSError as exc:
            raise ImageFetchError("not_found", shown, f"cannot read the file ({exc.strerror})") from exc

    def _http_candidates(self, url: str, task_id: int | None, shown: str) -> list[str]:
        """URLs to try in order (later ones only after a 404)."""
        if _is_ls_relative(url):
            base = self._require_label_studio(shown)
            candidates = [base + url]
            if url.startswith("/data/upload/"):
                filepath = quote(url[len("/data/") :], safe="/")
                candidates.append(f"{base}/storage-data/uploaded/?filepath={filepath}")
            return candidates
        if url.startswith(CLOUD_SCHEMES):
            base = self._require_label_studio(shown)
            if task_id is None:
                raise ImageFetchError(
                    "config",
                    shown,
                    "cloud storage URIs are resolved through Label Studio and need the task id",
                )
            fileuri = base64.urlsafe_b64encode(url.encode()).decode()
            return [f"{base}/tasks/{int(task_id)}/presign/?fileuri={fileuri}"]
        parts = urlsplit(url)
        if parts.scheme in ("http", "https") and parts.hostname:
            return [url]
        raise ImageFetchError(
            "bad_url",
            shown,
            "unsupported image URL; expected http(s)://, /data/upload/..., /data/local-files/?d=..., "
            "s3://, gs://, azure-blob://, data:image/...;base64, or a local path",
        )

    def _require_label_studio(self, shown: str) -> str:
        if self._ls_url is None:
            raise ImageFetchError(
                "config",
                shown,
                "this URL is served by Label Studio; set the Label Studio URL (LABEL_STUDIO_URL)",
            )
        if self._api_key is None:
            raise ImageFetchError(
                "config", shown, "Label Studio needs an API key for this URL; set LABEL_STUDIO_API_KEY"
            )
        return self._ls_url

    # ---- download ---------------------------------------------------------------------------------------

    def _download_first(self, candidates: list[str], shown: str) -> bytes:
        for index, candidate in enumerate(candidates):
            try:
                return self._download(candidate, shown)
            except ImageFetchError as exc:
                if exc.reason != "not_found" or index == len(candidates) - 1:
                    raise
                logger.debug(
                    "%s not found, trying %s", _display_hop(candidate), _display_hop(candidates[index + 1])
                )
        raise AssertionError("no candidate URLs")  # _http_candidates never returns an empty list

    def _download(self, url: str, shown: str) -> bytes:
        try:
            return self._follow(url, shown, retry_auth=True)
        except _StaleAccessTokenError:
            with self._token_lock:
                self._access_token = None
            return self._follow(url, shown, retry_auth=False)

    def _follow(self, url: str, shown: str, *, retry_auth: bool) -> bytes:
        """GET ``url``, following redirects by hand and re-checking each hop."""
        deadline = time.monotonic() + self._total_timeout
        hop_url = url
        still_on_ls = True
        for _ in range(MAX_REDIRECTS + 1):
            parts = urlsplit(hop_url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ImageFetchError(
                    "bad_url", shown, f"redirected to a non-http(s) URL {_display_hop(hop_url)}"
                )
            on_ls = self._ls_origin is not None and _origin(hop_url) == self._ls_origin
            still_on_ls = still_on_ls and on_ls
            use_auth = still_on_ls and self._api_key is not None
            if not on_ls:
                self._check_host(hop_url, shown)
            headers = {"User-Agent": _USER_AGENT, "Accept": "image/*, */*;q=0.5"}
            if use_auth:
                headers["Authorization"] = self._authorization(shown)
            resp = self._get(hop_url, headers, shown, deadline)
            try:
                if not on_ls:
                    self._check_peer(resp, hop_url, shown)
                location = resp.headers.get("Location")
                if resp.status_code in _REDIRECT_CODES and location:
                    hop_url = urljoin(hop_url, location)
                    continue
                if resp.status_code == 401 and use_auth and retry_auth and self._token_kind == "refresh":
                    raise _StaleAccessTokenError
                self._check_response(resp, hop_url, on_ls, shown)
                body = self._read_body(resp, shown, deadline)
                logger.debug("downloaded %s (%d bytes)", shown, len(body))
                return body
            finally:
                resp.close()
        raise ImageFetchError("redirects", shown, f"more than {MAX_REDIRECTS} redirects")

    def _get(self, url: str, headers: dict[str, str], shown: str, deadline: float) -> requests.Response:
        if time.monotonic() > deadline:
            raise ImageFetchError("timeout", shown, f"gave up after total_timeout={self._total_timeout}s")
        try:
            return self._session.get(
                url,
                headers=headers,
                timeout=self._timeout,
                stream=True,
                allow_redirects=False,
                verify=self._verify,
            )
        except requests.RequestException as exc:
            raise _transport_error(exc, url, shown) from exc

    def _check_host(self, url: str, shown: str) -> None:
        """Refuse a host that resolves to a non-public address (unless private networks are allowed)."""
        if self._allow_private:
            return
        parts = urlsplit(url)
        host = parts.hostname or ""
        try:
            addresses = _resolve_addresses(host, parts.port or (443 if parts.scheme == "https" else 80))
        except OSError as exc:
            raise ImageFetchError("unreachable", shown, f"cannot resolve host {host!r} ({exc})") from exc
        for address in addresses:
            if _is_forbidden_ip(address):
                raise ImageFetchError("forbidden_host", shown, _forbidden_detail(host, address))

    def _check_peer(self, resp: requests.Response, url: str, shown: str) -> None:
        """Re-check the address actually connected to (a DNS answer may change after ``_check_host``)."""
        if self._allow_private:
            return
        peer = _peer_address(resp)
        if peer is not None and _is_forbidden_ip(peer):
            raise ImageFetchError(
                "forbidden_host", shown, _forbidden_detail(urlsplit(url).hostname or "", peer)
            )

    def _check_response(self, resp: requests.Response, url: str, on_ls: bool, shown: str) -> None:
        status = resp.status_code
        where = "Label Studio" if on_ls else _display_hop(url)
        if status in (401, 403) and on_ls:
            raise ImageFetchError(
                "auth",
                shown,
                f"Label Studio answered HTTP {status}: check LABEL_STUDIO_API_KEY (a legacy token also needs "
                "legacy tokens enabled in Label Studio) and that the key's user can see this project",
            )
        if status in (404, 410):
            raise ImageFetchError("not_found", shown, f"{where} answered HTTP {status}")
        if not 200 <= status < 300:
            raise ImageFetchError("http_error", shown, f"{where} answered HTTP {status}")
        content_type = resp.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if content_type in _NOT_IMAGE_TYPES:
            hint = (
                " (often the login page: check LABEL_STUDIO_API_KEY)"
                if on_ls and content_type == "text/html"
                else ""
            )
            raise ImageFetchError(
                "not_image", shown, f"{where} returned a {content_type} page, not an image{hint}"
            )
        length = resp.headers.get("Content-Length", "")
        if length.isdigit() and int(length) > self._max_bytes:
            raise ImageFetchError(
                "too_large", shown, f"the image has {length} bytes, above max_bytes={self._max_bytes}"
            )

    def _read_body(self, resp: requests.Response, shown: str, deadline: float) -> bytes:
        """Stream the body; ``read1`` returns what has arrived, so the deadline holds against slow senders."""
        body = bytearray()
        try:
            while chunk := resp.raw.read1(64 * 1024, decode_content=True):
                body += chunk
                if len(body) > self._max_bytes:
                    raise ImageFetchError(
                        "too_large", shown, f"the download exceeded max_bytes={self._max_bytes}"
                    )
                if time.monotonic() > deadline:
                    raise ImageFetchError(
                        "timeout", shown, f"gave up after total_timeout={self._total_timeout}s"
                    )
        except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
            raise _transport_error(exc, resp.url, shown) from exc
        return bytes(body)

    # ---- authentication ---------------------------------------------------------------------------------

    def _authorization(self, shown: str) -> str:
        """The Authorization header value for Label Studio (refreshing a personal access token if needed)."""
        assert self._api_key is not None
        if self._token_kind == "legacy":
            return f"Token {self._api_key}"
        if self._token_kind == "access":
            return f"Bearer {self._api_key}"
        with self._token_lock:
            if self._access_token is None or time.time() >= self._access_expires - _TOKEN_REFRESH_MARGIN_S:
                self._access_token, self._access_expires = self._refresh_access_token(shown)
            return f"Bearer {self._access_token}"

    def _refresh_access_token(self, shown: str) -> tuple[str, float]:
        """Exchange the personal access token for an access token; returns it and its expiry (epoch s)."""
        assert self._api_key is not None
        assert self._ls_url is not None
        expires = (_jwt_claims(self._api_key) or {}).get("exp")
        if isinstance(expires, int | float) and expires < time.time():
            raise ImageFetchError(
                "auth",
                shown,
                "the personal access token (LABEL_STUDIO_API_KEY) has expired; create a new one",
            )
        refresh_url = f"{self._ls_url}/api/token/refresh/"
        try:
            resp = self._session.post(
                refresh_url,
                json={"refresh": self._api_key},
                timeout=self._timeout,
                allow_redirects=False,
                verify=self._verify,
            )
        except requests.RequestException as exc:
            raise _transport_error(exc, refresh_url, shown) from exc
        with resp:
            if resp.status_code != 200:
                raise ImageFetchError(
                    "auth",
                    shown,
                    f"Label Studio refused to exchange the personal access token at {refresh_url} "
                    f"(HTTP {resp.status_code}); check LABEL_STUDIO_API_KEY and LABEL_STUDIO_URL",
                )
            try:
                access = resp.json().get("access")
            except (ValueError, AttributeError):
                access = None
        if not isinstance(access, str) or not access:
            raise ImageFetchError("auth", shown, f"{refresh_url} answered without an access token")
        access_exp = (_jwt_claims(access) or {}).get("exp")
        if not isinstance(access_exp, int | float):
            access_exp = time.time() + _ACCESS_TOKEN_DEFAULT_TTL_S
        logger.debug("exchanged the personal access token; access token valid until %s", access_exp)
        return access, float(access_exp)

    # ---- decoding and caches ----------------------------------------------------------------------------

    def _from_bytes(self, data: bytes, url: str, shown: str) -> FetchedImage:
        digest = hashlib.sha256(data).hexdigest()
        with self._lock:
            array = self._decoded.get(digest)
            if array is not None:
                self._decoded.move_to_end(digest)
        if array is None:
            array = _decode_image(data, self._max_pixels, shown)
            self._remember_decoded(digest, array)
            self._store(digest, data)
        return FetchedImage(
            array=array, sha256=digest, width=array.shape[1], height=array.shape[0], source=url
        )

    def _from_url_index(self, key: str, url: str, shown: str) -> FetchedImage | None:
        """The image last downloaded for ``key`` from the decoded or disk cache, if still fresh."""
        with self._lock:
            entry = self._url_index.get(key)
            if entry is None:
                return None
            digest, stored_at = entry
            if time.monotonic() - stored_at > self._url_cache_ttl:
                del self._url_index[key]
                return None
            self._url_index.move_to_end(key)
            cached = self._decoded.get(digest)
        if cached is not None:
            logger.debug("decoded-cache hit for %s", shown)
            with self._lock:
                if digest in self._decoded:
                    self._decoded.move_to_end(digest)
            return FetchedImage(cached, digest, cached.shape[1], cached.shape[0], url)
        path = self._cache_path(digest)
        try:
            data = path.read_bytes()
            os.utime(path)
        except OSError:
            return None
        if hashlib.sha256(data).hexdigest() != digest:
            logger.warning("cached file %s does not match its hash; downloading again", path)
            path.unlink(missing_ok=True)
            return None
        logger.debug("disk-cache hit for %s", shown)
        return self._from_bytes(data, url, shown)

    def _remember_decoded(self, digest: str, array: npt.NDArray[np.uint8]) -> None:
        if array.nbytes > self._decoded_cache_bytes:
            return
        with self._lock:
            if digest in self._decoded:
                return
            self._decoded[digest] = array
            self._decoded_total += array.nbytes
            while self._decoded_total > self._decoded_cache_bytes:
                _, evicted = self._decoded.popitem(last=False)
                self._decoded_total -= evicted.nbytes

    def _cache_path(self, digest: str) -> Path:
        return self._cache_dir / digest[:2] / digest

    def _store(self, digest: str, data: bytes) -> None:
        """Write ``data`` to the disk cache atomically, then evict old files beyond ``max_cache_bytes``."""
        path = self._cache_path(digest)
        try:
            if path.exists():
                os.utime(path)
                return
            path.parent.mkdir(exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=_TMP_PREFIX, dir=path.parent)
            try:
                with os.fdopen(fd, "wb") as handle:
                    handle.write(data)
                os.replace(tmp, path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        except OSError as exc:
            logger.warning("cannot write the image cache file %s: %s", path, exc)
            return
        with self._lock:
            if self._disk_total is None:
                self._disk_total = sum(size for _, size, _ in self._scan_cache())
            else:
                self._disk_total += len(data)
            if self._disk_total > self._max_cache_bytes:
                self._disk_total = self._evict()

    def _scan_cache(self) -> list[tuple[float, int, Path]]:
        """(mtime, size, path) of every cached file; also removes temp files left by crashed writers."""
        entries: list[tuple[float, int, Path]] = []
        for sub in self._cache_dir.iterdir():
            if len(sub.name) != 2 or not sub.is_dir():
                continue
            for path in sub.iterdir():
                try:
                    stat = path.stat()
                except FileNotFoundError:
                    continue
                if _SHA256_RE.fullmatch(path.name):
                    entries.append((stat.st_mtime, stat.st_size, path))
                elif path.name.startswith(_TMP_PREFIX) and time.time() - stat.st_mtime > 3600:
                    path.unlink(missing_ok=True)
        return entries

    def _evict(self) -> int:
        """Delete the oldest files until at most 90% of ``max_cache_bytes`` is used; returns bytes left."""
        entries = sorted(self._scan_cache())
        total = sum(size for _, size, _ in entries)
        target = int(self._max_cache_bytes * 0.9)
        removed = 0
        for _, size, path in entries:
            if total <= target:
                break
            path.unlink(missing_ok=True)
            total -= size
            removed += 1
        logger.info("image cache: evicted %d files, %d bytes remain in %s", removed, total, self._cache_dir)
        return total


class _StaleAccessTokenError(Exception):
    """Label Studio rejected a cached access token: refresh it once and retry."""


def _decode_image(data: bytes, max_pixels: int, shown: str) -> npt.NDArray[np.uint8]:
    """Decode encoded image bytes to a read-only HxWx3 uint8 RGB array, upright per EXIF.

    Raises:
        ImageFetchError: ``too_large`` when width*height > ``max_pixels`` (checked from the header, before
            decoding), ``not_image`` for HTML, ``corrupt`` for anything else that does not decode.
    """
    Image.init()
    formats = tuple(name for name in IMAGE_FORMATS if name in Image.OPEN)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=formats)
    except Image.DecompressionBombError as exc:
        raise ImageFetchError("too_large", shown, f"{exc} (max_pixels={max_pixels})") from exc
    except UnidentifiedImageError as exc:
        if data.lstrip()[:1] == b"<":
            raise ImageFetchError(
                "not_image", shown, "the bytes are an HTML/XML/SVG document, not a raster image"
            ) from exc
        raise ImageFetchError(
            "corrupt", shown, f"not a readable image (supported formats: {', '.join(formats)})"
        ) from exc
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise ImageFetchError("corrupt", shown, f"not a readable image ({exc})") from exc
    with image:
        width, height = image.size
        if width * height > max_pixels:
            raise ImageFetchError(
                "too_large",
                shown,
                f"the image is {width}x{height} = {width * height / 1e6:.1f} MP, above max_pixels="
                f"{max_pixels / 1e6:.1f} MP; downscale it or raise max_pixels",
            )
        if width <= 0 or height <= 0:
            raise ImageFetchError("corrupt", shown, f"the image has an empty size {width}x{height}")
        try:
            image.load()
            array = _to_rgb(_upright(image))
        except (OSError, ValueError, SyntaxError, EOFError, TypeError) as exc:
            raise ImageFetchError("corrupt", shown, f"the image data is damaged ({exc})") from exc
    array.flags.writeable = False
    return array


def _upright(image: Image.Image) -> Image.Image:
    """Apply the EXIF orientation tag; a malformed EXIF block is ignored rather than failing the image."""
    try:
        orientation = image.getexif().get(0x0112, 1)
    except Exception as exc:  # EXIF parsing raises many types on malformed blocks
        logger.debug("ignoring unreadable EXIF: %s", exc)
        return image
    if orientation in range(2, 9):
        return ImageOps.exif_transpose(image)
    return image


def _to_rgb(image: Image.Image) -> npt.NDArray[np.uint8]:
    """HxWx3 uint8 RGB from any PIL mode. Transparency is composited onto white; 16-bit gray keeps its high
    byte (as browsers show it); 32-bit int and float gray are stretched min..max to 0..255."""
    mode = image.mode
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in image.info):
        rgba = np.asarray(image.convert("RGBA"), dtype=np.float32)
        alpha = rgba[..., 3:4] / 255.0
        rgb = rgba[..., :3] * alpha + 255.0 * (1.0 - alpha)
        return np.ascontiguousarray(np.clip(np.rint(rgb), 0, 255).astype(np.uint8))
    if mode.startswith("I;16"):
        gray = (np.asarray(image).astype(np.uint16) >> 8).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(gray[..., None], 3, axis=2))
    if mode in ("I", "F"):
        values = np.asarray(image, dtype=np.float64)
        low, high = float(values.min()), float(values.max())
        if mode == "I" and low >= 0 and high <= 65535:
            gray = (values.astype(np.uint32) >> 8).astype(np.uint8)
        else:
            gray = np.rint((values - low) / max(high - low, 1e-12) * 255.0).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(gray[..., None], 3, axis=2))
    rgb_image = image if mode == "RGB" else image.convert("RGB")
    return np.ascontiguousarray(np.asarray(rgb_image, dtype=np.uint8))


# ---- URLs, tokens, addresses --------------------------------------------------------------------------


def _is_ls_relative(url: str) -> bool:
    return url.startswith(("/data/upload/", "/data/local-files", "/storage-data/uploaded"))


def _origin(url: str) -> tuple[str, str, int]:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    return scheme, (parts.hostname or "").lower(), parts.port or (443 if scheme == "https" else 80)


def _is_within(path: Path, root: Path) -> bool:
    """True when ``path`` (symlinks resolved) lies under ``root`` (already resolved)."""
    return Path(os.path.realpath(path)).is_relative_to(root)


def _display_url(url: str) -> str:
    """``url`` fit for messages and logs: data: payloads shortened, user:password removed, length capped."""
    if url.startswith("data:"):
        return f"{url.partition(',')[0]},<{len(url)} chars>"
    parts = urlsplit(url)
    if parts.password or parts.username:
        url = parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()
    return url if len(url) <= 300 else url[:300] + "..."


def _display_hop(url: str) -> str:
    """A URL reached through a redirect, without its query (presigned URLs carry signatures there)."""
    parts = urlsplit(url)
    netloc = parts.netloc.rpartition("@")[2]
    return f"{parts.scheme}://{netloc}{parts.path}" + ("?..." if parts.query else "")


def _jwt_claims(token: str) -> dict[str, object] | None:
    """The payload of a JWT, decoded without verifying it; None if ``token`` is not a JWT."""
    pieces = token.split(".")
    if len(pieces) != 3:
        return None
    try:
        claims = json.loads(base64.urlsafe_b64decode(pieces[1] + "=" * (-len(pieces[1]) % 4)))
    except (ValueError, binascii.Error):
        return None
    return claims if isinstance(claims, dict) else None


def _token_kind(api_key: str | None) -> Literal["none", "legacy", "refresh", "access"]:
    if api_key is None:
        return "none"
    claims = _jwt_claims(api_key)
    if claims is None:
        return "legacy"
    return "refresh" if claims.get("token_type", "refresh") == "refresh" else "access"


def _resolve_addresses(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to (raises OSError when it does not resolve)."""
    return [str(info[4][0]) for info in socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)]


def _is_forbidden_ip(address: str) -> bool:
    """True for loopback, private, link-local, reserved, multicast, unspecified and shared addresses."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return True
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return (
        not ip.is_global
        or ip.is_private
        or ip.is_loopback
        or ip.is_link_local
        or ip.is_reserved
        or ip.is_multicast
        or ip.is_unspecified
    )


def _forbidden_detail(host: str, address: str) -> str:
    return (
        f"host {host!r} resolves to {address}, a private/loopback/link-local/reserved address, refused "
        "to prevent server-side request forgery; if the host is trusted, set allow_private_networks (or "
        "make it the Label Studio URL)"
    )


def _peer_address(resp: requests.Response) -> str | None:
    """The IP address the response came from, or None when it cannot be told.

    The connection's socket when still attached (keep-alive), else the socket the stdlib response reads
    from (http.client detaches it from the connection when the server closes after the response).
    """
    candidates = (
        getattr(getattr(resp.raw, "connection", None), "sock", None),
        getattr(getattr(getattr(getattr(resp.raw, "_fp", None), "fp", None), "raw", None), "_sock", None),
    )
    for sock in candidates:
        if isinstance(sock, socket.socket):
            try:
                return str(sock.getpeername()[0])
            except OSError:
                continue
    return None


def _transport_error(exc: Exception, url: str, shown: str) -> ImageFetchError:
    """Map a requests/urllib3/socket exception (connection, timeout, decoding) to an ImageFetchError."""
    where = _display_hop(url)
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
