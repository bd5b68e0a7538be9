"""A cluster on one machine: one Redis, two host nodes (standalone shim + snapshotter each) and two
API servers, driven by the real docker CLI. Containers spread over the nodes, an image loaded on
one node is copied to the other when a container lands there, either API server reaches every
container, names are unique cluster-wide, and a node that is down gets nothing new.

Containers use ``--network none``: the two nodes share this machine, so they must not both wire
the cluster's bridge (on real hosts each would have its own)."""

from __future__ import annotations

import json
import secrets
import subprocess
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from common.keys import Keys
from tests.support.cluster import Cluster
from tests.support.daemon import Berthd, docker


@pytest.fixture(scope="module")
def cluster(session_root: Path, image_tar: Path, cli_config: Path) -> Iterator[Cluster]:
    c = Cluster(root=session_root / "cluster", token=secrets.token_hex(2))
    try:
        c.start(nodes=2, apis=2)
        out = docker(c.apis[0].host, "load", "-i", str(image_tar), config_dir=cli_config)
        assert out.returncode == 0, out.stderr
        yield c
    finally:
        c.cleanup()


def run(cli_config: Path, api: Berthd, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    out = docker(api.host, *args, config_dir=cli_config)
    if check:
        assert out.returncode == 0, f"docker {' '.join(args)}: {out.stderr}"
    return out


def node_of(cli_config: Path, api: Berthd, ref: str) -> str:
    node = json.loads(run(cli_config, api, "inspect", "-f", "{{json .Node}}", ref).stdout)
    return str(node["ID"])


def image_nodes(cluster: Cluster, image_id: str) -> set[str]:
    client = cluster.redis()
    try:
        return {m.decode() for m in client.smembers(Keys(cluster.namespace).image_nodes(image_id))}
    finally:
        client.close()


def test_containers_spread_over_nodes_and_the_image_follows(cluster: Cluster, cli_config: Path) -> None:
    a, b = cluster.apis
    image_id = run(cli_config, a, "image", "inspect", "-f", "{{.Id}}", "busybox").stdout.strip()
    assert len(image_nodes(cluster, image_id)) == 1  # loaded on one node
    ids = []
    for i in range(4):
        out = run(cli_config, cluster.apis[i % 2], "run", "-d", "--network", "none", "--name", f"spread{i}",
                  "busybox", "sh", "-c", f"echo from-{i}; exec sleep 300")
        ids.append(out.stdout.strip())
    placed = Counter(node_of(cli_config, a, cid) for cid in ids)
    assert placed == {n.node_id: 2 for n in cluster.nodes}
    assert image_nodes(cluster, image_id) == {n.node_id for n in cluster.nodes}

    for i, cid in enumerate(ids):  # each through the API server that did not create it
        api = cluster.apis[(i + 1) % 2]
        assert run(cli_config, api, "exec", cid, "hostname").stdout.strip() == cid[:12]
        assert run(cli_config, api, "logs", cid).stdout == f"from-{i}\n"

    for api in cluster.apis:
        listed = set(run(cli_config, api, "ps", "--format", "{{.Names}}").stdout.split())
        assert {f"spread{i}" for i in range(4)} <= listed

    # A change made through one API server shows at once in the other's (cached) list.
    run(cli_config, a, "rename", "spread0", "spread0-renamed")
    run(cli_config, b, "stop", "-t", "1", "spread1")
    for api in cluster.apis:
        states = dict(line.split() for line in run(cli_config, api, "ps", "-a", "--format",
                                                   "{{.Names}} {{.State}}").stdout.splitlines())
        assert states["spread0-renamed"] == "running"
        assert states["spread1"] == "exited"
        assert "spread0" not in states
    run(cli_config, b, "rm", "-f", *ids)
    assert run(cli_config, a, "ps", "-aq").stdout.split() == []


def test_a_name_is_taken_once_across_api_servers(cluster: Cluster, cli_config: Path) -> None:
    results: list[subprocess.CompletedProcess[str]] = []

    def create(api: Berthd) -> None:
        results.append(run(cli_config, api, "create", "--network", "none", "--name", "twin", "busybox", "true",
                           check=False))

    threads = [threading.Thread(target=create, args=(api,)) for api in cluster.apis for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(r.returncode for r in results) == [0, 1, 1, 1]
    for failed in (r for r in results if r.returncode):
        assert 'The container name "/twin" is already in use' in failed.stderr
    run(cli_config, cluster.apis[1], "rm", "twin")


def test_a_node_that_is_down_gets_no_new_containers(cluster: Cluster, cli_config: Path) -> None:
    a = cluster.apis[0]
    down, up = cluster.nodes[1], cluster.nodes[0]
    down.stop()
    client = cluster.redis()
    try:  # as if its heartbeats had lapsed (they live 15 s)
        keys = Keys(cluster.namespace)
        client.delete(keys.heartbeat(down.node_id, "shim"), keys.heartbeat(down.node_id, "snapshotter"))
    finally:
        client.close()
    ids = [run(cli_config, a, "create", "--network", "none", "busybox", "true").stdout.strip() for _ in range(3)]
    assert {node_of(cli_config, a, cid) for cid in ids} == {up.node_id}
    run(cli_config, a, "rm", *ids)
