"""Which peers may speak for the client: ``trusted_proxies`` and the addresses they cover.

Theory of operation. Behind a TLS terminator or load balancer, the peer Baton sees is that
balancer, and it says who the client was in ``X-Forwarded-For/Proto/Host``. Those headers
are believed only from peers inside the app's ``trusted_proxies`` CIDRs (default: none);
from anyone else they are replaced, since any client can write them. This module validates
the CIDR list (for the route table and baton.yml) and answers "is this peer trusted?",
cached per (list, address) because the proxy asks on every request of such an app.
"""

from __future__ import annotations

import ipaddress
from functools import lru_cache

from baton.errors import EntryError

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(values: object) -> tuple[str, ...]:
    """Normalised CIDRs (``10.0.0.0/8``, ``::1/128``; a bare address is one host).

    Raises ``EntryError`` (a ValueError) saying which entry is wrong and what was expected.
    """
    if not isinstance(values, list | tuple):
        raise EntryError(f"expected a list of CIDRs like 10.0.0.0/8, got {values!r}")
    out: list[str] = []
    for i, value in enumerate(values):
        if not isinstance(value, str):
            raise EntryError(f"expected a CIDR like 10.0.0.0/8, got {value!r}", i)
        try:
            network = ipaddress.ip_network(value.strip(), strict=True)
        except ValueError as exc:
            raise EntryError(f"expected a CIDR like 10.0.0.0/8, got {value!r} ({exc})", i) from None
        if str(network) not in out:
            out.append(str(network))
    return tuple(out)


@lru_cache(maxsize=64)
def _compiled(networks: tuple[str, ...]) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(n) for n in networks)


@lru_cache(maxsize=4096)
def is_trusted(networks: tuple[str, ...], peer: bytes) -> bool:
    """Whether the peer address (as the proxy holds it, ASCII) is inside one of ``networks``."""
    if not networks:
        return False
    try:
        address = ipaddress.ip_address(peer.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in network for network in _compiled(networks))


__all__ = ["is_trusted", "parse_networks"]
