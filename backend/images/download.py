"""Download image bytes over HTTP(S) with caps, hand-followed redirects and address checks.

Downloads stream with connect/read timeouts, a byte cap (``Content-Length`` and the stream itself) and an
overall deadline. Every hop (the URL, then each redirect, at most ``MAX_REDIRECTS``) is parsed once by
``url_safety.parse_fetch_url`` and everything is decided from that one reading: the Authorization header is
sent only while every hop so far stayed on the Label Studio origin; the host is resolved once (the
``Resolver``) and every address it has is checked unless the hop is on the trusted Label Studio origin (the
operator's ``LABEL_STUDIO_URL``) or private networks are allowed; the request then goes to exactly the first
checked address (``backend.images.pinned_http``: no second DNS lookup, so a host cannot rebind between the
check and the connection), with the canonical URL, the Host header and TLS still on the host name.
"""

from __future__ import annotations

import logging
import time
from urllib.parse import urljoin

import requests
import urllib3.exceptions

from backend.images.errors import ImageFetchError, transport_error
from backend.images.label_studio_auth import LabelStudioAuth
from backend.images.pinned_http import PinnedAddressAdapter
from backend.images.url_safety import (
    FetchTarget,
    Resolver,
    UnsafeUrlError,
    display_hop,
    forbidden_detail,
    is_forbidden_ip,
    parse_fetch_url,
    resolve_addresses,
)

logger = logging.getLogger(__name__)

MAX_REDIRECTS = 5

_NOT_IMAGE_TYPES = ("text/html", "application/xhtml+xml", "application/json")
_REDIRECT_CODES = (301, 302, 303, 307, 308)
_USER_AGENT = "cores-labelstudio-backend image fetcher"


class _StaleAccessTokenError(Exception):
    """Label Studio rejected a cached access token: refresh it once and retry."""


class ImageDownloader:
    """GETs image URLs safely (see the module docstring). Safe to share between threads."""

    def __init__(
        self,
        auth: LabelStudioAuth,
        *,
        label_studio_url: str | None,
        trusted_url: str | None,
        max_bytes: int,
        timeout: float | tuple[float, float],
        total_timeout: float,
        allow_private_networks: bool,
        verify_tls: bool | str,
        resolver: Resolver = resolve_addresses,
    ) -> None:
        """Configure a downloader; the arguments mean what ``ImageFetcher``'s do.

        Args:
            auth: the Label Studio Authorization header source (its ``api_key`` may be None).
            label_studio_url: Label Studio base URL; the key is sent only to hops on its origin.
            trusted_url: the Label Studio URL the operator configured; hops on its origin are exempt from
                the address checks (None: no hop is).
            max_bytes: largest accepted body, bytes.
            timeout: connect and read timeouts in seconds (one number for both).
            total_timeout: deadline in seconds for one download, redirects included.
            allow_private_networks: skip the private/loopback/link-local/reserved address checks.
            verify_tls: ``requests``' ``verify``: True, False or a CA bundle path.
            resolver: resolves a host once per hop (``url_safety.resolve_addresses``).

        Raises:
            ValueError: ``label_studio_url`` or ``trusted_url`` is not a URL ``parse_fetch_url`` accepts.
        """
        self._auth = auth
        self._ls_origin = parse_fetch_url(label_studio_url).origin if label_studio_url else None
        self._trusted_origin = parse_fetch_url(trusted_url).origin if trusted_url else None
        self._max_bytes = max_bytes
        self._timeout = timeout
        self._total_timeout = total_timeout
        self._allow_private = allow_private_networks
        self._verify = verify_tls
        self._resolver = resolver

    def download_first(self, candidates: list[str], shown: str) -> bytes:
        """The body of the first of ``candidates`` found; later ones are tried only after a ``not_found``.

        Raises:
            ImageFetchError: the last candidate's error, or the first error that is not ``not_found``.
        """
        for index, candidate in enumerate(candidates):
            try:
                return self._download(candidate, shown)
            except ImageFetchError as exc:
                if exc.reason != "not_found" or index == len(candidates) - 1:
                    raise
                logger.debug(
                    "%s not found, trying %s", display_hop(candidate), display_hop(candidates[index + 1])
                )
        raise AssertionError("no candidate URLs")  # http_candidates never returns an empty list

    def _download(self, url: str, shown: str) -> bytes:
        try:
            return self._follow(url, shown, retry_auth=True)
        except _StaleAccessTokenError:
            self._auth.forget_access_token()
            return self._follow(url, shown, retry_auth=False)

    def _follow(self, url: str, shown: str, *, retry_auth: bool) -> bytes:
        """GET ``url``, following redirects by hand and re-checking each hop."""
        deadline = time.monotonic() + self._total_timeout
        hop_url = url
        still_on_ls = True
        for hop in range(MAX_REDIRECTS + 1):
            try:
                target = parse_fetch_url(hop_url)
            except UnsafeUrlError as exc:
                where = "redirected to" if hop else "the image URL is"
                raise ImageFetchError("bad_url", shown, f"{where} {display_hop(hop_url)}: {exc}") from None
            on_ls = self._ls_origin is not None and target.origin == self._ls_origin
            still_on_ls = still_on_ls and on_ls
            use_auth = still_on_ls and self._auth.api_key is not None
            address = self._vetted_address(target, shown)
            headers = {"User-Agent": _USER_AGENT, "Accept": "image/*, */*;q=0.5"}
            if use_auth:
                headers["Authorization"] = self._auth.header(shown)
            with requests.Session() as session:
                session.trust_env = False
                adapter = PinnedAddressAdapter(address)
                session.mount("http://", adapter)
                session.mount("https://", adapter)
                resp = self._get(session, target.url, headers, shown, deadline)
                try:
                    location = resp.headers.get("Location")
                    if resp.status_code in _REDIRECT_CODES and location:
                        hop_url = urljoin(target.url, location)
                        continue
                    if resp.status_code == 401 and use_auth and retry_auth and self._auth.kind == "refresh":
                        raise _StaleAccessTokenError
                    self._check_response(resp, target.url, on_ls, shown)
                    body = self._read_body(resp, shown, deadline)
                    logger.debug("downloaded %s (%d bytes)", shown, len(body))
                    return body
                finally:
                    resp.close()
        raise ImageFetchError("redirects", shown, f"more than {MAX_REDIRECTS} redirects")

    def _vetted_address(self, target: FetchTarget, shown: str) -> str:
        """Resolve the hop's host once; refuse it when an address is non-public (unless exempt); return
        the address to connect to."""
        try:
            addresses = self._resolver(target.host, target.port)
        except OSError as exc:
            raise ImageFetchError(
                "unreachable", shown, f"cannot resolve host {target.host!r} ({exc})"
            ) from exc
        if not addresses:
            raise ImageFetchError("unreachable", shown, f"host {target.host!r} resolves to no address")
        exempt = self._allow_private or (
            self._trusted_origin is not None and target.origin == self._trusted_origin
        )
        if not exempt:
            for address in addresses:
                if is_forbidden_ip(address):
                    raise ImageFetchError("forbidden_host", shown, forbidden_detail(target.host, address))
        return addresses[0]

    def _get(
        self,
        session: requests.Session,
        url: str,
        headers: dict[str, str],
        shown: str,
        deadline: float,
    ) -> requests.Response:
        if time.monotonic() > deadline:
            raise ImageFetchError("timeout", shown, f"gave up after total_timeout={self._total_timeout}s")
        try:
            return session.get(
                url,
                headers=headers,
                timeout=self._timeout,
                stream=True,
                allow_redirects=False,
                verify=self._verify,
            )
        except requests.RequestException as exc:
            raise transport_error(exc, url, shown) from exc
        except (urllib3.exceptions.HTTPError, ValueError) as exc:
            raise ImageFetchError("bad_url", shown, f"the request could not be made: {exc}") from exc

    def _check_response(self, resp: requests.Response, url: str, on_ls: bool, shown: str) -> None:
        status = resp.status_code
        where = "Label Studio" if on_ls else display_hop(url)
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
            raise transport_error(exc, resp.url, shown) from exc
        return bytes(body)
