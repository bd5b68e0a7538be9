"""Crash consistency of networking: a berthd and shim killed mid-flight find their leftovers on
restart, re-adopt running containers (resolver, published ports), keep IPAM, and take every
host object away on a clean shutdown. A daemon of its own (it is killed)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.daemon import Berthd, docker

pytestmark = pytest.mark.acceptance


@pytest.fixture
def daemon(session_root: Path, session_token: str) -> Iterator[Berthd]:
    d = Berthd(root=session_root / "berthd-netcrash", cgroup_parent=f"berth-test-{session_token}-n")
    try:
        d.start()
        yield d
    finally:
        d.cleanup()
        assert d.net.links() == [], "network leftovers after cleanup"


def _ok(out: subprocess.CompletedProcess[str]) -> str:
    assert out.returncode == 0, out.stderr
    return out.stdout


def _wait_gone(pid: int) -> None:
    for _ in range(300):
        if not os.path.exists(f"/proc/{pid}"):
            return
        time.sleep(0.05)
    raise AssertionError(f"pid {pid} still there")


def test_kill_restart_reconcile_and_clean_shutdown(daemon: Berthd, image_tar: Path, cli_config: Path) -> None:
    def dkr(*args: str) -> subprocess.CompletedProcess[str]:
        return docker(daemon.host, *args, config_dir=cli_config)

    _ok(dkr("load", "-i", str(image_tar)))
    _ok(dkr("network", "create", "crashnet"))
    first = _ok(dkr("run", "-d", "--name", "survivor", "--network", "crashnet", "--network-alias", "keeper",
                    "busybox", "sleep", "600")).strip()
    web = _ok(dkr("run", "-d", "--name", "crashweb", "-p", "127.0.0.1::80", "busybox", "sh", "-c",
                  "mkdir -p /www && echo alive > /www/index.html && exec httpd -f -p 80 -h /www")).strip()
    port = json.loads(_ok(dkr("inspect", web)))[0]["NetworkSettings"]["Ports"]["80/tcp"][0]["HostPort"]
    survivor_ip = json.loads(_ok(dkr("inspect", first)))[0]["NetworkSettings"]["Networks"]["crashnet"]["IPAddress"]

    # A crash: berthd and the shim die at once; the supervisor and the containers live on.
    pids = daemon.service_pids()
    daemon.kill()
    os.kill(pids["shim"], signal.SIGKILL)
    _wait_gone(pids["shim"])
    # What a crash in the middle of a start or a removal leaves: a veth nobody owns and the
    # namespace pin of a container that no longer exists.
    stray_veth = daemon.net.veth_prefix + "dead"
    subprocess.run(["ip", "link", "add", stray_veth, "type", "veth", "peer", "name", stray_veth + "p"], check=True)
    stray_pin = daemon.exec_root / "shim" / "netns" / ("f" * 64)
    stray_pin.touch()
    subprocess.run(["unshare", "--net=" + str(stray_pin), "true"], check=True)
    assert stray_veth in daemon.net.links()

    daemon.start()
    assert stray_veth not in daemon.net.links()
    assert not stray_pin.exists()
    # Running containers were re-adopted: their names resolve, their ports still publish.
    out = _ok(dkr("run", "--rm", "--network", "crashnet", "busybox", "sh", "-c",
                  "ping -c 1 -W 5 keeper >/dev/null && echo found; ip -4 addr show eth0"))
    assert out.startswith("found\n")
    assert f"inet {survivor_ip}/" not in out  # IPAM survived: the survivor's address is still taken
    for _ in range(100):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as reply:
                assert reply.read() == b"alive\n"
            break
        except OSError:
            time.sleep(0.1)
    else:
        raise AssertionError("published port lost across the restart")

    # A clean shutdown with nothing left running removes every host object Berth made.
    _ok(dkr("rm", "-f", first, web))
    assert daemon.stop() == 0
    assert daemon.net.links() == []
    assert not daemon.net.table_exists()
    netns_dir = daemon.exec_root / "shim" / "netns"
    assert not netns_dir.exists() or list(netns_dir.iterdir()) == []
