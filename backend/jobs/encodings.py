"""The worker's persistent image-encoding store (``cores.inference.encoding_store``) from the settings."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from backend.operations.settings import Settings

if TYPE_CHECKING:
    from cores.inference.encoding_store import EncodingStore
    from cores.inference.pipeline import CoresPipeline


def encoding_store_dir(settings: Settings) -> Path:
    """The persistent image-encoding store (``MODEL_DIR/cache/encodings``)."""
    return settings.model_dir / "cache" / "encodings"


def store_for(settings: Settings) -> EncodingStore | None:
    """The store under ``MODEL_DIR/cache/encodings`` bounded by ``ENCODING_STORE_BYTES``; None when 0."""
    if settings.encoding_store_bytes <= 0:
        return None
    from cores.inference.encoding_store import EncodingStore

    return EncodingStore(encoding_store_dir(settings), settings.encoding_store_bytes)


def use_store(pipeline: CoresPipeline, settings: Settings) -> None:
    """Point a loaded pipeline at the settings' store (kept when it is already that store; the encoder
    fingerprint of the same model is kept either way)."""
    from cores.inference.encoding_store import ModelEncodings

    store, current = store_for(settings), pipeline.encodings
    if store is None:
        pipeline.encodings = None
    elif current is None or (current.store.root, current.store.max_bytes) != (store.root, store.max_bytes):
        known = current.fingerprint if current is not None else None
        pipeline.encodings = ModelEncodings(store, pipeline.model, known)
