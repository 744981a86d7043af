"""The PROXY protocol (v1 text and v2 binary), parsed with no sockets in it.

Theory of operation. A TCP load balancer in front of Baton (HAProxy, an AWS NLB, ...)
prepends one header to every connection saying who the real client is. A listener with
``proxy_protocol: true`` requires that header first: ``parse_header`` is fed the bytes
received so far and answers ``None`` (need more), a ``ProxyHeader`` (with how many bytes it
took; the rest is the client's HTTP), or raises ``ProxyProtocolError`` naming what was
wrong. Validation is strict, as the specification asks: a connection whose first bytes are
not a complete, well-formed header is refused, never read as HTTP, since anyone who could
skip the header could claim any address. ``LOCAL`` (v2) and ``UNKNOWN`` (v1) headers, used
by balancers for their own health checks, carry no client: the socket's peer stands.
Reference: https://www.haproxy.org/download/2.9/doc/proxy-protocol.txt
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

from baton.errors import ProxyProtocolError

V1_PREFIX = b"PROXY "
V1_MAX = 107  # the longest v1 line, CRLF included
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V2_MAX = 16 + 4096  # Baton's bound on a v2 header (addresses plus TLVs)

_V2_FAMILIES = {
    0x00: ("unspec", 0),
    0x11: ("tcp4", 12),
    0x12: ("udp4", 12),
    0x21: ("tcp6", 36),
    0x22: ("udp6", 36),
    0x31: ("unix", 216),
    0x32: ("unix", 216),
}


@dataclass(frozen=True, slots=True)
class ProxyHeader:
    """What the balancer said: the client's address, or nothing (LOCAL/UNKNOWN)."""

    version: int
    consumed: int  # header bytes; what follows is the client's own data
    family: str  # "tcp4", "tcp6", "udp4", "udp6", "unix", "unspec" or "unknown"
    source: str | None = None  # client IP (or unix path); None: keep the socket's peer
    source_port: int = 0
    destination: str | None = None
    destination_port: int = 0

    @property
    def client_ip(self) -> str | None:
        """The client IP to use instead of the socket's peer (None for LOCAL/UNKNOWN/unix)."""
        return self.source if self.family in ("tcp4", "tcp6", "udp4", "udp6") else None


def parse_header(data: bytes) -> ProxyHeader | None:
    """Parse a PROXY header at the start of ``data``; None when more bytes are needed."""
    if data[:1] == b"P":
        if len(data) < len(V1_PREFIX):
            if not V1_PREFIX.startswith(data):
                raise ProxyProtocolError("missing PROXY protocol header")
            return None
        if not data.startswith(V1_PREFIX):
            raise ProxyProtocolError("missing PROXY protocol header")
        return _parse_v1(data)
    if data[:1] == b"\r":
        if len(data) < len(V2_SIGNATURE):
            if not V2_SIGNATURE.startswith(data):
                raise ProxyProtocolError("missing PROXY protocol header")
            return None
        if not data.startswith(V2_SIGNATURE):
            raise ProxyProtocolError("missing PROXY protocol header")
        return _parse_v2(data)
    if not data:
        return None
    raise ProxyProtocolError("missing PROXY protocol header")


def _parse_v1(data: bytes) -> ProxyHeader | None:
    end = data.find(b"\r\n", 0, V1_MAX)
    if end < 0:
        if len(data) >= V1_MAX:
            raise ProxyProtocolError(f"PROXY v1 header longer than {V1_MAX} bytes")
        if b"\n" in data:
            raise ProxyProtocolError("PROXY v1 header not ended by CRLF")
        return None
    line = data[:end]
    consumed = end + 2
    parts = line.split(b" ")
    if len(parts) >= 2 and parts[1] == b"UNKNOWN":
        return ProxyHeader(1, consumed, "unknown")  # the rest of the line is ignored
    if len(parts) != 6:
        raise ProxyProtocolError("PROXY v1 header: expected PROXY TCP4|TCP6 SRC DST SPORT DPORT")
    proto, src, dst, sport, dport = parts[1:]
    if proto not in (b"TCP4", b"TCP6"):
        raise ProxyProtocolError(f"PROXY v1 header: unknown protocol {proto!r}")
    version = 4 if proto == b"TCP4" else 6
    source = _v1_address(src, version, "source")
    destination = _v1_address(dst, version, "destination")
    return ProxyHeader(
        1,
        consumed,
        "tcp4" if version == 4 else "tcp6",
        source,
        _v1_port(sport, "source"),
        destination,
        _v1_port(dport, "destination"),
    )


def _v1_address(raw: bytes, version: int, what: str) -> str:
    try:
        address = ipaddress.ip_address(raw.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        raise ProxyProtocolError(f"PROXY v1 header: invalid {what} address {raw!r}") from None
    if address.version != version:
        raise ProxyProtocolError(f"PROXY v1 header: {what} address {raw!r} is not IPv{version}")
    return str(address)


def _v1_port(raw: bytes, what: str) -> int:
    # Decimal without leading zeros (the specification's wording), 0-65535.
    if not raw.isdigit() or len(raw) > 5 or (len(raw) > 1 and raw[:1] == b"0"):
        raise ProxyProtocolError(f"PROXY v1 header: invalid {what} port {raw!r}")
    port = int(raw)
    if port > 65535:
        raise ProxyProtocolError(f"PROXY v1 header: invalid {what} port {raw!r}")
    return port


def _parse_v2(data: bytes) -> ProxyHeader | None:
    if len(data) < 16:
        return None
    ver_cmd, family_byte, length = struct.unpack_from("!BBH", data, 12)
    if ver_cmd >> 4 != 2:
        raise ProxyProtocolError(f"PROXY v2 header: unsupported version {ver_cmd >> 4}")
    command = ver_cmd & 0x0F
    if command not in (0, 1):
        raise ProxyProtocolError(f"PROXY v2 header: unknown command {command}")
    if 16 + length > V2_MAX:
        raise ProxyProtocolError(f"PROXY v2 header: {16 + length} bytes is over {V2_MAX}")
    if len(data) < 16 + length:
        return None
    consumed = 16 + length
    if command == 0:  # LOCAL: the balancer's own connection (a health check)
        return ProxyHeader(2, consumed, "unspec")
    known = _V2_FAMILIES.get(family_byte)
    if known is None:
        raise ProxyProtocolError(f"PROXY v2 header: unknown address family 0x{family_byte:02x}")
    family, size = known
    if length < size:
        raise ProxyProtocolError(
            f"PROXY v2 header: {family} addresses need {size} bytes, header has {length}"
        )
    body = data[16 : 16 + size]
    if family in ("tcp4", "udp4"):
        src, dst = ipaddress.IPv4Address(body[0:4]), ipaddress.IPv4Address(body[4:8])
        sport, dport = struct.unpack_from("!HH", body, 8)
        return ProxyHeader(2, consumed, family, str(src), sport, str(dst), dport)
    if family in ("tcp6", "udp6"):
        src6, dst6 = ipaddress.IPv6Address(body[0:16]), ipaddress.IPv6Address(body[16:32])
        sport, dport = struct.unpack_from("!HH", body, 32)
        return ProxyHeader(2, consumed, family, str(src6), sport, str(dst6), dport)
    if family == "unix":
        return ProxyHeader(
            2, consumed, family, _unix_path(body[:108]), 0, _unix_path(body[108:216]), 0
        )
    return ProxyHeader(2, consumed, family)  # UNSPEC with PROXY: no usable address


def _unix_path(raw: bytes) -> str:
    return raw.split(b"\x00", 1)[0].decode("utf-8", "replace")


def v1_header(source: tuple[str, int], destination: tuple[str, int]) -> bytes:
    """A v1 header (for tests and tools): ``PROXY TCP4 1.2.3.4 127.0.0.1 5678 80``."""
    version = ipaddress.ip_address(source[0]).version
    return b"PROXY TCP%d %s %s %d %d\r\n" % (
        version,
        source[0].encode(),
        destination[0].encode(),
        source[1],
        destination[1],
    )


def v2_header(
    source: tuple[str, int] | None, destination: tuple[str, int] | None, tlvs: bytes = b""
) -> bytes:
    """A v2 header (for tests and tools); no ``source`` gives a LOCAL header."""
    if source is None or destination is None:
        return V2_SIGNATURE + struct.pack("!BBH", 0x20, 0x00, len(tlvs)) + tlvs
    src, dst = ipaddress.ip_address(source[0]), ipaddress.ip_address(destination[0])
    family = 0x11 if src.version == 4 else 0x21
    body = src.packed + dst.packed + struct.pack("!HH", source[1], destination[1]) + tlvs
    return V2_SIGNATURE + struct.pack("!BBH", 0x21, family, len(body)) + body


__all__ = [
    "ProxyHeader",
    "ProxyProtocolError",
    "parse_header",
    "v1_header",
    "v2_header",
]
