"""URL and address guards for fetching images: one URL parser, origins, display forms, non-public addresses.

One parser decides everything: ``parse_fetch_url`` reads a URL with ``urllib3.util.parse_url``, the parser
requests itself uses to connect (``PreparedRequest.prepare_url``), and the origin (credentials), the address
checks and the connection all use what it found. A URL two parsers could read differently is refused rather
than guessed at: a ``\\`` anywhere (``http://A:1\\@B:2/`` is host A to urllib3 and host B to
``urllib.parse``), userinfo (``user:pass@``), control characters, whitespace in the host part, a zone id or
a ``%`` in the host, and any host or port on which ``urllib.parse.urlsplit`` disagrees. requests is then
handed the canonical URL rebuilt from the parsed parts (``FetchTarget.url``).

Addresses: ``resolve_addresses`` resolves a host once (``Resolver``: injectable, so tests can make a host
rebind), ``is_forbidden_ip`` refuses loopback, private, link-local, reserved, multicast, unspecified and
shared addresses, and the IPv6 forms that embed an IPv4 address (IPv4-mapped ``::ffff:0:0/96``,
IPv4-compatible ``::/96``, 6to4 ``2002::/16``, NAT64 ``64:ff9b::/96``) by checking the embedded address;
Teredo (``2001::/32``) and the local-use NAT64 prefix ``64:ff9b:1::/48`` are refused outright. The
downloader then connects to exactly the address it checked (``backend.images.pinned_http``).

``display_url`` / ``display_hop`` give forms fit for messages and logs (no passwords, signatures or whole
data: payloads) and never raise, whatever the text.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from urllib3.exceptions import LocationParseError
from urllib3.util import parse_url

Resolver = Callable[[str, int], list[str]]
"""``(host, port) -> addresses`` (IP address strings); raises OSError when the host does not resolve."""

DEFAULT_PORTS = {"http": 80, "https": 443}
_NAT64_WELL_KNOWN = ipaddress.ip_network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")
_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")


class UnsafeUrlError(ValueError):
    """A URL the fetcher will not request; the message says why and what to send instead."""


@dataclass(frozen=True)
class FetchTarget:
    """A parsed http(s) URL: ``scheme`` and ``host`` lower-cased (an IPv6 host without brackets), ``port``
    with the scheme's default filled in, ``url`` the canonical form requests is given."""

    scheme: str
    host: str
    port: int
    url: str

    @property
    def origin(self) -> tuple[str, str, int]:
        """``(scheme, host, port)``: what decides whether credentials may be sent."""
        return self.scheme, self.host, self.port


def parse_fetch_url(url: str) -> FetchTarget:
    """Parse an http(s) URL the way the HTTP client will connect to it (see the module docstring).

    Raises:
        UnsafeUrlError: not http(s), no host, a bad port, userinfo, ``\\``, control characters,
            whitespace in the host, or a URL whose host or port the two parsers read differently.
    """
    if not isinstance(url, str):
        raise UnsafeUrlError(f"expected the URL as text, got {type(url).__name__}")
    bad = next((c for c in url if ord(c) < 32 or ord(c) == 127 or 0xD800 <= ord(c) < 0xE000), None)
    if bad is not None:
        raise UnsafeUrlError(
            f"the URL holds the character U+{ord(bad):04X} (a control character or a lone surrogate); "
            "percent-encode it"
        )
    if "\\" in url:
        raise UnsafeUrlError("the URL holds a backslash, which URL parsers read differently; use %5C or /")
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in DEFAULT_PORTS:
        raise UnsafeUrlError("expected an http:// or https:// URL")
    authority = rest
    for stop in "/?#":
        authority = authority.split(stop, 1)[0]
    if "@" in authority:
        raise UnsafeUrlError("the URL carries user credentials (user:password@); they are never sent")
    if any(c.isspace() for c in authority):
        raise UnsafeUrlError("the URL's host part holds whitespace")
    try:
        parsed = parse_url(url)
        split = urlsplit(url)
        split_port = split.port
    except (LocationParseError, ValueError) as exc:
        raise UnsafeUrlError(f"the URL cannot be parsed: {exc}") from None
    host = (parsed.host or "").lower()
    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not bare:
        raise UnsafeUrlError("the URL has no host")
    if "%" in bare or not bare.isascii():
        raise UnsafeUrlError(f"the URL's host {bare!r} holds '%' or non-ASCII text; use its IDNA form")
    port = parsed.port or DEFAULT_PORTS[scheme.lower()]
    split_host = (split.hostname or "").lower()
    if split_host != bare or (split_port or DEFAULT_PORTS[scheme.lower()]) != port:
        raise UnsafeUrlError(
            f"URL parsers disagree on this URL's host ({bare!r} or {split_host!r}); refusing to guess"
        )
    netloc = host if parsed.port is None else f"{host}:{port}"
    canonical = f"{scheme.lower()}://{netloc}{parsed.path or '/'}" + (
        f"?{parsed.query}" if parsed.query is not None else ""
    )
    return FetchTarget(scheme.lower(), bare, port, canonical)


def origin(url: str) -> tuple[str, str, int]:
    """``(scheme, host, port)`` of an http(s) URL, as ``parse_fetch_url`` reads it.

    Raises:
        UnsafeUrlError: as ``parse_fetch_url``.
    """
    return parse_fetch_url(url).origin


def display_url(url: str) -> str:
    """``url`` fit for messages and logs: data: payloads shortened, user:password removed, length capped.
    Never raises."""
    if url.startswith("data:"):
        return f"{url.partition(',')[0][:100]},<{len(url)} chars>"
    scheme, sep, rest = url.partition("://")
    if sep and "@" in rest.split("/", 1)[0]:
        url = f"{scheme}://{rest.split('/', 1)[0].rpartition('@')[2]}" + (
            "/" + rest.split("/", 1)[1] if "/" in rest else ""
        )
    shown = url.encode("ascii", "backslashreplace").decode("ascii")
    return shown if len(shown) <= 300 else shown[:300] + "..."


def display_hop(url: str) -> str:
    """A URL reached through a redirect, without its query (presigned URLs carry signatures there).
    Never raises."""
    base, sep, _ = url.partition("?")
    return display_url(base) + ("?..." if sep else "")


def resolve_addresses(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to, in the resolver's order (raises OSError when it does not)."""
    return [str(info[4][0]) for info in socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)]


def embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries (mapped, compatible, 6to4, NAT64 well-known), else None."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip in _NAT64_WELL_KNOWN or (ip in _IPV4_COMPATIBLE and int(ip) > 1):
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def is_forbidden_ip(address: str) -> bool:
    """True for loopback, private, link-local, reserved, multicast, unspecified and shared addresses, for
    IPv6 forms of such IPv4 addresses, for Teredo and the local-use NAT64 prefix, and for what is not an
    IP address at all."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return True
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.teredo is not None or ip in _NAT64_LOCAL:
            return True
        inner = embedded_ipv4(ip)
        if inner is not None:
            return _forbidden(inner)
    return _forbidden(ip)


def _forbidden(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
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
        "to prevent server-side request forgery; if the host is trusted, set ALLOW_PRIVATE_NETWORKS (or "
        "make it the Label Studio URL, LABEL_STUDIO_URL)"
    )
