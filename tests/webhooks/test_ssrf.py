"""Every class of internal address is refused, by literal and by name."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from typing import Any

import pytest

from webhooks import AddressGuard, BlockedAddress, blocked_reason
from webhooks.client import HttpClient

BLOCKED = {
    "0.0.0.0": "unspecified",
    "10.1.2.3": "private",
    "100.64.0.1": "carrier-grade NAT",
    "127.0.0.1": "loopback",
    "127.255.255.254": "loopback",
    "169.254.169.254": "link-local",  # cloud metadata
    "172.16.0.1": "private",
    "172.31.255.255": "private",
    "192.0.0.8": "reserved",
    "192.0.2.1": "documentation",
    "192.168.1.1": "private",
    "198.18.0.1": "benchmarking",
    "198.51.100.7": "documentation",
    "203.0.113.9": "documentation",
    "224.0.0.1": "multicast",
    "239.255.255.250": "multicast",
    "240.0.0.1": "reserved",
    "255.255.255.255": "reserved",
    "::": "unspecified",
    "::1": "loopback",
    "fe80::1": "link-local",
    "fc00::1": "unique local",
    "fd12:3456::1": "unique local",
    "fec0::1": "site-local",
    "ff02::1": "multicast",
    "2001:db8::1": "documentation",
    "::ffff:127.0.0.1": "loopback",  # IPv4-mapped
    "::ffff:10.0.0.1": "private",
    "64:ff9b::a9fe:a9fe": "link-local",  # NAT64 of 169.254.169.254
    "2002:7f00:1::": "loopback",  # 6to4 of 127.0.0.1
    "2001::1": "IETF",  # Teredo
    "100::1": "discard",
}
PUBLIC = ["8.8.8.8", "1.1.1.1", "93.184.216.34", "2606:4700:4700::1111", "2a00:1450:4001::200e"]


@pytest.mark.parametrize(("address", "kind"), BLOCKED.items())
def test_blocked_addresses(address: str, kind: str) -> None:
    reason = blocked_reason(ipaddress.ip_address(address))
    assert reason is not None and kind in reason


@pytest.mark.parametrize("address", PUBLIC)
def test_public_addresses_pass(address: str) -> None:
    assert blocked_reason(ipaddress.ip_address(address)) is None


async def test_literals_and_names_are_refused_before_connecting() -> None:
    guard = AddressGuard()
    for host in ["127.0.0.1", "[::1]", "10.0.0.7", "localhost"]:
        with pytest.raises(BlockedAddress):
            await guard.resolve(host, 80)


async def test_allow_list_opens_named_networks_only() -> None:
    guard = AddressGuard(["127.0.0.0/8"])
    assert await guard.resolve("127.0.0.1", 80) == ["127.0.0.1"]
    with pytest.raises(BlockedAddress):
        await guard.resolve("10.0.0.1", 80)
    with pytest.raises(BlockedAddress):
        await guard.resolve("::1", 80)


async def test_a_name_resolving_to_a_blocked_address_is_refused_at_connect_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """DNS rebinding: public when the URL was accepted, internal when connecting."""
    answers = iter([["93.184.216.34"], ["169.254.169.254"]])
    loop = asyncio.get_running_loop()

    async def getaddrinfo(host: str, port: int, **_: Any) -> list[Any]:
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (ip, port)) for ip in next(answers)]

    monkeypatch.setattr(loop, "getaddrinfo", getaddrinfo)
    guard = AddressGuard()
    assert await guard.resolve("rebind.example", 80) == ["93.184.216.34"]
    client = HttpClient(guard, timeout=2)
    with pytest.raises(BlockedAddress, match=r"169\.254\.169\.254.*link-local"):
        await client.post("http://rebind.example/hook", {}, b"{}")


async def test_a_name_mixing_public_and_internal_addresses_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    loop = asyncio.get_running_loop()

    async def getaddrinfo(host: str, port: int, **_: Any) -> list[Any]:
        return [
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", (ip, port))
            for ip in ("93.184.216.34", "10.0.0.5")
        ]

    monkeypatch.setattr(loop, "getaddrinfo", getaddrinfo)
    with pytest.raises(BlockedAddress, match=r"10\.0\.0\.5"):
        await AddressGuard().resolve("mixed.example", 443)
