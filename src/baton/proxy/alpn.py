"""Stand-in for the tls branch: a TLS listener that picks HTTP/2 or HTTP/1.1 by ALPN.

This module owns only what the HTTP/2 work needs to be tested end to end before TLS
termination lands: a server ``SSLContext`` from one certificate and key file, offering
ALPN ``h2`` then ``http/1.1``, and a protocol factory that decides per accepted TLS
connection (after the handshake, when ALPN is known) which protocol serves it. At merge,
the tls branch's listener replaces it; ``protocol_for_alpn`` is the piece that carries over.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from typing import TYPE_CHECKING

from baton.proxy.h2 import H2Session
from baton.proxy.server import ClientConnection

if TYPE_CHECKING:
    from baton.proxy.server import Proxy

ALPN_PROTOCOLS = ["h2", "http/1.1"]


def server_context(certificate: str, key: str) -> ssl.SSLContext:
    """A TLS server context for one certificate chain, offering h2 and http/1.1."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        ctx.load_cert_chain(certificate, key)
    except ssl.SSLError as exc:
        why = exc.reason or str(exc)
        raise OSError(f"cannot use certificate {certificate} with key {key}: {why}") from None
    ctx.set_alpn_protocols(ALPN_PROTOCOLS)
    return ctx


def protocol_for_alpn(name: str | None, proxy: Proxy, listen: str) -> asyncio.Protocol:
    """The protocol serving a TLS connection whose client chose ``name`` by ALPN."""
    if name == "h2":
        return H2Session(proxy, listen)
    return ClientConnection(proxy, listen)


class _AlpnSwitch(asyncio.Protocol):
    """Exists from accept to the end of the handshake, then hands the transport over."""

    def __init__(self, proxy: Proxy, listen: str) -> None:
        self.proxy = proxy
        self.listen = listen

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        ssl_object = transport.get_extra_info("ssl_object")
        name = ssl_object.selected_alpn_protocol() if ssl_object is not None else None
        protocol = protocol_for_alpn(name, self.proxy, self.listen)
        transport.set_protocol(protocol)
        protocol.connection_made(transport)


def alpn_protocol_factory(proxy: Proxy, listen: str) -> Callable[[], asyncio.Protocol]:
    return lambda: _AlpnSwitch(proxy, listen)
