"""IPAM and subnet choice: real Redis, real route tables (of a private network namespace)."""

from __future__ import annotations

import asyncio
import ipaddress
import os
import secrets
import subprocess
import threading
from pathlib import Path

import redis.asyncio as aioredis

from apiserver.networks import ipam
from apiserver.networks.store import NetworkRecord, NetworkStore
from common import linux
from common.keys import Keys
from protos.errors import Conflict


def _in_private_netns(setup: list[list[str]]) -> list[ipaddress.IPv4Network]:
    """Run ``setup`` (ip commands) in a fresh network namespace of a thread, then read that
    namespace's routes the way berthd does."""
    result: list[ipaddress.IPv4Network] = []

    def work() -> None:
        linux.unshare(linux.CLONE_NEWNET)  # this thread only; it ends right after
        for cmd in setup:
            subprocess.run(cmd, check=True, capture_output=True)  # children inherit the thread's netns
        result.extend(ipam.host_networks(resolv_conf=Path("/nonexistent")))

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    return result


def test_chooser_skips_a_conflicting_host_route() -> None:
    routes = _in_private_netns([["ip", "link", "add", "fake0", "type", "veth", "peer", "name", "fake1"],
                                ["ip", "addr", "add", "172.18.5.1/16", "dev", "fake0"],
                                ["ip", "link", "set", "fake0", "up"], ["ip", "link", "set", "fake1", "up"],
                                ["ip", "route", "add", "172.19.0.0/16", "dev", "fake0"]])
    assert ipaddress.IPv4Network("172.18.0.0/16") in routes
    assert ipaddress.IPv4Network("172.19.0.0/16") in routes
    assert ipam.DOCKER0 in routes  # docker0's range is never chosen, dockerd running or not
    chosen = ipam.choose_subnet(ipam.DEFAULT_POOLS, routes)
    assert chosen == ipaddress.IPv4Network("172.20.0.0/16")


def test_chooser_on_the_real_route_table() -> None:
    routes = ipam.host_networks()
    chosen = ipam.choose_subnet(ipam.DEFAULT_POOLS, routes)
    assert chosen is not None
    assert not any(chosen.overlaps(r) for r in routes if r.prefixlen)
    assert not chosen.overlaps(ipaddress.IPv4Network("172.17.0.0/16"))


def test_pool_parsing_and_exhaustion() -> None:
    pool = ipam.Pool.parse("base=10.9.0.0/23,size=24")
    assert list(pool.subnets()) == [ipaddress.IPv4Network("10.9.0.0/24"), ipaddress.IPv4Network("10.9.1.0/24")]
    assert ipam.choose_subnet([pool], [ipaddress.IPv4Network("10.9.0.0/23")]) is None


def _record(name: str, subnet: str) -> NetworkRecord:
    id = secrets.token_hex(32)
    return NetworkRecord(id=id, config={"Name": name, "Id": id, "Driver": "bridge",
                                        "IPAM": {"Config": [{"Subnet": subnet}]}})


async def test_two_allocators_never_hand_out_one_address(redis_process: Path, keys: Keys,
                                                         redis_client: aioredis.Redis) -> None:
    """Two API servers (two stores, two connection pools) allocating at once on a /26."""
    a = NetworkStore(aioredis.Redis(unix_socket_path=str(redis_process)), keys)
    b = NetworkStore(aioredis.Redis(unix_socket_path=str(redis_process)), keys)
    record = await a.create(_record("pool", "10.77.0.0/26"), created_ns=1,
                            gateway_of=lambda r: int(ipaddress.IPv4Address("10.77.0.1")))
    first, last = ipam.host_range(ipaddress.IPv4Network("10.77.0.0/26"), None)

    async def attach(store: NetworkStore, n: int) -> int | None:
        try:
            return await store.attach(record.id, f"c{n}", {"Name": f"c{n}"}, requested=None, first=first, last=last)
        except Conflict:
            return None

    results = await asyncio.gather(*(attach(a if n % 2 else b, n) for n in range(70)))
    got = [r for r in results if r is not None]
    assert len(got) == 61  # 62 hosts in a /26, one of them the gateway
    assert len(set(got)) == len(got)
    assert int(ipaddress.IPv4Address("10.77.0.1")) not in got
    # Released on removal, and not handed out again at once (round robin, as Docker's IPAM).
    # Which nine attaches lost the race is up to the scheduler; free one that won.
    winner = f"c{next(n for n, r in enumerate(results) if r is not None)}"
    freed = await a.endpoint(record.id, winner)
    assert freed is not None
    assert await b.detach(record.id, winner)
    again = await a.attach(record.id, "late", {"Name": "late"}, requested=None, first=first, last=last)
    assert again == int(freed["Address"])  # the only free one
    for store in (a, b):
        await store._redis.aclose()


async def test_names_and_subnets_are_unique_across_servers(redis_process: Path, keys: Keys,
                                                           redis_client: aioredis.Redis) -> None:
    a = NetworkStore(aioredis.Redis(unix_socket_path=str(redis_process)), keys)
    b = NetworkStore(aioredis.Redis(unix_socket_path=str(redis_process)), keys)

    def choose(rec: NetworkRecord, used: dict[str, str]) -> NetworkRecord:
        subnet = ipam.choose_subnet([ipam.Pool.parse("base=10.78.0.0/16,size=24")],
                                    [ipaddress.IPv4Network(s) for s in used])
        rec.config["IPAM"]["Config"] = [{"Subnet": str(subnet)}]
        return rec

    async def create(store: NetworkStore, name: str) -> NetworkRecord | None:
        try:
            return await store.create(_record(name, ""), created_ns=1, choose=choose)
        except Conflict:
            return None

    made = await asyncio.gather(*(create(a if n % 2 else b, f"net{n % 5}") for n in range(20)))
    records = [r for r in made if r is not None]
    assert sorted(r.name for r in records) == [f"net{i}" for i in range(5)]
    assert len({r.subnet for r in records}) == 5
    for store in (a, b):
        await store._redis.aclose()


def test_thread_netns_does_not_leak() -> None:
    before = os.readlink("/proc/self/ns/net")
    _in_private_netns([])
    assert os.readlink("/proc/self/ns/net") == before
