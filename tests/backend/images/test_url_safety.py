"""One URL parser for origin, address checks and credentials; connections to exactly the vetted address.

Two local HTTP servers that log every request's headers stand for Label Studio and for another host (an
attacker's, or an internal service). The tricks an outside test used against the backend are replayed:
a ``\\@`` authority that ``urllib.parse`` and urllib3 read differently, userinfo, a redirect off the Label
Studio origin, a host that resolves to a public address at the check and to 127.0.0.1 on a second lookup
(made testable by the fetcher's injectable resolver), and the IPv6 spellings of private IPv4 addresses.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from backend.images.fetcher import ImageFetcher, ImageFetchError
from backend.images.url_safety import UnsafeUrlError, is_forbidden_ip, parse_fetch_url
from tests.backend.fake_hosts import LEGACY_TOKEN, RED, FakeHost


@pytest.fixture
def two_hosts() -> Iterator[tuple[FakeHost, FakeHost]]:
    """``(label_studio, other)``: both serve ``/img.png`` and ``/data/upload/1/img.png``."""
    label_studio, other = FakeHost(), FakeHost()
    for host in (label_studio, other):
        host.files({"/img.png": RED, "/data/upload/1/img.png": RED})
    label_studio.routes["/redirect/other"] = lambda h, _seen: h.redirect(f"{other.url}/img.png")
    yield label_studio, other
    label_studio.stop()
    other.stop()


def fetcher_for(tmp_path: Path, label_studio: FakeHost, **options: object) -> ImageFetcher:
    settings: dict[str, object] = {
        "cache_dir": tmp_path / "cache",
        "label_studio_url": label_studio.url,
        "trusted_label_studio_url": label_studio.url,
        "api_key": LEGACY_TOKEN,
        "timeout": (1.0, 2.0),
    }
    settings.update(options)
    return ImageFetcher(**settings)  # type: ignore[arg-type]


def refused(fetcher: ImageFetcher, url: str) -> ImageFetchError:
    with pytest.raises(ImageFetchError) as info:
        fetcher.fetch(url, task_id=1)
    return info.value


def test_a_backslash_authority_reaches_no_host_and_leaks_no_token(tmp_path, two_hosts):
    label_studio, other = two_hosts
    ls_port, other_port = label_studio.server_address[1], other.server_address[1]
    url = f"http://127.0.0.1:{other_port}\\@127.0.0.1:{ls_port}/../img.png"
    for allow_private in (False, True):
        error = refused(fetcher_for(tmp_path, label_studio, allow_private_networks=allow_private), url)
        assert error.reason == "bad_url", error
        assert "backslash" in error.detail
    assert other.seen == []
    assert label_studio.seen == []


@pytest.mark.parametrize(
    "authority",
    ["user:pass@{ls}", "user@{ls}", ":@{ls}", "{other}@{ls}", "{ls}@{other}"],
)
def test_userinfo_is_refused(tmp_path, two_hosts, authority):
    label_studio, other = two_hosts
    ls_netloc, other_netloc = label_studio.url.split("//")[1], other.url.split("//")[1]
    url = "http://" + authority.format(ls=ls_netloc, other=other_netloc) + "/img.png"
    error = refused(fetcher_for(tmp_path, label_studio, allow_private_networks=True), url)
    assert error.reason == "bad_url"
    assert "credentials" in error.detail
    assert other.seen == []
    assert label_studio.seen == []


def test_a_redirect_off_label_studio_carries_no_token(tmp_path, two_hosts):
    label_studio, other = two_hosts
    fetcher_for(tmp_path, label_studio, allow_private_networks=True).fetch(
        f"{label_studio.url}/redirect/other"
    )
    assert label_studio.seen[0].headers["authorization"] == f"Token {LEGACY_TOKEN}"
    assert len(other.seen) == 1
    assert "authorization" not in other.seen[0].headers
    # without private networks allowed, the other (loopback) host is not the trusted Label Studio: refused
    label_studio.seen.clear()
    other.seen.clear()
    error = refused(fetcher_for(tmp_path, label_studio), f"{label_studio.url}/redirect/other")
    assert error.reason == "forbidden_host"
    assert other.seen == []


class ScriptedResolver:
    """Answers each lookup of a host with the next address list; records every lookup."""

    def __init__(self, *answers: list[str]) -> None:
        self.answers = list(answers)
        self.lookups: list[tuple[str, int]] = []

    def __call__(self, host: str, port: int) -> list[str]:
        self.lookups.append((host, port))
        return self.answers[min(len(self.lookups), len(self.answers)) - 1]


def test_a_rebinding_host_is_never_reached_on_its_second_address(tmp_path, two_hosts):
    label_studio, other = two_hosts
    port = other.server_address[1]
    resolver = ScriptedResolver(["8.8.8.8"], ["127.0.0.1"])  # public at the check, loopback afterwards
    fetcher = fetcher_for(tmp_path, label_studio, resolver=resolver, timeout=(0.5, 0.5))
    error = refused(fetcher, f"http://rebind.example:{port}/img.png")
    assert error.reason in ("unreachable", "timeout"), error  # it went to 8.8.8.8, which is not there
    assert resolver.lookups == [("rebind.example", port)]  # one lookup, and the connection used it
    assert other.seen == []


def test_the_connection_goes_to_the_vetted_address_with_the_host_name_kept(tmp_path, two_hosts):
    label_studio, first = two_hosts
    port = first.server_address[1]
    second = FakeHost("127.0.0.2", port)  # same port, another loopback address
    second.files({"/img.png": RED})
    try:
        resolver = ScriptedResolver(["127.0.0.1"], ["127.0.0.2"])
        fetcher = fetcher_for(tmp_path, label_studio, resolver=resolver, allow_private_networks=True)
        image = fetcher.fetch(f"http://images.example:{port}/img.png")
        assert image.width == 8
        assert [seen.headers["host"] for seen in first.seen] == [f"images.example:{port}"]
        assert second.seen == []
        assert resolver.lookups == [("images.example", port)]
    finally:
        second.stop()


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://[::1/x.png", "bad_url"),
        ("http://example.com:99999/x.png", "bad_url"),
        ("http://exa mple.com/x.png", "bad_url"),
        ("http://example.com/a\x00b.png", "bad_url"),
        ("http://[fe80::1%25eth0]/x.png", "bad_url"),
        ("ftp://example.com/x.png", "bad_url"),
    ],
)
def test_malformed_urls_are_a_clear_error(tmp_path, two_hosts, url, reason):
    label_studio, _ = two_hosts
    error = refused(fetcher_for(tmp_path, label_studio), url)
    assert error.reason == reason, error


def test_one_parser_gives_the_canonical_url():
    target = parse_fetch_url("HTTP://Example.COM:8080/a b/../c.png?x=1#frag")
    assert (target.scheme, target.host, target.port) == ("http", "example.com", 8080)
    assert target.url == "http://example.com:8080/c.png?x=1"
    assert parse_fetch_url("https://[2001:db8::1]/x").host == "2001:db8::1"
    with pytest.raises(UnsafeUrlError, match="backslash"):
        parse_fetch_url("http://a:1\\@b:2/")


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.1.2.3",
        "169.254.169.254",
        "100.64.0.1",
        "::1",
        "::",
        "fe80::1",
        "fc00::1",
        "::ffff:127.0.0.1",  # IPv4-mapped
        "::ffff:10.0.0.1",
        "::127.0.0.1",  # IPv4-compatible
        "::10.0.0.1",
        "2002:7f00:1::",  # 6to4 of 127.0.0.1
        "2002:a9fe:a9fe::1",  # 6to4 of 169.254.169.254
        "64:ff9b::7f00:1",  # NAT64 of 127.0.0.1
        "64:ff9b::a00:1",  # NAT64 of 10.0.0.1
        "64:ff9b:1::8.8.8.8",  # local-use NAT64 prefix
        "2001:0:4136:e378:8000:63bf:3fff:fdd2",  # Teredo
        "not an address",
    ],
)
def test_non_public_addresses_and_their_ipv6_forms_are_forbidden(address):
    assert is_forbidden_ip(address)


@pytest.mark.parametrize(
    "address", ["8.8.8.8", "2606:4700:4700::1111", "::ffff:8.8.8.8", "2002:808:808::1", "64:ff9b::808:808"]
)
def test_public_addresses_are_allowed(address):
    assert not is_forbidden_ip(address)
