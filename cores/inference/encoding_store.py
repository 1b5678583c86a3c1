"""A persistent, size-bounded store of image encodings (SAM embedding + projected CLIP tokens) on disk.

Entries are keyed by the image's content hash (``pipeline.image_key``) and a fingerprint of the ENCODER
weights as used (SAM image encoder, CLIP vision tower, projector, the CLIP layer read, the dtype): a
fine-tune that leaves the encoders frozen keeps reading the same entries, a version whose encoder weights
differ never reads another's. Layout: ``<root>/<fingerprint[:32]>/<key[:2]>/<key>.enc``.

An entry file is ``MAGIC``, the SHA-256 of the payload, then the payload (``torch.save`` of the tensors
and sizes). Writes go to a temporary file in the same folder, then ``os.replace``: a reader never sees a
partial entry, and several workers sharing ``root`` (a shared ``MODEL_DIR``) can write the same entry. A
read whose checksum, header or payload is wrong logs a warning, deletes the file and returns None (the
caller recomputes). After each write, the least recently used entries (file mtime, refreshed on every
read) go until the store is under ``max_bytes``.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from cores.modeling.model import CoresModel
    from cores.modeling.sam import SamInput

logger = logging.getLogger(__name__)

MAGIC = b"CORES-ENC1\n"
SUFFIX = ".enc"
_DIGEST = 32


@dataclass(frozen=True)
class StoredEncoding:
    """One image's encodings as stored: SAM embedding 1xCxGxG, CLIP tokens PxH, SAM input/original sizes."""

    sam_embedding: torch.Tensor
    clip_tokens: torch.Tensor
    input_size: tuple[int, int]
    original_size: tuple[int, int]

    def tensors(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(SAM embedding, CLIP tokens) on ``device``."""
        return self.sam_embedding.to(device), self.clip_tokens.to(device)


def _hash_module(digest: hashlib._Hash, name: str, module: nn.Module) -> None:
    for key, tensor in sorted(module.state_dict().items()):
        flat = tensor.detach().reshape(-1).contiguous().cpu()
        digest.update(f"{name}.{key}:{tuple(tensor.shape)}:{tensor.dtype}\n".encode())
        digest.update(flat.view(torch.uint8).numpy().tobytes())


def encoder_fingerprint(
    sam_encoder: nn.Module, vision_tower: nn.Module, projector: nn.Module, extra: str
) -> str:
    """SHA-256 over the encoder weights (names, shapes, dtypes, bytes) and ``extra`` (e.g. the CLIP layer
    read and the serving dtype). Reads every weight once: seconds for SAM ViT-H + CLIP ViT-L."""
    digest = hashlib.sha256(extra.encode())
    for name, module in (("sam", sam_encoder), ("clip", vision_tower), ("projector", projector)):
        _hash_module(digest, name, module)
    return digest.hexdigest()


class EncodingStore:
    """Image encodings on disk under ``root``, at most ``max_bytes`` (see the module docstring)."""

    def __init__(self, root: str | Path, max_bytes: int) -> None:
        if max_bytes <= 0:
            raise ValueError(f"expected a positive store size, got max_bytes={max_bytes}")
        self.root = Path(root)
        self.max_bytes = max_bytes

    def path(self, fingerprint: str, key: str) -> Path:
        """The file of one entry."""
        if not key or not all(c in "0123456789abcdef" for c in key + fingerprint):
            raise ValueError("expected hex keys and fingerprints")
        return self.root / fingerprint[:32] / key[:2] / f"{key}{SUFFIX}"

    def contains(self, fingerprint: str, key: str) -> bool:
        """True when an entry file exists (not verified: ``get`` verifies)."""
        return self.path(fingerprint, key).is_file()

    def get(self, fingerprint: str, key: str) -> StoredEncoding | None:
        """The entry, verified, or None (missing; or corrupt, which is logged and deleted)."""
        path = self.path(fingerprint, key)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            logger.warning("encoding store: cannot read %s (%s); recomputing", path, exc)
            return None
        try:
            entry = _decode(data)
        except (ValueError, RuntimeError, EOFError, KeyError, TypeError, OSError) as exc:
            logger.warning("encoding store: dropping the corrupt entry %s (%s); recomputing", path, exc)
            path.unlink(missing_ok=True)
            return None
        with contextlib.suppress(OSError):
            os.utime(path)  # least recently used goes first
        return entry

    def put(self, fingerprint: str, key: str, entry: StoredEncoding) -> None:
        """Write an entry atomically (temporary file, then rename), then evict down to ``max_bytes``.

        Raises:
            OSError: the store folder cannot be written (callers log it: the store is a cache).
        """
        path = self.path(fingerprint, key)
        path.parent.mkdir(parents=True, exist_ok=True)
        data = _encode(entry)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=SUFFIX)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        self.evict()

    def entries(self) -> Iterator[tuple[Path, os.stat_result]]:
        """Every entry file with its stat (temporary files excluded)."""
        if not self.root.is_dir():
            return
        for path in self.root.glob(f"*/*/*{SUFFIX}"):
            if path.name.startswith(".tmp-"):
                continue
            try:
                yield path, path.stat()
            except FileNotFoundError:  # another worker evicted it
                continue

    def size(self) -> int:
        """Bytes held by entry files."""
        return sum(stat.st_size for _, stat in self.entries())

    def evict(self) -> int:
        """Delete the least recently used entries until at most ``max_bytes`` remain; returns how many."""
        found = sorted(self.entries(), key=lambda item: item[1].st_mtime)
        total = sum(stat.st_size for _, stat in found)
        removed = 0
        for path, stat in found:
            if total <= self.max_bytes:
                break
            path.unlink(missing_ok=True)
            total -= stat.st_size
            removed += 1
        if removed:
            logger.info("encoding store: evicted %d entries to stay under %d bytes", removed, self.max_bytes)
        return removed


class ModelEncodings:
    """An ``EncodingStore`` seen by one loaded model: entries under that model's encoder fingerprint
    (computed at first use). What ``CoresPipeline`` consults in ``_encode``."""

    def __init__(self, store: EncodingStore, model: CoresModel, fingerprint: str | None = None) -> None:
        self.store = store
        self.model = model
        self._fingerprint = fingerprint

    @property
    def fingerprint(self) -> str:
        """``encoder_fingerprint`` of the model's SAM image encoder, CLIP tower and projector, as used."""
        if self._fingerprint is None:
            m = self.model
            size = m.sam.image_encoder.img_size
            extra = f"select_layer={m.vision_select_layer};dtype={m.dtype};img_size={size}"
            self._fingerprint = encoder_fingerprint(
                m.sam.image_encoder, m.vision_tower, m.mm_projector, extra
            )
        return self._fingerprint

    def contains(self, key: str) -> bool:
        """True when the store holds an entry for image ``key`` under this model's encoders."""
        return self.store.contains(self.fingerprint, key)

    def load(self, key: str) -> StoredEncoding | None:
        """The verified entry of image ``key``, or None."""
        return self.store.get(self.fingerprint, key)

    def save(self, key: str, sam_embedding: torch.Tensor, clip_tokens: torch.Tensor, sizes: SamInput) -> None:
        """Store one image's encodings; a write failure is logged (the store is a cache)."""
        entry = StoredEncoding(sam_embedding, clip_tokens, sizes.input_size, sizes.original_size)
        try:
            self.store.put(self.fingerprint, key, entry)
        except OSError as exc:
            logger.warning(
                "cannot write image %s to the encoding store %s: %s", key[:12], self.store.root, exc
            )


def _encode(entry: StoredEncoding) -> bytes:
    buffer = io.BytesIO()
    torch.save(
        {
            "sam_embedding": entry.sam_embedding.detach().cpu().contiguous(),
            "clip_tokens": entry.clip_tokens.detach().cpu().contiguous(),
            "input_size": list(entry.input_size),
            "original_size": list(entry.original_size),
        },
        buffer,
    )
    payload = buffer.getvalue()
    return MAGIC + hashlib.sha256(payload).digest() + payload


def _decode(data: bytes) -> StoredEncoding:
    if not data.startswith(MAGIC) or len(data) < len(MAGIC) + _DIGEST:
        raise ValueError("not an encoding entry (bad header or truncated)")
    digest = data[len(MAGIC) : len(MAGIC) + _DIGEST]
    payload = data[len(MAGIC) + _DIGEST :]
    if hashlib.sha256(payload).digest() != digest:
        raise ValueError("checksum mismatch (partial or corrupted file)")
    loaded = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
    h, w = (int(v) for v in loaded["input_size"])
    oh, ow = (int(v) for v in loaded["original_size"])
    return StoredEncoding(loaded["sam_embedding"], loaded["clip_tokens"], (h, w), (oh, ow))
