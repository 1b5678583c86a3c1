"""URL and address guards for fetching images: origins, secret-free display forms, non-public addresses.

Credentials must never leave the Label Studio origin (``origin`` compares scheme, host and port), URLs in
messages and logs must not carry passwords, signatures or whole data: payloads (``display_url``,
``display_hop``), and hosts that resolve to private, loopback, link-local or reserved addresses are refused
to prevent server-side request forgery (``resolve_addresses``, ``is_forbidden_ip``, ``peer_address``).
"""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit

import requests


def origin(url: str) -> tuple[str, str, int]:
    """``(scheme, host, port)`` of ``url``, lower-cased, with the scheme's default port filled in."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    return scheme, (parts.hostname or "").lower(), parts.port or (443 if scheme == "https" else 80)


def display_url(url: str) -> str:
    """``url`` fit for messages and logs: data: payloads shortened, user:password removed, length capped."""
    if url.startswith("data:"):
        return f"{url.partition(',')[0]},<{len(url)} chars>"
    parts = urlsplit(url)
    if parts.password or parts.username:
        url = parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()
    return url if len(url) <= 300 else url[:300] + "..."


def display_hop(url: str) -> str:
    """A URL reached through a redirect, without its query (presigned URLs carry signatures there)."""
    parts = urlsplit(url)
    netloc = parts.netloc.rpartition("@")[2]
    return f"{parts.scheme}://{netloc}{parts.path}" + ("?..." if parts.query else "")


def resolve_addresses(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to (raises OSError when it does not resolve)."""
    return [str(info[4][0]) for info in socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)]


def is_forbidden_ip(address: str) -> bool:
    """True for loopback, private, link-local, reserved, multicast, unspecified and shared addresses."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return True
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return (
        not ip.is_global
        or ip.is_private
        or ip.is_loopback
        or ip.is_link_local
        or ip.is_reserved
        or ip.is_multicast
        or ip.is_unspecified
    )


def forbidden_detail(host: str, address: str) -> str:
    """The message for a host refused because it resolves to a non-public ``address``."""
    return (
        f"host {host!r} resolves to {address}, a private/loopback/link-local/reserved address, refused "
        "to prevent server-side request forgery; if the host is trusted, set allow_private_networks (or "
        "make it the Label Studio URL)"
    )


def peer_address(resp: requests.Response) -> str | None:
    """The IP address the response came from, or None when it cannot be told.

    The connection's socket when still attached (keep-alive), else the socket the stdlib response reads
    from (http.client detaches it from the connection when the server closes after the response).
    """
    candidates = (
        getattr(getattr(resp.raw, "connection", None), "sock", None),
        getattr(getattr(getattr(getattr(resp.raw, "_fp", None), "fp", None), "raw", None), "_sock", None),
    )
    for sock in candidates:
        if isinstance(sock, socket.socket):
            try:
                return str(sock.getpeername()[0])
            except OSError:
                continue
    return None
