"""Tests for backend.images.fetcher: real local HTTP servers stand in for Label Studio and for a storage host.

The "Label Studio" host checks the Authorization header like Label Studio does (legacy ``Token`` or
``Bearer`` access token from ``/api/token/refresh/``) and redirects presign requests to the storage host,
which listens on another port (another origin) and records every header it receives.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import pickle
import socket
import struct
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pytest
import requests
from PIL import Image

from backend.images import download as image_download
from backend.images import fetcher as images
from backend.images.fetcher import ImageFetcher, ImageFetchError
from tests.backend.fake_hosts import (
    BLUE,
    GREEN,
    LEGACY_TOKEN,
    PAT,
    RED,
    FakeHost,
    Handler,
    Route,
    Seen,
    encode,
    make_jwt,
    solid_png,
)


@dataclass
class LabelStudioState:
    access_ttl: float = 3600.0
    issued: list[str] = field(default_factory=list)
    revoked: set[str] = field(default_factory=set)


def make_label_studio(storage: FakeHost) -> tuple[FakeHost, LabelStudioState]:
    ls = FakeHost()
    state = LabelStudioState()

    def authorized(seen: Seen) -> bool:
        header = seen.headers.get("authorization", "")
        if header == f"Token {LEGACY_TOKEN}":
            return True
        token = header.removeprefix("Bearer ")
        return header.startswith("Bearer ") and token in state.issued and token not in state.revoked

    def protected(route: Route) -> Route:
        def guarded(h: Handler, seen: Seen) -> None:
            if authorized(seen):
                route(h, seen)
            else:
                h.reply(
                    401, b'{"detail": "Authentication credentials were not provided."}', "application/json"
                )

        return guarded

    def refresh(h: Handler, seen: Seen) -> None:
        if json.loads(seen.body or b"{}").get("refresh") != PAT:
            h.reply(401, b'{"detail": "Token is invalid"}', "application/json")
            return
        access = make_jwt(
            {"token_type": "access", "exp": time.time() + state.access_ttl, "n": len(state.issued)}
        )
        state.issued.append(access)
        h.reply(200, json.dumps({"access": access}).encode(), "application/json")

    def presign(h: Handler, seen: Seen) -> None:
        fileuri = parse_qs(urlsplit(seen.path).query)["fileuri"][0]
        uri = base64.urlsafe_b64decode(fileuri).decode()
        bucket_key = uri.split("://", 1)[1]
        h.redirect(f"{storage.url}/{bucket_key}?X-Amz-Signature=secret", status=303)

    def image(data: bytes) -> Route:
        return protected(lambda h, _seen: h.reply(200, data))

    ls.routes.update(
        {
            "/api/token/refresh/": refresh,
            "/data/upload/1/red.png": image(RED),
            "/data/upload/1/green.png": image(GREEN),
            "/data/upload/1/red-again.png": image(RED),
            "/storage-data/uploaded/": protected(
                lambda h, seen: (
                    h.reply(200, BLUE)
                    if parse_qs(urlsplit(seen.path).query)["filepath"] == ["upload/2/blue.png"]
                    else h.reply(404, b"", "text/plain")
                )
            ),
            "/data/local-files/": image(GREEN),
            "/tasks/7/presign/": protected(presign),
            "/data/upload/1/login.png": lambda h, _seen: h.reply(200, b"<html>Log in</html>", "text/html"),
            "/redirect/out": protected(lambda h, _seen: h.redirect(f"{storage.url}/bucket/red.png")),
            "/redirect/loop": lambda h, _seen: h.redirect("/redirect/loop"),
            "/redirect/bounce": protected(lambda h, _seen: h.redirect(f"{storage.url}/bounce")),
        }
    )
    return ls, state


@pytest.fixture(scope="module")
def hosts() -> Iterator[tuple[FakeHost, FakeHost, LabelStudioState]]:
    storage = FakeHost()
    ls, state = make_label_studio(storage)
    storage.files({"/bucket/red.png": RED, "/bucket/green.png": GREEN})
    storage.routes["/bounce"] = lambda h, _seen: h.redirect(f"{ls.url}/data/upload/1/red.png")
    yield ls, storage, state
    ls.stop()
    storage.stop()


@pytest.fixture
def ls(hosts: tuple[FakeHost, FakeHost, LabelStudioState]) -> FakeHost:
    hosts[0].seen.clear()
    return hosts[0]


@pytest.fixture
def storage(hosts: tuple[FakeHost, FakeHost, LabelStudioState]) -> FakeHost:
    hosts[1].seen.clear()
    return hosts[1]


@pytest.fixture
def ls_state(hosts: tuple[FakeHost, FakeHost, LabelStudioState]) -> LabelStudioState:
    state = hosts[2]
    state.access_ttl = 3600.0
    state.issued.clear()
    state.revoked.clear()
    return state


@pytest.fixture
def make_fetcher(tmp_path: Path, ls: FakeHost) -> Iterator[Callable[..., ImageFetcher]]:
    made: list[ImageFetcher] = []

    def make(**overrides: Any) -> ImageFetcher:
        settings: dict[str, Any] = {
            "cache_dir": tmp_path / "cache",
            "label_studio_url": ls.url,
            "trusted_label_studio_url": ls.url,
            "api_key": LEGACY_TOKEN,
            "timeout": (2.0, 2.0),
        }
        settings.update(overrides)
        fetcher = ImageFetcher(**settings)
        made.append(fetcher)
        return fetcher

    yield make
    for fetcher in made:
        fetcher.close()


def fetch_error(fetcher: ImageFetcher, url: str, task_id: int | None = None) -> ImageFetchError:
    with pytest.raises(ImageFetchError) as info:
        fetcher.fetch(url, task_id=task_id)
    return info.value


def assert_solid(array: np.ndarray, height: int, width: int, color: tuple[int, int, int]) -> None:
    assert array.shape == (height, width, 3)
    assert array.dtype == np.uint8
    assert (array == np.array(color, np.uint8)).all()


def data_uri(data: bytes, media: str = "image/png") -> str:
    return f"data:{media};base64,{base64.b64encode(data).decode()}"


# ---- resolution and credentials -------------------------------------------------------------------------


def test_legacy_token_sent_to_label_studio_upload(make_fetcher, ls):
    image = make_fetcher().fetch("/data/upload/1/red.png")
    assert_solid(image.array, 6, 8, (255, 0, 0))
    assert (image.width, image.height, image.source) == (8, 6, "/data/upload/1/red.png")
    assert image.sha256 == hashlib.sha256(RED).hexdigest()
    assert [s.headers.get("authorization") for s in ls.seen] == [f"Token {LEGACY_TOKEN}"]


def test_upload_without_data_prefix_and_storage_proxy_fallback(make_fetcher, ls):
    fetcher = make_fetcher()
    assert_solid(fetcher.fetch("upload/2/blue.png").array, 7, 3, (0, 0, 255))
    assert [urlsplit(s.path).path for s in ls.seen] == ["/data/upload/2/blue.png", "/storage-data/uploaded/"]


def test_local_files_url_fetched_from_label_studio(make_fetcher, ls):
    image = make_fetcher().fetch("/data/local-files/?d=pics/green.png")
    assert_solid(image.array, 4, 5, (0, 255, 0))
    assert ls.seen[0].path == "/data/local-files/?d=pics/green.png"


def test_absolute_label_studio_url_gets_credentials(make_fetcher, ls):
    make_fetcher().fetch(f"{ls.url}/data/upload/1/red.png")
    assert ls.seen[0].headers["authorization"] == f"Token {LEGACY_TOKEN}"


def test_other_host_gets_no_credentials(make_fetcher, storage):
    image = make_fetcher(allow_private_networks=True).fetch(f"{storage.url}/bucket/green.png")
    assert_solid(image.array, 4, 5, (0, 255, 0))
    assert len(storage.seen) == 1
    assert "authorization" not in storage.seen[0].headers


def test_redirect_off_label_studio_drops_credentials(make_fetcher, ls, storage):
    make_fetcher(allow_private_networks=True).fetch(f"{ls.url}/redirect/out")
    assert ls.seen[0].headers["authorization"] == f"Token {LEGACY_TOKEN}"
    assert len(storage.seen) == 1
    assert "authorization" not in storage.seen[0].headers


def test_redirect_back_to_label_studio_after_leaving_gets_no_credentials(make_fetcher, ls, storage):
    error = fetch_error(make_fetcher(allow_private_networks=True), f"{ls.url}/redirect/bounce")
    assert error.reason == "auth"
    assert [s.path for s in ls.seen] == ["/redirect/bounce", "/data/upload/1/red.png"]
    assert "authorization" not in ls.seen[1].headers
    assert "authorization" not in storage.seen[0].headers


def test_requests_itself_strips_authorization_on_cross_origin_redirect(ls, storage):
    # We follow redirects by hand, but check the library behaviour the module docstring relies on too.
    with requests.Session() as session:
        session.trust_env = False
        response = session.get(f"{ls.url}/redirect/out", headers={"Authorization": f"Token {LEGACY_TOKEN}"})
    assert response.status_code == 200
    assert "authorization" not in storage.seen[0].headers


def test_personal_access_token_is_exchanged_once_and_cached(make_fetcher, ls, ls_state):
    fetcher = make_fetcher(api_key=PAT)
    fetcher.fetch("/data/upload/1/red.png")
    fetcher.fetch("/data/upload/1/green.png")
    refreshes = [s for s in ls.seen if s.path == "/api/token/refresh/"]
    assert len(refreshes) == 1
    assert refreshes[0].method == "POST"
    assert json.loads(refreshes[0].body) == {"refresh": PAT}
    gets = [s.headers["authorization"] for s in ls.seen if s.method == "GET"]
    assert gets == [f"Bearer {ls_state.issued[0]}"] * 2


def test_access_token_refreshed_shortly_before_expiry(make_fetcher, ls, ls_state):
    ls_state.access_ttl = 5.0  # inside the refresh margin: every use refreshes
    fetcher = make_fetcher(api_key=PAT)
    fetcher.fetch("/data/upload/1/red.png")
    fetcher.fetch("/data/upload/1/green.png")
    assert len(ls_state.issued) == 2
    assert [s.headers["authorization"] for s in ls.seen if s.method == "GET"] == [
        f"Bearer {token}" for token in ls_state.issued
    ]


def test_rejected_access_token_is_refreshed_and_retried(make_fetcher, ls_state):
    fetcher = make_fetcher(api_key=PAT)
    fetcher.fetch("/data/upload/1/red.png")
    ls_state.revoked.add(ls_state.issued[0])
    assert_solid(fetcher.fetch("/data/upload/1/green.png").array, 4, 5, (0, 255, 0))
    assert len(ls_state.issued) == 2


def test_refused_token_is_an_auth_error_without_the_token(make_fetcher):
    bad_pat = make_jwt({"token_type": "refresh", "exp": int(time.time()) + 600, "jti": "other"})
    error = fetch_error(make_fetcher(api_key=bad_pat), "/data/upload/1/red.png")
    assert error.reason == "auth"
    assert "refresh" in str(error)
    assert bad_pat not in str(error)

    wrong_legacy = "f" * 40
    error = fetch_error(make_fetcher(api_key=wrong_legacy), "/data/upload/1/red.png")
    assert error.reason == "auth"
    assert "/data/upload/1/red.png" in str(error)
    assert wrong_legacy not in str(error)


def test_expired_personal_access_token_is_reported_without_network(make_fetcher, ls):
    expired = make_jwt({"token_type": "refresh", "exp": int(time.time()) - 10})
    error = fetch_error(make_fetcher(api_key=expired), "/data/upload/1/red.png")
    assert error.reason == "auth"
    assert "expired" in error.detail
    assert ls.seen == []


def test_cloud_uri_resolved_through_presign(make_fetcher, ls, storage):
    image = make_fetcher(allow_private_networks=True).fetch("s3://bucket/red.png", task_id=7)
    assert_solid(image.array, 6, 8, (255, 0, 0))
    presign = urlsplit(ls.seen[0].path)
    assert presign.path == "/tasks/7/presign/"
    fileuri = parse_qs(presign.query)["fileuri"][0]
    assert base64.urlsafe_b64decode(fileuri) == b"s3://bucket/red.png"
    assert ls.seen[0].headers["authorization"] == f"Token {LEGACY_TOKEN}"
    assert urlsplit(storage.seen[0].path).path == "/bucket/red.png"
    assert "authorization" not in storage.seen[0].headers


def test_cloud_uri_needs_task_id_and_label_studio(make_fetcher, tmp_path):
    error = fetch_error(make_fetcher(), "gs://bucket/red.png")
    assert (error.reason, "task id" in error.detail) == ("config", True)
    no_ls = ImageFetcher(cache_dir=tmp_path / "c2")
    error = fetch_error(no_ls, "azure-blob://container/red.png", task_id=7)
    assert (error.reason, "LABEL_STUDIO_URL" in error.detail) == ("config", True)
    error = fetch_error(no_ls, "/data/upload/1/red.png")
    assert error.reason == "config"


def test_unsupported_url(make_fetcher):
    assert fetch_error(make_fetcher(), "ftp://example.com/a.png").reason == "bad_url"


# ---- network safety ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_private_network_refused_unless_allowed(make_fetcher, storage, host):
    url = f"{storage.url.replace('127.0.0.1', host)}/bucket/red.png"
    error = fetch_error(make_fetcher(), url)
    assert error.reason == "forbidden_host"
    assert "ALLOW_PRIVATE_NETWORKS" in error.detail
    assert storage.seen == []
    assert_solid(make_fetcher(allow_private_networks=True).fetch(url).array, 6, 8, (255, 0, 0))


def test_redirect_from_label_studio_to_private_host_refused(make_fetcher, ls, storage):
    error = fetch_error(make_fetcher(), "s3://bucket/red.png", task_id=7)
    assert error.reason == "forbidden_host"
    assert len(ls.seen) == 1  # Label Studio itself is exempt: it is the configured host
    assert storage.seen == []


def test_dns_answer_changing_after_the_check_is_caught_at_connect(make_fetcher, storage, monkeypatch):
    monkeypatch.setattr(image_download, "resolve_addresses", lambda host, port: ["93.184.216.34"])
    error = fetch_error(make_fetcher(), f"{storage.url}/bucket/red.png")
    assert error.reason == "forbidden_host"
    assert "127.0.0.1" in error.detail


def test_redirect_loop_stops(make_fetcher, ls):
    error = fetch_error(make_fetcher(), f"{ls.url}/redirect/loop")
    assert error.reason == "redirects"
    assert len(ls.seen) == images.MAX_REDIRECTS + 1


def test_size_cap_from_content_length_and_from_stream(make_fetcher, storage):
    big = os.urandom(5000)
    storage.files({"/big.bin": big}, content_type="application/octet-stream")
    storage.routes["/big-unsized.bin"] = lambda h, _seen: h.reply(200, big, "image/png", length=False)
    fetcher = make_fetcher(max_bytes=4096, allow_private_networks=True)
    for path in ("/big.bin", "/big-unsized.bin"):
        error = fetch_error(fetcher, f"{storage.url}{path}")
        assert error.reason == "too_large", path
        assert "max_bytes=4096" in error.detail


def test_read_timeout(make_fetcher, storage):
    def slow(h: Handler, _seen: Seen) -> None:
        time.sleep(1.0)
        h.reply(200, RED)

    storage.routes["/slow.png"] = slow
    start = time.monotonic()
    error = fetch_error(
        make_fetcher(timeout=(2.0, 0.2), allow_private_networks=True), f"{storage.url}/slow.png"
    )
    assert error.reason == "timeout"
    assert time.monotonic() - start < 0.9


def test_total_timeout_against_a_slow_sender(make_fetcher, storage):
    def drip(h: Handler, _seen: Seen) -> None:
        h.send_response(200)
        h.send_header("Content-Type", "image/png")
        h.send_header("Content-Length", "1000")
        h.end_headers()
        try:
            for _ in range(100):
                h.wfile.write(b"x" * 10)
                h.wfile.flush()
                time.sleep(0.02)
        except (BrokenPipeError, ConnectionResetError):
            pass

    storage.routes["/drip.png"] = drip
    start = time.monotonic()
    fetcher = make_fetcher(timeout=(2.0, 1.0), total_timeout=0.3, allow_private_networks=True)
    error = fetch_error(fetcher, f"{storage.url}/drip.png")
    assert error.reason == "timeout"
    assert time.monotonic() - start < 1.5


def test_unreachable_port(make_fetcher):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    error = fetch_error(make_fetcher(allow_private_networks=True), f"http://127.0.0.1:{port}/a.png")
    assert error.reason == "unreachable"
    assert f"127.0.0.1:{port}" in error.detail


def test_not_found_and_other_http_errors(make_fetcher, storage):
    storage.routes["/boom.png"] = lambda h, _seen: h.reply(500, b"oops", "text/plain")
    fetcher = make_fetcher(allow_private_networks=True)
    assert fetch_error(fetcher, f"{storage.url}/missing.png").reason == "not_found"
    assert fetch_error(fetcher, f"{storage.url}/boom.png").reason == "http_error"


def test_html_page_is_not_an_image(make_fetcher):
    error = fetch_error(make_fetcher(), "/data/upload/1/login.png")
    assert error.reason == "not_image"
    assert "text/html" in error.detail
    assert "login" in error.detail


# ---- decoding ---------------------------------------------------------------------------------------------


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims ``width`` x ``height`` but which holds (almost) no pixel data."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return (
            struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize(
    ("data", "max_pixels"),
    [
        (png_header_only(10_000, 10_000), images.DEFAULT_MAX_PIXELS),  # our check (PIL only warns)
        (png_header_only(100_000, 100_000), images.DEFAULT_MAX_PIXELS),  # PIL's own bomb error
        (solid_png(1, 101, (1, 2, 3)), 100),  # a real image one pixel over a small cap
    ],
)
def test_pixel_cap(make_fetcher, data, max_pixels):
    error = fetch_error(make_fetcher(max_pixels=max_pixels), data_uri(data))
    assert error.reason == "too_large"
    assert "max_pixels" in error.detail


def test_exif_orientation_is_applied(make_fetcher):
    # Stored 40 wide x 20 tall, red left half / blue right half; orientation 6 = shown rotated 90°
    # clockwise, so the upright image is 20 wide x 40 tall with red on top.
    stored = np.zeros((20, 40, 3), np.uint8)
    stored[:, :20] = (255, 0, 0)
    stored[:, 20:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6
    jpeg = encode(Image.fromarray(stored), "JPEG", quality=95, exif=exif.tobytes())
    image = make_fetcher().fetch(data_uri(jpeg, "image/jpeg"))
    assert (image.height, image.width) == (40, 20)
    assert image.array.shape == (40, 20, 3)
    top, bottom = image.array[5:15].mean(axis=(0, 1)), image.array[25:35].mean(axis=(0, 1))
    assert top[0] > 200 > top[2]
    assert bottom[2] > 200 > bottom[0]


def test_modes_convert_to_rgb(make_fetcher):
    fetcher = make_fetcher()
    palette = Image.new("P", (4, 3))
    palette.putpalette([0, 0, 0, 10, 20, 30] + [0] * 762)
    palette.paste(1, (0, 0, 4, 3))
    rgba = Image.new("RGBA", (4, 3), (255, 0, 0, 0))  # fully transparent red -> white
    gray16 = Image.fromarray(np.full((3, 4), 0x8000, np.uint16))
    cases = {
        "P": (encode(palette), (10, 20, 30)),
        "RGBA": (encode(rgba), (255, 255, 255)),
        "L": (encode(Image.new("L", (4, 3), 77)), (77, 77, 77)),
        "CMYK": (encode(Image.new("CMYK", (4, 3), (0, 255, 255, 0)), "JPEG", quality=100), (255, 0, 0)),
        "I;16": (encode(gray16), (128, 128, 128)),
    }
    for mode, (data, color) in cases.items():
        image = fetcher.fetch(data_uri(data))
        assert image.array.shape == (3, 4, 3), mode
        assert image.array.dtype == np.uint8, mode
        assert np.abs(image.array.astype(int) - color).max() <= 2, (mode, image.array[0, 0])


def test_corrupt_and_truncated_bytes(make_fetcher):
    fetcher = make_fetcher()
    for data in (b"\x00\x01 definitely not an image", RED[: len(RED) // 2]):
        error = fetch_error(fetcher, data_uri(data))
        assert error.reason == "corrupt"
        assert "data:image/png;base64" in str(error)


def test_data_uri_checks(make_fetcher):
    fetcher = make_fetcher()
    assert_solid(fetcher.fetch(data_uri(GREEN)).array, 4, 5, (0, 255, 0))
    assert fetch_error(fetcher, data_uri(GREEN, "text/plain")).reason == "not_image"
    assert fetch_error(fetcher, "data:image/png;base64,@@@@").reason == "corrupt"
    assert fetch_error(fetcher, "data:image/png,rawbytes").reason == "bad_url"


# ---- local files ------------------------------------------------------------------------------------------


def test_local_files_under_root_only(make_fetcher, tmp_path, ls):
    root = tmp_path / "media"
    (root / "pics").mkdir(parents=True)
    (root / "pics" / "red.png").write_bytes(RED)
    (tmp_path / "secret.png").write_bytes(GREEN)
    (root / "escape.png").symlink_to(tmp_path / "secret.png")
    fetcher = make_fetcher(allow_local_files_root=root)

    assert_solid(fetcher.fetch(str(root / "pics" / "red.png")).array, 6, 8, (255, 0, 0))
    assert_solid(fetcher.fetch((root / "pics" / "red.png").as_uri()).array, 6, 8, (255, 0, 0))
    assert_solid(fetcher.fetch("/data/local-files/?d=pics/red.png").array, 6, 8, (255, 0, 0))
    assert ls.seen == []  # the Local Storage URL was read from disk
    for outside in (str(tmp_path / "secret.png"), str(root / "escape.png"), f"{root}/../secret.png"):
        assert fetch_error(fetcher, outside).reason == "forbidden_path", outside
    assert fetch_error(fetcher, str(root / "missing.png")).reason == "not_found"
    error = fetch_error(make_fetcher(), str(root / "pics" / "red.png"))
    assert error.reason == "forbidden_path"
    assert "allow_local_files_root" in error.detail


# ---- caches -----------------------------------------------------------------------------------------------


def test_repeated_url_is_served_from_cache(make_fetcher, ls, tmp_path):
    fetcher = make_fetcher()
    first = fetcher.fetch("/data/upload/1/red.png")
    second = fetcher.fetch("/data/upload/1/red.png")
    assert len(ls.seen) == 1
    assert second.sha256 == first.sha256
    assert second.array is first.array  # not decoded again
    assert not second.array.flags.writeable
    cached = tmp_path / "cache" / first.sha256[:2] / first.sha256
    assert cached.read_bytes() == RED
    assert fetcher.cached_path(first.sha256) == cached


def test_same_bytes_at_another_url_are_not_decoded_twice(make_fetcher, ls):
    fetcher = make_fetcher()
    first = fetcher.fetch("/data/upload/1/red.png")
    again = fetcher.fetch("/data/upload/1/red-again.png")
    assert len(ls.seen) == 2
    assert again.array is first.array
    assert again.source == "/data/upload/1/red-again.png"


def test_url_cache_reads_disk_when_decoded_cache_is_off_and_expires(make_fetcher, ls):
    fetcher = make_fetcher(decoded_cache_bytes=0)
    first = fetcher.fetch("/data/upload/1/red.png")
    second = fetcher.fetch("/data/upload/1/red.png")
    assert len(ls.seen) == 1  # bytes came from the disk cache
    assert second.array is not first.array
    assert np.array_equal(second.array, first.array)

    expiring = make_fetcher(url_cache_ttl=1e-9)
    expiring.fetch("/data/upload/1/green.png")
    expiring.fetch("/data/upload/1/green.png")
    assert len(ls.seen) == 3


def test_disk_cache_evicts_oldest_beyond_its_bound(make_fetcher, tmp_path):
    # Over the bound with all three; evicting down to 90% of it removes only the oldest file.
    fetcher = make_fetcher(max_cache_bytes=len(RED) + len(GREEN) + len(BLUE) - 1)
    paths = []
    for age, data in enumerate((RED, GREEN)):
        sha = fetcher.fetch(data_uri(data)).sha256
        path = tmp_path / "cache" / sha[:2] / sha
        os.utime(path, (1000.0 + age, 1000.0 + age))
        paths.append(path)
    (tmp_path / "cache" / "unrelated.txt").write_text("not ours")
    sha = fetcher.fetch(data_uri(BLUE)).sha256
    assert not paths[0].exists()  # oldest evicted
    assert paths[1].exists()
    assert (tmp_path / "cache" / sha[:2] / sha).exists()
    assert (tmp_path / "cache" / "unrelated.txt").exists()
    assert not list((tmp_path / "cache").glob("*/.tmp-*"))


def test_error_survives_pickling_for_the_job_queue():
    error = pickle.loads(pickle.dumps(ImageFetchError("timeout", "/data/upload/1/a.png", "slow")))
    assert (error.reason, error.url, error.detail) == ("timeout", "/data/upload/1/a.png", "slow")
    assert "/data/upload/1/a.png" in str(error)


def test_settings_validation(tmp_path):
    with pytest.raises(ValueError, match="http"):
        ImageFetcher(cache_dir=tmp_path, label_studio_url="ls.example.com")
    with pytest.raises(ValueError, match="root"):
        ImageFetcher(cache_dir=tmp_path, allow_local_files_root=Path("/"))
