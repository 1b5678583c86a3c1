"""The image fetcher's caches: encoded bytes on disk by content hash, decoded arrays and URLs in memory.

- ``DiskImageCache``: ``cache_dir/<sha256[:2]>/<sha256>``, written atomically, bounded by ``max_bytes``
  (beyond it the oldest files by mtime are evicted down to 90 %); a read re-checks the hash.
- ``DecodedImageCache``: least recently used decoded arrays, bounded by their total bytes.
- ``UrlIndex``: least recently used URL -> sha256 entries, bounded in count and trusted for ``ttl`` seconds.

All three are safe to share between threads.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import tempfile
import threading
import time
from collections import OrderedDict
from pathlib import Path

import numpy as np
import numpy.typing as npt

logger = logging.getLogger(__name__)

_TMP_PREFIX = ".tmp-"
_SHA256_RE = re.compile(r"[0-9a-f]{64}")


class DiskImageCache:
    """Encoded image bytes on disk, content-addressed by sha256 hex digest."""

    def __init__(self, cache_dir: Path, max_bytes: int) -> None:
        """Use ``cache_dir`` (created if missing), holding at most about ``max_bytes`` bytes."""
        self._cache_dir = Path(cache_dir)
        self._cache_dir.mkdir(parents=True, exist_ok=True)
        self._max_bytes = max_bytes
        self._lock = threading.Lock()
        self._total: int | None = None

    def cached_path(self, sha256: str) -> Path | None:
        """Path of the cached bytes for ``sha256``; None if not a digest or not (or no longer) cached."""
        if not _SHA256_RE.fullmatch(sha256):
            return None
        path = self._path(sha256)
        return path if path.is_file() else None

    def read(self, digest: str) -> bytes | None:
        """The cached bytes for ``digest`` (marking them recently used); None if missing or damaged."""
        path = self._path(digest)
        try:
            data = path.read_bytes()
            os.utime(path)
        except OSError:
            return None
        if hashlib.sha256(data).hexdigest() != digest:
            logger.warning("cached file %s does not match its hash; downloading again", path)
            path.unlink(missing_ok=True)
            return None
        return data

    def store(self, digest: str, data: bytes) -> None:
        """Write ``data`` to the disk cache atomically, then evict old files beyond ``max_bytes``."""
        path = self._path(digest)
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
            if self._total is None:
                self._total = sum(size for _, size, _ in self._scan())
            else:
                self._total += len(data)
            if self._total > self._max_bytes:
                self._total = self._evict()

    def _path(self, digest: str) -> Path:
        return self._cache_dir / digest[:2] / digest

    def _scan(self) -> list[tuple[float, int, Path]]:
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
        """Delete the oldest files until at most 90% of ``max_bytes`` is used; returns bytes left."""
        entries = sorted(self._scan())
        total = sum(size for _, size, _ in entries)
        target = int(self._max_bytes * 0.9)
        removed = 0
        for _, size, path in entries:
            if total <= target:
                break
            path.unlink(missing_ok=True)
            total -= size
            removed += 1
        logger.info("image cache: evicted %d files, %d bytes remain in %s", removed, total, self._cache_dir)
        return total


class DecodedImageCache:
    """Decoded HxWx3 uint8 arrays by sha256 of their encoded bytes, least recently used evicted first."""

    def __init__(self, max_bytes: int) -> None:
        """Hold arrays totalling at most ``max_bytes`` bytes (an array larger than that is never held)."""
        self._max_bytes = max_bytes
        self._lock = threading.Lock()
        self._arrays: OrderedDict[str, npt.NDArray[np.uint8]] = OrderedDict()
        self._total = 0

    def get(self, digest: str) -> npt.NDArray[np.uint8] | None:
        """The array for ``digest`` (marking it recently used), or None."""
        with self._lock:
            array = self._arrays.get(digest)
            if array is not None:
                self._arrays.move_to_end(digest)
            return array

    def put(self, digest: str, array: npt.NDArray[np.uint8]) -> None:
        """Remember ``array`` (kept if already held), evicting the least recently used beyond the bound."""
        if array.nbytes > self._max_bytes:
            return
        with self._lock:
            if digest in self._arrays:
                return
            self._arrays[digest] = array
            self._total += array.nbytes
            while self._total > self._max_bytes:
                _, evicted = self._arrays.popitem(last=False)
                self._total -= evicted.nbytes


class UrlIndex:
    """URL -> sha256 of the bytes last downloaded from it; ``size`` entries at most, fresh for ``ttl`` s."""

    def __init__(self, size: int, ttl: float) -> None:
        self._size = size
        self._ttl = ttl
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, tuple[str, float]] = OrderedDict()

    def get(self, key: str) -> str | None:
        """The digest stored for ``key`` while fresh (marking it recently used); None otherwise."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            digest, stored_at = entry
            if time.monotonic() - stored_at > self._ttl:
                del self._entries[key]
                return None
            self._entries.move_to_end(key)
            return digest

    def put(self, key: str, digest: str) -> None:
        """Store ``key`` -> ``digest`` as of now, dropping the least recently used beyond ``size``."""
        with self._lock:
            self._entries[key] = (digest, time.monotonic())
            self._entries.move_to_end(key)
            while len(self._entries) > self._size:
                self._entries.popitem(last=False)
