"""Where the report's thumbnails get their task images: the backend's safe ``ImageFetcher`` with the
settings' rules (Label Studio credentials only for the Label Studio host, no private addresses unless
``ALLOW_PRIVATE_NETWORKS``), caching under ``MODEL_DIR/cache/images``."""

from __future__ import annotations

import numpy as np

from backend.images.fetcher import ImageFetcher
from backend.label_studio.connection import LabelStudioConnection
from backend.operations.settings import Settings
from backend.report.page import ImageLoader


def image_loader(settings: Settings, ls: LabelStudioConnection | None) -> ImageLoader:
    """An ``ImageLoader`` fetching through Label Studio ``ls`` (None: public URLs and data URIs only)."""
    fetcher = ImageFetcher(
        cache_dir=settings.image_cache_dir,
        label_studio_url=ls.url if ls else None,
        trusted_label_studio_url=settings.label_studio_url,
        api_key=ls.api_key if ls else None,
        allow_private_networks=settings.allow_private_networks,
        allow_local_files_root=settings.local_files_root,
    )

    def load(ref: str, task_id: int | None) -> np.ndarray:
        return np.asarray(fetcher.fetch(ref, task_id=task_id).array)

    return load
