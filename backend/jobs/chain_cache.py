"""Each query's chain embeddings (N x C, the SAM prompts the language model gave), kept so that a click
re-decodes the chain without rerunning the language model.

Keyed by (model version, image content hash, query): in this worker's memory (LRU, ``MAX_ENTRIES``) and in
Redis next to the prediction memory (``cores:chain:<sha256>``, float32 bytes + chain text as JSON, expiring
with ``PREDICTION_MEMORY_TTL``), so a click that lands on another worker finds them too. A worker that finds
neither recomputes them (one language-model pass). Interactive queries are written to Redis; every query is
kept in memory. No torch here: embeddings travel as numpy arrays.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import redis

logger = logging.getLogger(__name__)

KEY_PREFIX = "cores:chain:"
MAX_ENTRIES = 512


@dataclass(frozen=True)
class CachedChain:
    """A query's chain embeddings (NxC float32) and chain text."""

    embeddings: np.ndarray
    text: str


def chain_key(version: str, image_key: str, query: str) -> str:
    """The Redis key of one (model version, image, query)'s chain."""
    digest = hashlib.sha256(f"{version}\n{image_key}\n{query}".encode()).hexdigest()
    return f"{KEY_PREFIX}{digest}"


class ChainCache:
    """Chain embeddings in memory and in Redis (see the module docstring). Thread-safe."""

    def __init__(self, max_entries: int = MAX_ENTRIES) -> None:
        self.max_entries = max_entries
        self._memory: OrderedDict[str, CachedChain] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, connection: redis.Redis | None, key: str) -> CachedChain | None:
        """The chain in memory, else in Redis (then kept in memory), else None. Redis failures are logged."""
        with self._lock:
            found = self._memory.get(key)
            if found is not None:
                self._memory.move_to_end(key)
                return found
        if connection is None:
            return None
        try:
            raw = connection.get(key)
        except (redis.exceptions.RedisError, OSError) as exc:
            logger.warning("cannot read chain embeddings from Redis (recomputing them): %s", exc)
            return None
        if raw is None:
            return None
        try:
            found = _decode(raw)
        except (ValueError, KeyError, TypeError, binascii.Error) as exc:
            logger.warning("dropping unreadable chain embeddings %s: %s", key, exc)
            return None
        self._keep(key, found)
        return found

    def put(self, connection: redis.Redis | None, key: str, chain: CachedChain, ttl_s: int) -> None:
        """Keep a chain in memory and, with a connection and ``ttl_s`` > 0, in Redis (best effort)."""
        self._keep(key, chain)
        if connection is None or ttl_s <= 0:
            return
        try:
            connection.set(key, _encode(chain), ex=ttl_s)
        except (redis.exceptions.RedisError, OSError) as exc:
            logger.warning("cannot keep chain embeddings in Redis (a click elsewhere recomputes): %s", exc)

    def clear(self) -> None:
        """Forget the chains kept in memory."""
        with self._lock:
            self._memory.clear()

    def _keep(self, key: str, chain: CachedChain) -> None:
        with self._lock:
            self._memory[key] = chain
            self._memory.move_to_end(key)
            while len(self._memory) > self.max_entries:
                self._memory.popitem(last=False)


def _encode(chain: CachedChain) -> str:
    data = np.ascontiguousarray(chain.embeddings, dtype=np.float32)
    return json.dumps(
        {"shape": list(data.shape), "text": chain.text, "data": base64.b64encode(data.tobytes()).decode()}
    )


def _decode(raw: bytes | str) -> CachedChain:
    loaded = json.loads(raw)
    shape = tuple(int(v) for v in loaded["shape"])
    data = np.frombuffer(base64.b64decode(loaded["data"], validate=True), dtype=np.float32)
    if len(shape) != 2 or data.size != shape[0] * shape[1]:
        raise ValueError(f"{data.size} values for shape {shape}")
    return CachedChain(data.reshape(shape).copy(), str(loaded["text"]))
