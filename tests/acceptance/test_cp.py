"""`docker cp` both ways, of stopped and running containers, through the real CLI and docker-py.

A stopped container's files are reached through its snapshot (snapshotter), a running one's from
inside its mount namespace (shim): every case runs against both. The hostile cases are the
CVE-2018-15664 class: a `..` path, a symlink in the container pointing at a host path, and a
container racing to swap a directory for a symlink to `/` while a copy runs. Each asserts that
the host's filesystem did not change.
"""

from __future__ import annotations

import base64
import io
import json
import os
import secrets
import tarfile
from collections.abc import Iterator
from pathlib import Path

import docker as docker_sdk
import pytest

from tests.acceptance.conftest import Docker

pytestmark = pytest.mark.acceptance

# A directory of the host's that a link in the container names (it must never be written).
HOST_SENTINEL = Path("/tmp/berth-cp-host-sentinel")
SETUP = ("mkdir -p /data/sub && echo payload > /data/f && echo deep > /data/sub/g && chmod 640 /data/f"
         f" && ln -s /etc /data/etc-link && ln -s /data/f /data/f-link && ln -s {HOST_SENTINEL} /data/host-link"
         " && mkdir -p /ro")


@pytest.fixture(params=["stopped", "running"])
def ctr(request: pytest.FixtureRequest, dkr: Docker, loaded: str) -> Iterator[str]:
    """A container with files in /data, stopped (its snapshot) or running (its namespace)."""
    name = f"cp-{request.param}-{secrets.token_hex(3)}"
    script = SETUP + (" && sleep 300" if request.param == "running" else "")
    out = dkr("run", *(["-d"] if request.param == "running" else []), "--name", name, "busybox", "sh", "-c",
              script)
    assert out.returncode == 0, out.stderr
    if request.param == "running":
        for _ in range(200):  # the setup runs in the container: wait until its files exist
            if dkr("exec", name, "test", "-e", "/ro").returncode == 0:
                break
    try:
        yield name
    finally:
        dkr("rm", "-f", name)


@pytest.fixture
def host_dir(tmp_path: Path) -> Path:
    return tmp_path


@pytest.fixture
def sentinel() -> Iterator[Path]:
    """HOST_SENTINEL, empty; checked empty afterwards (removed if this test made it)."""
    made = not HOST_SENTINEL.exists()
    HOST_SENTINEL.mkdir(exist_ok=True)
    (HOST_SENTINEL / "host-only").write_text("host\n")
    before = set(os.listdir(HOST_SENTINEL))
    yield HOST_SENTINEL
    assert set(os.listdir(HOST_SENTINEL)) == before, "a copy wrote through a symlink onto the host"
    if made:
        (HOST_SENTINEL / "host-only").unlink()
        HOST_SENTINEL.rmdir()


def test_copy_out_file_and_directory(dkr: Docker, ctr: str, host_dir: Path) -> None:
    out = dkr("cp", f"{ctr}:/data/f", str(host_dir / "f"))
    assert out.returncode == 0, out.stderr
    assert (host_dir / "f").read_text() == "payload\n"
    out = dkr("cp", f"{ctr}:/data", str(host_dir / "copy"))
    assert out.returncode == 0, out.stderr
    assert sorted(os.listdir(host_dir / "copy")) == ["etc-link", "f", "f-link", "host-link", "sub"]
    assert (host_dir / "copy" / "sub" / "g").read_text() == "deep\n"
    assert os.readlink(host_dir / "copy" / "etc-link") == "/etc"  # the link itself, not the host's /etc


def test_copy_out_the_whole_root(dkr: Docker, ctr: str, host_dir: Path) -> None:
    out = dkr("cp", f"{ctr}:/.", str(host_dir / "root"))  # "/." is how Docker's docs copy everything
    assert out.returncode == 0, out.stderr
    assert {"bin", "data", "etc", "proc"} <= set(os.listdir(host_dir / "root"))
    assert (host_dir / "root" / "data" / "sub" / "g").read_text() == "deep\n"
    assert os.listdir(host_dir / "root" / "proc") == []  # kernel filesystems are no content


def test_copy_out_follows_links_with_L(dkr: Docker, ctr: str, host_dir: Path) -> None:
    out = dkr("cp", "-L", f"{ctr}:/data/f-link", str(host_dir / "followed"))
    assert out.returncode == 0, out.stderr
    assert (host_dir / "followed").read_text() == "payload\n"
    out = dkr("cp", "-L", f"{ctr}:/data/etc-link", str(host_dir / "etc"))
    assert out.returncode == 0, out.stderr
    # The container's /etc (busybox's passwd), never the host's.
    assert (host_dir / "etc" / "passwd").read_text() != Path("/etc/passwd").read_text()
    assert "root:x:0:0" in (host_dir / "etc" / "passwd").read_text()


def test_copy_in_and_read_back(dkr: Docker, ctr: str, host_dir: Path) -> None:
    (host_dir / "in.txt").write_text("incoming\n")
    (host_dir / "tree" / "a").mkdir(parents=True)
    (host_dir / "tree" / "a" / "b").write_text("nested\n")
    assert dkr("cp", str(host_dir / "in.txt"), f"{ctr}:/data/").returncode == 0
    assert dkr("cp", str(host_dir / "in.txt"), f"{ctr}:/data/renamed.txt").returncode == 0
    out = dkr("cp", str(host_dir / "tree"), f"{ctr}:/data/tree")
    assert out.returncode == 0, out.stderr
    out = dkr("cp", f"{ctr}:/data", str(host_dir / "back"))
    assert out.returncode == 0, out.stderr
    assert (host_dir / "back" / "in.txt").read_text() == "incoming\n"
    assert (host_dir / "back" / "renamed.txt").read_text() == "incoming\n"
    assert (host_dir / "back" / "tree" / "a" / "b").read_text() == "nested\n"


def test_missing_path_is_dockers_404(dkr: Docker, ctr: str, host_dir: Path) -> None:
    out = dkr("cp", f"{ctr}:/no/such/file", str(host_dir / "x"))
    assert out.returncode == 1
    assert out.stderr.strip() == f"Error response from daemon: Could not find the file /no/such/file in container {ctr}"
    (host_dir / "in.txt").write_text("x")
    out = dkr("cp", str(host_dir / "in.txt"), f"{ctr}:/no/such/dir/")
    assert out.returncode == 1 and out.stderr.endswith("no such directory\n")  # the CLI's words on the 404


def test_dotdot_stays_inside(dkr: Docker, ctr: str, host_dir: Path) -> None:
    name = f"berth-dotdot-{secrets.token_hex(3)}"
    (host_dir / name).write_text("contained\n")
    out = dkr("cp", str(host_dir / name), f"{ctr}:/../../../../../tmp/")
    assert out.returncode == 0, out.stderr
    assert not Path("/tmp", name).exists()
    out = dkr("cp", f"{ctr}:/../../../../tmp/{name}", str(host_dir / "back"))
    assert out.returncode == 0, out.stderr
    assert (host_dir / "back").read_text() == "contained\n"
    # The host's /etc/hostname is not what comes out of ../../etc/hostname.
    out = dkr("cp", f"{ctr}:/../../../etc/passwd", str(host_dir / "passwd"))
    assert out.returncode == 0, out.stderr
    assert (host_dir / "passwd").read_text() != Path("/etc/passwd").read_text()


def test_symlink_to_a_host_path_resolves_inside(dkr: Docker, ctr: str, host_dir: Path, sentinel: Path) -> None:
    (host_dir / "evil").write_text("pwned\n")
    # /data/host-link names the host's sentinel directory, which does not exist in the container.
    out = dkr("cp", str(host_dir / "evil"), f"{ctr}:/data/host-link/")
    assert out.returncode == 1
    out = dkr("cp", str(host_dir / "evil"), f"{ctr}:/data/host-link/evil")
    assert out.returncode == 1
    out = dkr("cp", f"{ctr}:/data/host-link/host-only", str(host_dir / "stolen"))
    assert out.returncode == 1 and "Could not find the file" in out.stderr
    assert not (host_dir / "stolen").exists()
    out = dkr("cp", "-L", f"{ctr}:/data/host-link", str(host_dir / "stolen-dir"))
    assert out.returncode == 1 and not (host_dir / "stolen-dir").exists()


def test_copy_into_a_symlinked_directory_lands_in_the_container(dkr: Docker, ctr: str, host_dir: Path) -> None:
    name = f"berth-link-{secrets.token_hex(3)}"
    (host_dir / name).write_text("through the link\n")
    out = dkr("cp", str(host_dir / name), f"{ctr}:/data/etc-link/")  # /data/etc-link -> /etc
    assert out.returncode == 0, out.stderr
    assert not Path("/etc", name).exists()
    out = dkr("cp", f"{ctr}:/etc/{name}", str(host_dir / "back"))
    assert out.returncode == 0, out.stderr
    assert (host_dir / "back").read_text() == "through the link\n"


def test_stat_header_and_errors_over_the_api(client: docker_sdk.DockerClient, ctr: str) -> None:
    container = client.containers.get(ctr)
    stat = container.get_archive("/data/f")[1]
    assert stat["name"] == "f" and stat["size"] == 8 and stat["mode"] == 0o640 and stat["linkTarget"] == ""
    directory = client.api.get_archive(ctr, "/data")[1]
    assert directory["mode"] == (1 << 31) | 0o755
    link = client.api.get_archive(ctr, "/data/etc-link")[1]
    assert link["mode"] & (1 << 27) and link["linkTarget"] == "/etc"
    # HEAD straight, to see the header's raw form: base64 of Go's JSON field names.
    resp = client.api.head(client.api._url("/containers/{0}/archive", ctr), params={"path": "/data/f"})
    raw = json.loads(base64.b64decode(resp.headers["X-Docker-Container-Path-Stat"]))
    assert list(raw) == ["name", "size", "mode", "mtime", "linkTarget"]
    with pytest.raises(docker_sdk.errors.NotFound, match=f"Could not find the file /nope in container {container.id}"):
        container.get_archive("/nope")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("file")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    with pytest.raises(docker_sdk.errors.APIError, match="extraction point is not a directory"):
        container.put_archive("/data/f", buf.getvalue())
    with pytest.raises(docker_sdk.errors.APIError, match="path cannot be empty"):
        client.api.put_archive(ctr, "", buf.getvalue())


def test_put_archive_compressed_and_owned(client: docker_sdk.DockerClient, ctr: str, dkr: Docker,
                                          host_dir: Path) -> None:
    import gzip

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("owned")
        info.size, info.uid, info.gid, info.mode = 5, 1234, 4321, 0o600
        tar.addfile(info, io.BytesIO(b"owned"))
        info = tarfile.TarInfo(".wh.plain")  # not a whiteout outside of image layers
        info.size = 2
        tar.addfile(info, io.BytesIO(b"wh"))
    assert client.api.put_archive(ctr, "/data", gzip.compress(buf.getvalue()))
    stream, _ = client.api.get_archive(ctr, "/data/owned")
    with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as tar:
        member = tar.getmember("owned")
        assert (member.uid, member.gid, member.mode) == (1234, 4321, 0o600)
        assert tar.extractfile(member).read() == b"owned"  # type: ignore[union-attr]
    out = dkr("cp", f"{ctr}:/data/.wh.plain", str(host_dir / "wh"))
    assert out.returncode == 0 and (host_dir / "wh").read_text() == "wh"


def test_copy_uid_gid_takes_the_containers_user(dkr: Docker, client: docker_sdk.DockerClient,
                                                  host_dir: Path) -> None:
    name = f"cp-owner-{secrets.token_hex(3)}"
    assert dkr("create", "--name", name, "-u", "nobody", "busybox", "true").returncode == 0
    try:
        (host_dir / "mine").write_text("x")
        os.chown(host_dir / "mine", 4242, 4242)
        assert dkr("cp", str(host_dir / "mine"), f"{name}:/tmp/kept").returncode == 0
        assert dkr("cp", "-a", str(host_dir / "mine"), f"{name}:/tmp/as-user").returncode == 0
        stream, _ = client.api.get_archive(name, "/tmp")
        with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as tar:
            owners = {m.name: (m.uid, m.gid) for m in tar}
        assert owners["tmp/kept"] == (4242, 4242)  # docker cp keeps the archive's owners
        assert owners["tmp/as-user"] == (65534, 65534)  # -a: busybox's nobody, from its /etc/passwd
    finally:
        dkr("rm", "-f", name)


def test_read_only_rootfs_and_volume_refuse_writes(dkr: Docker, loaded: str, host_dir: Path) -> None:
    name = f"cp-ro-{secrets.token_hex(3)}"
    volume = f"cp-rovol-{secrets.token_hex(3)}"
    assert dkr("create", "--name", name, "--read-only", "-v", f"{volume}:/vol:ro", "-v", f"{volume}2:/rw",
               "busybox", "true").returncode == 0
    try:
        (host_dir / "f").write_text("x")
        out = dkr("cp", str(host_dir / "f"), f"{name}:/tmp/")
        assert out.returncode == 1
        assert out.stderr.strip() == "Error response from daemon: container rootfs is marked read-only"
        out = dkr("cp", str(host_dir / "f"), f"{name}:/vol/")
        assert out.stderr.strip() == "Error response from daemon: mounted volume is marked read-only"
        assert dkr("cp", str(host_dir / "f"), f"{name}:/rw/").returncode == 0  # a writable volume is fine
    finally:
        dkr("rm", "-f", "-v", name)
        dkr("volume", "rm", volume, f"{volume}2")


def test_running_copy_sees_volumes_and_tmpfs(dkr: Docker, loaded: str, host_dir: Path) -> None:
    name = f"cp-vol-{secrets.token_hex(3)}"
    volume = f"cp-live-{secrets.token_hex(3)}"
    assert dkr("run", "-d", "--name", name, "-v", f"{volume}:/vol", "--tmpfs", "/scratch", "busybox",
               "sleep", "300").returncode == 0
    try:
        (host_dir / "v").write_text("into the volume\n")
        assert dkr("cp", str(host_dir / "v"), f"{name}:/vol/").returncode == 0
        assert dkr("cp", str(host_dir / "v"), f"{name}:/scratch/").returncode == 0
        out = dkr("exec", name, "cat", "/vol/v", "/scratch/v")
        assert out.stdout == "into the volume\n" * 2
        out = dkr("run", "--rm", "-v", f"{volume}:/again", "busybox", "cat", "/again/v")
        assert out.stdout == "into the volume\n"  # in the volume, not under it in the rootfs
    finally:
        dkr("rm", "-f", name)
        dkr("volume", "rm", volume)


def test_stopped_copy_reaches_volumes(dkr: Docker, loaded: str, host_dir: Path) -> None:
    """A stopped container with volumes is seen with them mounted (moby's openContainerFS)."""
    name = f"cp-stopvol-{secrets.token_hex(3)}"
    volume = f"cp-stopvol-{secrets.token_hex(3)}"
    assert dkr("create", "--name", name, "-v", f"{volume}:/vol", "-v", f"{host_dir}:/bound", "busybox",
               "true").returncode == 0
    try:
        (host_dir / "seed").write_text("from the bind\n")
        (host_dir / "v").mkdir()
        (host_dir / "v" / "f").write_text("into the volume\n")
        assert dkr("cp", str(host_dir / "v" / "f"), f"{name}:/vol/").returncode == 0
        out = dkr("cp", f"{name}:/bound/seed", str(host_dir / "back"))
        assert out.returncode == 0 and (host_dir / "back").read_text() == "from the bind\n"
        out = dkr("run", "--rm", "-v", f"{volume}:/again", "busybox", "cat", "/again/f")
        assert out.stdout == "into the volume\n"
    finally:
        dkr("rm", "-f", name)
        dkr("volume", "rm", volume)


def test_a_racing_container_cannot_redirect_a_copy(dkr: Docker, loaded: str, host_dir: Path) -> None:
    """CVE-2018-15664: the container swaps /w for a symlink to / as fast as it can while files
    are copied into /w; every copy lands inside the container or fails, never on the host."""
    name = f"cp-race-{secrets.token_hex(3)}"
    marker = f"berth-race-{secrets.token_hex(4)}"
    script = ("mkdir -p /w /real; while true; do mv /w /w.tmp && ln -s / /w && usleep 200 && rm /w && "
              "mv /w.tmp /w; mv /w /w.tmp && ln -s /real /w && usleep 200 && rm /w && mv /w.tmp /w; done")
    assert dkr("run", "-d", "--name", name, "busybox", "sh", "-c", script).returncode == 0
    try:
        (host_dir / marker).write_text("raced\n")
        for _ in range(10):
            dkr("cp", str(host_dir / marker), f"{name}:/w/")
            dkr("cp", f"{name}:/w/{marker}", str(host_dir / "out"))
        assert not Path("/", marker).exists()
        assert not Path("/real", marker).exists()
    finally:
        dkr("rm", "-f", name)
