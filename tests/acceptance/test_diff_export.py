"""`docker diff` and `docker export` through the real CLI and docker-py."""

from __future__ import annotations

import io
import secrets
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path

import docker as docker_sdk
import pytest

from tests.acceptance.conftest import Docker
from tests.support.daemon import Berthd

pytestmark = pytest.mark.acceptance


@pytest.fixture
def ctr(dkr: Docker, loaded: str) -> Iterator[str]:
    name = f"diff-{secrets.token_hex(3)}"
    out = dkr("run", "--name", name, "busybox", "sh", "-c",
              "echo new > /new; echo more >> /etc/passwd; rm /etc/group; rm -r /usr/sbin; mkdir /usr/sbin; "
              "touch /usr/sbin/mine; mkdir -p /tmp/deep/er")
    assert out.returncode == 0, out.stderr
    yield name
    dkr("rm", "-f", name)


def test_diff_lists_adds_changes_and_deletes(dkr: Docker, ctr: str) -> None:
    out = dkr("diff", ctr)
    assert out.returncode == 0, out.stderr
    # moby's order: a walk with sorted names, a directory before its contents; an opaque
    # directory (removed and made again) shows as deleted, then its new contents as added.
    assert out.stdout.splitlines() == [
        "C /etc", "D /etc/group", "C /etc/passwd", "A /new", "C /tmp", "A /tmp/deep", "A /tmp/deep/er",
        "C /usr", "D /usr/sbin", "A /usr/sbin/mine"]


def test_diff_of_a_fresh_and_a_running_container(dkr: Docker, loaded: str) -> None:
    name = f"diff-fresh-{secrets.token_hex(3)}"
    assert dkr("run", "-d", "--name", name, "busybox", "sleep", "300").returncode == 0
    try:
        # The runtime's mount points (/etc/hosts, /etc/resolv.conf…) are no change of the container.
        assert dkr("diff", name).stdout == ""
        assert dkr("exec", name, "touch", "/live").returncode == 0
        assert dkr("diff", name).stdout == "A /live\n"
    finally:
        dkr("rm", "-f", name)
    out = dkr("diff", "no-such-container-berth")
    assert out.returncode == 1 and "No such container: no-such-container-berth" in out.stderr


def test_docker_py_diff(client: docker_sdk.DockerClient, ctr: str) -> None:
    changes = client.containers.get(ctr).diff()
    assert {"Path": "/new", "Kind": 1} in changes and {"Path": "/etc/group", "Kind": 2} in changes
    assert {"Path": "/etc/passwd", "Kind": 0} in changes


def test_export_is_the_whole_filesystem(berthd: Berthd, cli_config: Path, ctr: str, tmp_path: Path) -> None:
    target = tmp_path / "export.tar"
    env = {"DOCKER_HOST": berthd.host, "DOCKER_CONFIG": str(cli_config), "PATH": "/usr/bin:/bin"}
    done = subprocess.run(["docker", "export", "-o", str(target), ctr], env=env, capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr
    with tarfile.open(target) as tar:
        members = {m.name: m for m in tar}
        assert tar.extractfile(members["new"]).read() == b"new\n"  # type: ignore[union-attr]
        assert tar.extractfile(members["etc/passwd"]).read().endswith(b"more\n")  # type: ignore[union-attr]
        assert "etc/group" not in members and "usr/sbin/mine" in members
        assert members["bin/busybox"].isreg() and (members["bin/sh"].islnk() or members["bin/sh"].issym())
        assert all(not name.startswith(("/", "./")) for name in members)
        assert all(m.uname == "" and m.gname == "" for m in members.values())
    stream = subprocess.run(["docker", "export", ctr], env=env, capture_output=True, timeout=120)
    assert stream.returncode == 0 and stream.stdout == target.read_bytes()  # the same bytes to stdout


def test_docker_py_export(client: docker_sdk.DockerClient, ctr: str) -> None:
    data = b"".join(client.containers.get(ctr).export())
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        assert tar.extractfile("new").read() == b"new\n"  # type: ignore[union-attr]
