"""Refusing webhook targets inside the service's own network (SSRF).

Every address a target resolves to is checked when the connection is made —
not when the URL is accepted — and the connection goes to the address that
was checked, so a name that resolves to a public address at submit time and
to an internal one later (DNS rebinding) is still refused.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Iterable, Sequence

__all__ = ["AddressGuard", "BlockedAddress", "blocked_reason"]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

#: what a webhook must not reach, with the name of each class
_BLOCKED: list[tuple[str, str]] = [
    ("0.0.0.0/8", "unspecified"),
    ("10.0.0.0/8", "private"),
    ("100.64.0.0/10", "carrier-grade NAT"),
    ("127.0.0.0/8", "loopback"),
    ("169.254.0.0/16", "link-local"),
    ("172.16.0.0/12", "private"),
    ("192.0.0.0/24", "reserved (IETF)"),
    ("192.0.2.0/24", "reserved (documentation)"),
    ("192.88.99.0/24", "reserved (6to4 relay)"),
    ("192.168.0.0/16", "private"),
    ("198.18.0.0/15", "reserved (benchmarking)"),
    ("198.51.100.0/24", "reserved (documentation)"),
    ("203.0.113.0/24", "reserved (documentation)"),
    ("224.0.0.0/4", "multicast"),
    ("240.0.0.0/4", "reserved"),
    ("::/128", "unspecified"),
    ("::1/128", "loopback"),
    ("64:ff9b:1::/48", "reserved (local NAT64)"),
    ("100::/64", "reserved (discard)"),
    ("2001::/23", "reserved (IETF)"),
    ("2001:db8::/32", "reserved (documentation)"),
    ("fc00::/7", "private (unique local)"),
    ("fe80::/10", "link-local"),
    ("fec0::/10", "site-local"),
    ("ff00::/8", "multicast"),
]
_NETWORKS = [(ipaddress.ip_network(net), name) for net, name in _BLOCKED]


class BlockedAddress(Exception):
    """The target resolves to an address webhooks may not reach."""


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address inside an IPv4-mapped, NAT64 or 6to4 IPv6 address."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address in ipaddress.ip_network("64:ff9b::/96"):
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def blocked_reason(address: IPAddress) -> str | None:
    """Why ``address`` is off limits, or ``None`` when it is a public unicast address."""
    if isinstance(address, ipaddress.IPv6Address):
        inner = _embedded_ipv4(address)
        if inner is not None:
            reason = blocked_reason(inner)
            return f"{reason} (inside {address})" if reason else None
    for network, name in _NETWORKS:
        if address.version == network.version and address in network:
            return name
    if not address.is_global:
        return "not globally routable"
    return None


class AddressGuard:
    """Resolves a host and returns the addresses that may be connected to.

    ``allow`` lists networks that are reachable even though they are
    blocked (for example a webhook receiver on the same private network).
    """

    def __init__(self, allow: Iterable[str] = ()) -> None:
        self.allow = [ipaddress.ip_network(net, strict=False) for net in allow]

    def _allowed(self, address: IPAddress) -> bool:
        return any(address.version == n.version and address in n for n in self.allow)

    def check(self, address: IPAddress, host: str) -> None:
        if self._allowed(address):
            return
        reason = blocked_reason(address)
        if reason is not None:
            raise BlockedAddress(f"{host} resolves to {address}, which is {reason}")

    async def resolve(self, host: str, port: int) -> Sequence[str]:
        """Addresses of ``host`` to connect to; :class:`BlockedAddress` if any is blocked.

        One blocked address refuses the whole name: a name that mixes public
        and internal addresses is an attack, not a mistake.
        """
        try:
            literal = ipaddress.ip_address(host.strip("[]"))
        except ValueError:
            literal = None
        if literal is not None:
            self.check(literal, host)
            return [str(literal)]
        infos = await asyncio.get_running_loop().getaddrinfo(
            host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
        )
        addresses: list[str] = []
        for _family, _type, _proto, _name, sockaddr in infos:
            address = ipaddress.ip_address(sockaddr[0])
            self.check(address, host)
            if str(address) not in addresses:
                addresses.append(str(address))
        if not addresses:
            raise OSError(f"{host} does not resolve")
        return addresses
