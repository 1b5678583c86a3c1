"""HTTP connections to one vetted IP address: no second DNS lookup between the address check and the connect.

``PinnedAddressAdapter(address)`` is a requests ``HTTPAdapter`` whose connection pools connect to
``address`` whatever the URL's host resolves to by then (DNS rebinding), while everything else stays on the
host name: the ``Host`` header, TLS SNI and the certificate's host name check. The image downloader resolves
a host once (``backend.images.url_safety``), checks every address, and sends the request through an adapter
pinned to the first one.

Composed of unmodified urllib3 parts: connection and pool subclasses that only replace how the socket is
opened (``HTTPConnection._new_conn``, the hook urllib3 documents for it), and a ``PoolManager`` whose
``_new_pool`` (documented as the override point) builds them.
"""

from __future__ import annotations

import socket
from typing import Any

from requests.adapters import HTTPAdapter
from urllib3 import HTTPConnectionPool, HTTPSConnectionPool, PoolManager
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.exceptions import ConnectTimeoutError, NewConnectionError
from urllib3.poolmanager import SSL_KEYWORDS
from urllib3.util import connection as connection_util


class _PinnedConnect:
    """Opens the socket to ``pinned_address`` instead of resolving the host again."""

    pinned_address: str
    port: int
    timeout: Any
    source_address: Any
    socket_options: Any
    host: str

    def _new_conn(self) -> socket.socket:
        try:
            return connection_util.create_connection(
                (self.pinned_address, self.port),
                self.timeout,
                source_address=self.source_address,
                socket_options=self.socket_options,
            )
        except TimeoutError as exc:
            raise ConnectTimeoutError(
                self,
                f"connection to {self.host} ({self.pinned_address}) timed out (timeout={self.timeout})",
            ) from exc
        except OSError as exc:
            raise NewConnectionError(
                self,  # type: ignore[arg-type]
                f"failed to connect to {self.host} ({self.pinned_address}): {exc}",
            ) from exc


class PinnedHTTPConnection(_PinnedConnect, HTTPConnection):
    """An ``HTTPConnection`` to ``pinned_address``."""

    def __init__(self, *args: Any, pinned_address: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.pinned_address = pinned_address


class PinnedHTTPSConnection(_PinnedConnect, HTTPSConnection):
    """An ``HTTPSConnection`` to ``pinned_address``; SNI and the certificate check use the host name."""

    def __init__(self, *args: Any, pinned_address: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.pinned_address = pinned_address


class _PinnedHTTPPool(HTTPConnectionPool):
    ConnectionCls = PinnedHTTPConnection


class _PinnedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = PinnedHTTPSConnection


class _PinnedPoolManager(PoolManager):
    def __init__(self, pinned_address: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.pinned_address = pinned_address

    def _new_pool(
        self, scheme: str, host: str, port: int, request_context: dict[str, Any] | None = None
    ) -> HTTPConnectionPool:
        context = dict(self.connection_pool_kw if request_context is None else request_context)
        for key in ("scheme", "host", "port"):
            context.pop(key, None)
        if scheme == "http":
            for key in SSL_KEYWORDS:
                context.pop(key, None)
        pool: type[HTTPConnectionPool] = _PinnedHTTPSPool if scheme == "https" else _PinnedHTTPPool
        return pool(host, port, pinned_address=self.pinned_address, **context)


class PinnedAddressAdapter(HTTPAdapter):
    """A requests adapter whose connections all go to ``address`` (an IPv4 or IPv6 address string)."""

    def __init__(self, address: str, **kwargs: Any) -> None:
        self.pinned_address = address
        super().__init__(**kwargs)

    def init_poolmanager(
        self, connections: int, maxsize: int, block: bool = False, **pool_kwargs: Any
    ) -> None:
        self._pool_connections = connections
        self._pool_maxsize = maxsize
        self._pool_block = block
        self.poolmanager = _PinnedPoolManager(
            self.pinned_address, num_pools=connections, maxsize=maxsize, block=block, **pool_kwargs
        )

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        raise ValueError("a pinned-address adapter never goes through a proxy")
