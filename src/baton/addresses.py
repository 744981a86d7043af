"""Listen addresses and routed host names: the one parser Baton has for each.

This module owns what ``HOST:PORT`` and a routed Host name may be. Config (``proxy.listen``,
``proxy.http_listen``, ``proxy.hosts``), the route table (listen addresses, targets, hosts),
the proxy's ``--listen`` and the ``--metrics``/``--dashboard``/``--flags`` endpoints all use
it, so a value that validates in one place validates everywhere. Pure: no I/O, no DNS.

Rules. An address is ``HOST:PORT``: HOST an IPv4 address, a host name, or an IPv6 address
in brackets (``[::1]:8080``; without brackets ``::1:8080`` is ambiguous and refused, and only
an IPv6 address may be bracketed); PORT 1 to 65535 in ASCII digits (0 would bind a random
port). A host name is dot-separated labels of ``a-z``, ``0-9``, ``_`` and ``-`` (not
starting or ending with ``-``), each at most 63 characters, at most 253 in all; it is
case-insensitive and a trailing dot is dropped. A routed host may also be ``*.suffix``.
Every refusal is a ``ValueError`` whose message says what was wrong; callers add the
file, key or flag it came from.
"""

from __future__ import annotations

import ipaddress
import re

_LABEL = re.compile(r"^[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?$")
_PORT = re.compile(r"^[0-9]{1,5}$")


def _host_name(text: str) -> str:
    """A host name, lowercased and without a trailing dot; ValueError saying what is wrong."""
    name = text.lower()
    if name.endswith("."):
        name = name[:-1]
    if not name:
        raise ValueError("the host name is empty")
    if len(name) > 253:
        raise ValueError("a host name has at most 253 characters")
    for label in name.split("."):
        if not _LABEL.match(label):
            if not label:
                raise ValueError("a host name has no empty label (no '..')")
            raise ValueError(
                f"{label!r} is not a host name label (a-z, 0-9, '_' and '-', at most 63, "
                "not starting or ending with '-')"
            )
    return name


def parse_address(value: object) -> tuple[str, int]:
    """(host, port) from ``HOST:PORT``; the host of ``[v6]:PORT`` comes without brackets."""
    if not isinstance(value, str):
        raise ValueError("an address is a string")
    host, sep, port_text = value.rpartition(":")
    if not sep:
        raise ValueError("no ':PORT'")
    if not _PORT.match(port_text) or not 0 < int(port_text) < 65536:
        raise ValueError("the port is a number from 1 to 65535")
    if host.startswith("[") and host.endswith("]"):
        bare = host[1:-1]
        try:
            is_v6 = ipaddress.ip_address(bare).version == 6
        except ValueError:
            is_v6 = False
        if not is_v6:
            raise ValueError("only an IPv6 address goes in brackets")
        return bare, int(port_text)
    if not host:
        raise ValueError("the host is empty")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        _host_name(host)
        return host, int(port_text)
    if ip.version == 6:
        raise ValueError("an IPv6 address goes in brackets, like [::1]:8080")
    return host, int(port_text)


def parse_host(value: object) -> str:
    """A routed Host name or ``*.suffix``, lowercased, without a trailing dot."""
    if not isinstance(value, str):
        raise ValueError("a host name is a string")
    if value.startswith("*."):
        return "*." + _host_name(value[2:])
    if ":" in value or "/" in value:
        raise ValueError("no port, no scheme, no path")
    return _host_name(value)
