"""The Authorization header the image fetcher sends to Label Studio.

Label Studio accepts a legacy token (sent as ``Token <key>``), a JWT access token (``Bearer <token>``) or a
personal access token: a JWT refresh token that is exchanged at ``/api/token/refresh/`` for a short-lived
access token, cached until ``_TOKEN_REFRESH_MARGIN_S`` before it expires. Tokens are told apart by their JWT
claims, which are read without verifying the signature (Label Studio verifies them).
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import threading
import time
from typing import Literal

import requests

from backend.images.errors import ImageFetchError, transport_error

logger = logging.getLogger(__name__)

TokenKind = Literal["none", "legacy", "refresh", "access"]

_TOKEN_REFRESH_MARGIN_S = 30.0
_ACCESS_TOKEN_DEFAULT_TTL_S = 300.0


class LabelStudioAuth:
    """Builds the Authorization header for Label Studio, refreshing a personal access token when needed.

    Safe to share between threads. ``api_key`` is the stripped key (None when none was given) and ``kind``
    its ``TokenKind``.
    """

    def __init__(
        self,
        label_studio_url: str | None,
        api_key: str | None,
        *,
        session: requests.Session,
        timeout: float | tuple[float, float],
        verify_tls: bool | str,
    ) -> None:
        """Keep the key; nothing is contacted until a personal access token must be exchanged.

        Args:
            label_studio_url: Label Studio base URL without a trailing slash (where tokens are refreshed).
            api_key: legacy token, access token or personal access token; blank counts as none.
            session: the HTTP session to post refresh requests with.
            timeout: connect and read timeouts in seconds (one number for both).
            verify_tls: ``requests``' ``verify``: True, False or a CA bundle path.
        """
        self.api_key = api_key.strip() if api_key and api_key.strip() else None
        self.kind = token_kind(self.api_key)
        self._ls_url = label_studio_url
        self._session = session
        self._timeout = timeout
        self._verify = verify_tls
        self._token_lock = threading.Lock()
        self._access_token: str | None = None
        self._access_expires = 0.0

    def header(self, shown: str) -> str:
        """The Authorization header value for Label Studio (refreshing a personal access token if needed).

        Raises:
            ImageFetchError: ``auth`` when the personal access token is expired or refused, or a transport
                reason when Label Studio cannot be reached; ``shown`` is the URL the messages name.
        """
        assert self.api_key is not None
        if self.kind == "legacy":
            return f"Token {self.api_key}"
        if self.kind == "access":
            return f"Bearer {self.api_key}"
        with self._token_lock:
            if self._access_token is None or time.time() >= self._access_expires - _TOKEN_REFRESH_MARGIN_S:
                self._access_token, self._access_expires = self._refresh_access_token(shown)
            return f"Bearer {self._access_token}"

    def forget_access_token(self) -> None:
        """Drop the cached access token (Label Studio rejected it): the next ``header`` exchanges again."""
        with self._token_lock:
            self._access_token = None

    def _refresh_access_token(self, shown: str) -> tuple[str, float]:
        """Exchange the personal access token for an access token; returns it and its expiry (epoch s)."""
        assert self.api_key is not None
        assert self._ls_url is not None
        expires = (jwt_claims(self.api_key) or {}).get("exp")
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
                json={"refresh": self.api_key},
                timeout=self._timeout,
                allow_redirects=False,
                verify=self._verify,
            )
        except requests.RequestException as exc:
            raise transport_error(exc, refresh_url, shown) from exc
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
        access_exp = (jwt_claims(access) or {}).get("exp")
        if not isinstance(access_exp, int | float):
            access_exp = time.time() + _ACCESS_TOKEN_DEFAULT_TTL_S
        logger.debug("exchanged the personal access token; access token valid until %s", access_exp)
        return access, float(access_exp)


def jwt_claims(token: str) -> dict[str, object] | None:
    """The payload of a JWT, decoded without verifying it; None if ``token`` is not a JWT."""
    pieces = token.split(".")
    if len(pieces) != 3:
        return None
    try:
        claims = json.loads(base64.urlsafe_b64decode(pieces[1] + "=" * (-len(pieces[1]) % 4)))
    except (ValueError, binascii.Error):
        return None
    return claims if isinstance(claims, dict) else None


def token_kind(api_key: str | None) -> TokenKind:
    """``none`` without a key, ``legacy`` for a non-JWT token, else the JWT's ``token_type``."""
    if api_key is None:
        return "none"
    claims = jwt_claims(api_key)
    if claims is None:
        return "legacy"
    return "refresh" if claims.get("token_type", "refresh") == "refresh" else "access"
