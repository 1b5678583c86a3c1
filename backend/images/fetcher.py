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

This module holds the public API (``ImageFetcher``, ``FetchedImage``, ``ImageFetchError``) and ties the parts
together: ``image_sources`` (which form a URL is and where to get it), ``image_download`` with ``ls_auth``
and ``url_safety`` (HTTP), ``image_decode`` (bytes -> RGB) and ``image_cache`` (the three caches).
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import requests

from backend.images.cache import DecodedImageCache, DiskImageCache, UrlIndex
from backend.images.decode import IMAGE_FORMATS, decode_image
from backend.images.download import MAX_REDIRECTS, ImageDownloader
from backend.images.errors import FetchErrorReason, ImageFetchError
from backend.images.label_studio_auth import LabelStudioAuth
from backend.images.sources import CLOUD_SCHEMES, decode_data_uri, http_candidates, local_path, read_local
from backend.images.url_safety import (
    Resolver,
    UnsafeUrlError,
    display_url,
    parse_fetch_url,
    resolve_addresses,
)

__all__ = [
    "CLOUD_SCHEMES",
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_CACHE_BYTES",
    "DEFAULT_MAX_PIXELS",
    "IMAGE_FORMATS",
    "MAX_REDIRECTS",
    "MB",
    "FetchErrorReason",
    "FetchedImage",
    "ImageFetchError",
    "ImageFetcher",
]

logger = logging.getLogger(__name__)

MB = 1024 * 1024
DEFAULT_MAX_BYTES = 50 * MB
DEFAULT_MAX_PIXELS = 80_000_000
DEFAULT_MAX_CACHE_BYTES = 2048 * MB


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
        trusted_label_studio_url: str | None = None,
        resolver: Resolver = resolve_addresses,
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
            trusted_label_studio_url: the Label Studio URL the operator configured (``LABEL_STUDIO_URL``):
                hosts on its origin are exempt from the private-address checks. A ``label_studio_url``
                learned from Label Studio's unauthenticated ``/setup`` call is not exempt unless it is this.
            resolver: ``(host, port) -> addresses``, called once per download hop
                (``url_safety.resolve_addresses``); the connection goes to the address it returned first.

        Raises:
            ValueError: a setting is out of range or ``label_studio_url`` is not an http(s) URL.
        """
        for name, value in (
            ("label_studio_url", label_studio_url),
            ("trusted_label_studio_url", trusted_label_studio_url),
        ):
            if value is not None:
                try:
                    parse_fetch_url(value)
                except UnsafeUrlError as exc:
                    raise ValueError(f"{name} must be a plain http(s) URL, got {value!r}: {exc}") from None
        if min(max_bytes, max_pixels, total_timeout, max_cache_bytes, url_cache_size) <= 0:
            raise ValueError(
                "max_bytes, max_pixels, total_timeout, max_cache_bytes and url_cache_size must be > 0"
            )
        self._ls_url = label_studio_url.rstrip("/") if label_studio_url else None
        self._max_bytes = max_bytes
        self._max_pixels = max_pixels
        self._local_root: Path | None = None
        if allow_local_files_root is not None:
            root = Path(os.path.realpath(allow_local_files_root))
            if root == Path(root.anchor):
                raise ValueError("allow_local_files_root must not be the filesystem root")
            self._local_root = root
        self._disk = DiskImageCache(cache_dir, max_cache_bytes)
        self._url_index = UrlIndex(url_cache_size, url_cache_ttl)
        self._decoded = DecodedImageCache(decoded_cache_bytes)

        self._session = requests.Session()
        self._session.trust_env = False
        self._auth = LabelStudioAuth(
            self._ls_url, api_key, session=self._session, timeout=timeout, verify_tls=verify_tls
        )
        self._downloader = ImageDownloader(
            self._auth,
            label_studio_url=self._ls_url,
            trusted_url=trusted_label_studio_url.rstrip("/") if trusted_label_studio_url else None,
            resolver=resolver,
            max_bytes=max_bytes,
            timeout=timeout,
            total_timeout=total_timeout,
            allow_private_networks=allow_private_networks,
            verify_tls=verify_tls,
        )

    def close(self) -> None:
        """Close pooled HTTP connections."""
        self._session.close()

    def cached_path(self, sha256: str) -> Path | None:
        """Path of the cached bytes for a digest returned by ``fetch``; None if not (or no longer) cached."""
        return self._disk.cached_path(sha256)

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
        shown = display_url(url)
        if url.startswith("data:"):
            return self._from_bytes(decode_data_uri(url, shown, self._max_bytes), url, shown)
        location = "/data/" + url.lstrip("/") if url.startswith(("upload/", "/upload/")) else url
        local = local_path(location, shown, self._local_root)
        if local is not None:
            return self._from_bytes(read_local(local, shown, self._max_bytes), url, shown)
        candidates = http_candidates(
            location,
            task_id,
            shown,
            label_studio_url=self._ls_url,
            has_api_key=self._auth.api_key is not None,
        )
        cached = self._from_url_index(location, url, shown)
        if cached is not None:
            return cached
        image = self._from_bytes(self._downloader.download_first(candidates, shown), url, shown)
        self._url_index.put(location, image.sha256)
        return image

    def _from_bytes(self, data: bytes, url: str, shown: str) -> FetchedImage:
        digest = hashlib.sha256(data).hexdigest()
        array = self._decoded.get(digest)
        if array is None:
            array = decode_image(data, self._max_pixels, shown)
            self._decoded.put(digest, array)
            self._disk.store(digest, data)
        return FetchedImage(
            array=array, sha256=digest, width=array.shape[1], height=array.shape[0], source=url
        )

    def _from_url_index(self, key: str, url: str, shown: str) -> FetchedImage | None:
        """The image last downloaded for ``key`` from the decoded or disk cache, if still fresh."""
        digest = self._url_index.get(key)
        if digest is None:
            return None
        cached = self._decoded.get(digest)
        if cached is not None:
            logger.debug("decoded-cache hit for %s", shown)
            return FetchedImage(cached, digest, cached.shape[1], cached.shape[0], url)
        data = self._disk.read(digest)
        if data is None:
            return None
        logger.debug("disk-cache hit for %s", shown)
        return self._from_bytes(data, url, shown)
