"""Where a task's image value points: inline bytes, a local file, or the HTTP URLs to download.

The accepted forms are listed in ``backend.images.fetcher``; these functions apply those rules (the same as
label-studio-sdk's resolver). ``shown`` is the URL as error messages name it (``url_safety.display_url``).
"""

from __future__ import annotations

import base64
import binascii
import os
from pathlib import Path
from urllib.parse import parse_qs, quote, unquote, urlsplit

from backend.images.errors import ImageFetchError
from backend.images.url_safety import UnsafeUrlError, parse_fetch_url

CLOUD_SCHEMES = ("s3://", "gs://", "azure-blob://", "azure-spi://")


def decode_data_uri(url: str, shown: str, max_bytes: int) -> bytes:
    """The bytes of a ``data:image/...;base64,...`` URI.

    Raises:
        ImageFetchError: ``bad_url`` when not base64, ``not_image`` for a non-image media type,
            ``too_large`` beyond ``max_bytes``, ``corrupt`` for invalid base64.
    """
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
    if len(payload) * 3 // 4 > max_bytes:
        raise ImageFetchError(
            "too_large", shown, f"the data: URI holds more than max_bytes={max_bytes} bytes"
        )
    try:
        return base64.b64decode(payload + "=" * (-len(payload) % 4), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ImageFetchError("corrupt", shown, f"the data: URI is not valid base64 ({exc})") from exc


def local_path(url: str, shown: str, local_root: Path | None) -> Path | None:
    """Local file to read for ``url``, None when it must be fetched over HTTP.

    A ``/data/local-files/?d=`` file is read from disk when it exists under ``local_root`` (else Label Studio
    serves it); an absolute path or ``file://`` URL must lie under ``local_root`` (already resolved).

    Raises:
        ImageFetchError: ``forbidden_path`` for a local path with no ``local_root`` or outside it,
            ``bad_url`` for a path holding a NUL (no file name can).
    """
    is_local = url.startswith(("/data/local-files", "file://")) or (
        url.startswith("/") and not _is_ls_relative(url)
    )
    if is_local and ("\x00" in url or "%00" in url):
        raise ImageFetchError("bad_url", shown, "the path holds a NUL character, which no file name can hold")
    if url.startswith("/data/local-files"):
        if local_root is None:
            return None
        values = parse_qs(urlsplit(url).query, keep_blank_values=True).get("d")
        relative = os.path.normpath(values[-1] if values else "").lstrip("/")
        candidate = local_root / relative
        inside = _is_within(candidate, local_root)
        return candidate if relative not in ("", ".") and inside and candidate.is_file() else None
    if url.startswith("file://"):
        path = Path(unquote(urlsplit(url).path))
    elif url.startswith("/") and not _is_ls_relative(url):
        path = Path(url)
    else:
        return None
    if local_root is None:
        raise ImageFetchError(
            "forbidden_path",
            shown,
            "local file paths are refused; set allow_local_files_root to allow a directory",
        )
    if not _is_within(path, local_root):
        raise ImageFetchError(
            "forbidden_path", shown, f"the path is outside allow_local_files_root ({local_root})"
        )
    return path


def read_local(path: Path, shown: str, max_bytes: int) -> bytes:
    """The bytes of a local image file.

    Raises:
        ImageFetchError: ``not_found`` for a missing, unreadable or non-regular file, ``too_large`` beyond
            ``max_bytes``.
    """
    try:
        size = path.stat().st_size
        if not path.is_file():
            raise ImageFetchError("not_found", shown, "the path is not a regular file")
        if size > max_bytes:
            raise ImageFetchError(
                "too_large", shown, f"the file has {size} bytes, above max_bytes={max_bytes}"
            )
        return path.read_bytes()
    except FileNotFoundError as exc:
        raise ImageFetchError("not_found", shown, "no such file") from exc
    except OSError as exc:
        raise ImageFetchError("not_found", shown, f"cannot read the file ({exc.strerror})") from exc
    except ValueError as exc:  # e.g. a NUL in the path
        raise ImageFetchError("bad_url", shown, f"not a usable file path ({exc})") from exc


def http_candidates(
    url: str, task_id: int | None, shown: str, *, label_studio_url: str | None, has_api_key: bool
) -> list[str]:
    """URLs to try in order (later ones only after a 404).

    Raises:
        ImageFetchError: ``config`` when the URL needs Label Studio (its URL and API key) or a task id that
            was not given, ``bad_url`` for a form that cannot be fetched.
    """
    if _is_ls_relative(url):
        base = _require_label_studio(shown, label_studio_url, has_api_key)
        candidates = [base + url]
        if url.startswith("/data/upload/"):
            filepath = quote(url[len("/data/") :], safe="/")
            candidates.append(f"{base}/storage-data/uploaded/?filepath={filepath}")
        return candidates
    if url.startswith(CLOUD_SCHEMES):
        base = _require_label_studio(shown, label_studio_url, has_api_key)
        if task_id is None:
            raise ImageFetchError(
                "config",
                shown,
                "cloud storage URIs are resolved through Label Studio and need the task id",
            )
        fileuri = base64.urlsafe_b64encode(url.encode()).decode()
        return [f"{base}/tasks/{int(task_id)}/presign/?fileuri={fileuri}"]
    if url.lower().startswith(("http://", "https://")):
        try:
            return [parse_fetch_url(url).url]
        except UnsafeUrlError as exc:
            raise ImageFetchError("bad_url", shown, str(exc)) from None
    raise ImageFetchError(
        "bad_url",
        shown,
        "unsupported image URL; expected http(s)://, /data/upload/..., /data/local-files/?d=..., "
        "s3://, gs://, azure-blob://, data:image/...;base64, or a local path",
    )


def _require_label_studio(shown: str, label_studio_url: str | None, has_api_key: bool) -> str:
    if label_studio_url is None:
        raise ImageFetchError(
            "config",
            shown,
            "this URL is served by Label Studio; set the Label Studio URL (LABEL_STUDIO_URL)",
        )
    if not has_api_key:
        raise ImageFetchError(
            "config", shown, "Label Studio needs an API key for this URL; set LABEL_STUDIO_API_KEY"
        )
    return label_studio_url


def _is_ls_relative(url: str) -> bool:
    return url.startswith(("/data/upload/", "/data/local-files", "/storage-data/uploaded"))


def _is_within(path: Path, root: Path) -> bool:
    """True when ``path`` (symlinks resolved) lies under ``root`` (already resolved)."""
    return Path(os.path.realpath(path)).is_relative_to(root)
