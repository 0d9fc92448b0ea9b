"""Membership: static peers, DNS, announcements, gossip, hysteresis — with a
fake probe standing in for the peers' answers (the cluster tests use real ones)."""

from __future__ import annotations

from typing import Any

import pytest

from service.settings import Settings
from sharding import HashRing, Member, Membership, MembershipSettings, parse_peers
from sharding.membership import PING_PATH, parse_dns
from storage_adapters import ConfigurationError

ME = Member("a", "http://10.0.0.1:8080")


class FakePeers:
    """Answers pings for the nodes marked alive, as ``nodeId`` of their URL."""

    def __init__(self, nodes: dict[str, str]) -> None:
        self.nodes = nodes  # url -> node id
        self.alive: set[str] = set(nodes)
        self.members: list[dict[str, Any]] = []
        self.seen: list[dict[str, str]] = []

    async def __call__(self, url: str, headers: dict[str, str]) -> dict[str, Any]:
        assert url.endswith(PING_PATH)
        base = url.removesuffix(PING_PATH)
        self.seen.append(headers)
        if base not in self.alive:
            raise ConnectionRefusedError("refused")
        return {"nodeId": self.nodes[base], "url": base, "weight": 1, "members": self.members}


def static(*ids: str) -> list[Member]:
    return [Member(i, f"http://10.0.0.{n}:8080") for n, i in enumerate(ids, 1)]


def fast(**overrides: Any) -> MembershipSettings:
    return MembershipSettings(**{"interval": 0.01, "rise": 2, "fall": 3, **overrides})


async def test_static_members_start_up_and_fall_after_three_failures() -> None:
    peers = static("a", "b", "c")
    fake = FakePeers({m.url: m.id for m in peers})
    membership = Membership(ME, static=peers, settings=fast(), probe=fake)
    assert len(membership.ring) == 3 and membership.clustered
    changes: list[tuple[int, int]] = []
    membership.on_change(lambda old, new: changes.append((len(old), len(new))))

    fake.alive.discard(peers[2].url)
    for _ in range(2):
        await membership.check_all()
    assert len(membership.ring) == 3  # two failures: not yet
    await membership.check_all()
    assert [m.id for m in membership.ring.members] == ["a", "b"]
    assert changes == [(3, 2)]
    assert not membership.settled()

    fake.alive.add(peers[2].url)
    await membership.check_all()
    assert len(membership.ring) == 2  # one success: not yet
    await membership.check_all()
    assert len(membership.ring) == 3
    assert changes == [(3, 2), (2, 3)]


async def test_a_flapping_peer_does_not_move_shards() -> None:
    peers = static("a", "b")
    fake = FakePeers({m.url: m.id for m in peers})
    membership = Membership(ME, static=peers, settings=fast(), probe=fake)
    ring = membership.ring
    for _ in range(10):  # fail, fail, answer, fail, fail, answer…
        for alive in (False, False, True):
            (fake.alive.add if alive else fake.alive.discard)(peers[1].url)
            await membership.check_all()
    assert membership.ring == ring


async def test_a_static_peer_answering_as_another_node_is_down() -> None:
    peers = static("a", "b")
    fake = FakePeers({peers[1].url: "impostor"})
    membership = Membership(ME, static=peers, settings=fast(), probe=fake)
    for _ in range(3):
        await membership.check_all()
    assert len(membership.ring) == 1
    (peer,) = membership.peers.values()
    assert "impostor" in (peer.last_error or "")


async def test_owned_shards_none_alone_else_the_rings_share() -> None:
    alone = Membership(ME)
    assert alone.owned_shards() is None and not alone.clustered
    assert alone.owns("anything")
    peers = static("a", "b")
    pair = Membership(ME, static=peers, probe=FakePeers({}))
    owned = pair.owned_shards()
    assert owned is not None and owned == pair.ring.shards_of("a")
    assert 0 < len(owned) < 1024


async def test_announcements_and_gossip_need_the_secret() -> None:
    open_membership = Membership(ME, static=static("a", "b"), probe=FakePeers({}))
    open_membership.announced("d", "http://10.0.0.4:8080")
    assert "http://10.0.0.4:8080" not in open_membership.peers
    assert "members" not in open_membership.ping_answer(trusted=False)

    fake = FakePeers({"http://10.0.0.2:8080": "b", "http://10.0.0.4:8080": "d"})
    fake.members = [{"id": "e", "url": "http://10.0.0.5:8080", "weight": 2}]
    membership = Membership(
        ME, static=static("a", "b"), secret="s3cret", settings=fast(), probe=fake
    )
    assert not membership.authorized(None) and not membership.authorized("wrong")
    assert membership.authorized("s3cret")
    membership.announced("d", "http://10.0.0.4:8080")
    membership.announced("a", "http://10.0.0.9:8080")  # itself: ignored
    assert membership.peers["http://10.0.0.4:8080"].up is False  # must pass checks first
    await membership.check_all()  # learns e from b's answer (gossip)
    assert membership.peers["http://10.0.0.5:8080"].source == "gossip"
    await membership.check_all()
    assert {m.id for m in membership.ring.members} == {"a", "b", "d"}  # e never answers
    assert all(h["x-aos-cluster-auth"] == "s3cret" for h in fake.seen)
    assert fake.seen[0]["x-aos-node"] == "a" and fake.seen[0]["x-aos-node-url"] == ME.url


async def test_forgets_discovered_members_down_too_long() -> None:
    fake = FakePeers({})
    membership = Membership(
        ME, static=static("a", "b"), secret="s", settings=fast(forget_after=0.0), probe=fake
    )
    membership.announced("d", "http://10.0.0.4:8080")
    await membership.check_all()
    assert "http://10.0.0.4:8080" not in membership.peers
    assert "http://10.0.0.2:8080" in membership.peers  # static members stay


async def test_dns_members_come_from_the_names_addresses() -> None:
    addresses = ["10.0.0.1", "10.0.0.2", "fd00::3"]

    async def resolver(host: str, port: int) -> list[str]:
        assert (host, port) == ("aos-headless.default.svc", 8080)
        return list(addresses)

    fake = FakePeers(
        {
            "http://10.0.0.1:8080": "a",  # this node, found in DNS too
            "http://10.0.0.2:8080": "pod-b",
            "http://[fd00::3]:8080": "pod-c",
        }
    )
    membership = Membership(
        ME,
        dns=("aos-headless.default.svc", 8080),
        settings=fast(),
        probe=fake,
        resolver=resolver,
    )
    await membership._discover()
    for _ in range(2):
        await membership.check_all()
    assert {m.id for m in membership.ring.members} == {"a", "pod-b", "pod-c"}
    addresses.remove("fd00::3")  # the pod left the service
    await membership._discover()
    await membership.check_all()
    assert {m.id for m in membership.ring.members} == {"a", "pod-b"}
    view = membership.view()
    assert view["dns"] == "aos-headless.default.svc:8080"
    assert sum(m["shards"] for m in view["members"]) == 1024


def test_peer_and_dns_syntax() -> None:
    assert parse_peers("a=http://h1:1, b=http://h2:2/") == [
        Member("a", "http://h1:1"),
        Member("b", "http://h2:2"),
    ]
    for bad in ("a", "a=", "=http://h:1", "a=ftp://h", "a=http://h:1/x", "a=http://h,a=http://g"):
        with pytest.raises(ValueError, match=r"id=|URL|twice|path"):
            parse_peers(bad)
    assert parse_dns("svc.ns:8080") == ("svc.ns", 8080)
    with pytest.raises(ValueError, match="host:port"):
        parse_dns("svc.ns")


def test_settings_check_the_cluster_configuration() -> None:
    env = {"AOS_NODE_ID": "a", "AOS_PEERS": "a=http://h1:1,b=http://h2:2"}
    settings = Settings.from_env(env)
    assert settings.advertised_url == "http://h1:1"
    assert [m.id for m in settings.peers] == ["a", "b"]
    with pytest.raises(ConfigurationError, match="does not list this node"):
        Settings.from_env({**env, "AOS_NODE_ID": "z"})
    with pytest.raises(ConfigurationError, match="AOS_PEERS"):
        Settings.from_env({**env, "AOS_PEERS": "a=nonsense"})
    with pytest.raises(ConfigurationError, match="AOS_FORWARD_TIMEOUT"):
        Settings.from_env({**env, "AOS_FORWARD_TIMEOUT": "30"})
    with pytest.raises(ConfigurationError, match="AOS_NODE_WEIGHT"):
        Settings.from_env({**env, "AOS_NODE_WEIGHT": "0"})
    alone = Settings.from_env({"AOS_HOST": "0.0.0.0", "AOS_PORT": "9000"})
    assert alone.advertised_url.endswith(":9000") and "0.0.0.0" not in alone.advertised_url


def test_a_ring_of_the_same_members_is_the_same_everywhere() -> None:
    members = static("a", "b", "c")
    assert HashRing(members) == HashRing(reversed(members))
    assert HashRing(members).digest != HashRing(members[:2]).digest


async def test_a_node_at_two_addresses_counts_once() -> None:
    async def resolver(host: str, port: int) -> list[str]:
        return ["10.0.0.2", "10.0.0.7"]  # pod-b's old address still answers as pod-b

    fake = FakePeers({"http://10.0.0.2:8080": "pod-b", "http://10.0.0.7:8080": "pod-b"})
    membership = Membership(ME, dns=("svc", 8080), settings=fast(), probe=fake, resolver=resolver)
    await membership._discover()
    for _ in range(2):
        await membership.check_all()
    assert [m.id for m in membership.ring.members] == ["a", "pod-b"]


async def test_a_peer_reporting_an_absurd_weight_is_down() -> None:
    class Heavy(FakePeers):
        async def __call__(self, url: str, headers: dict[str, str]) -> dict[str, Any]:
            return {**await super().__call__(url, headers), "weight": 1e12}

    peers = static("a", "b")
    membership = Membership(
        ME, static=peers, settings=fast(), probe=Heavy({m.url: m.id for m in peers})
    )
    for _ in range(3):
        await membership.check_all()
    assert len(membership.ring) == 1
    assert "weight" in (membership.peers[peers[1].url].last_error or "")
