"""Volumes, binds and tmpfs mounts through the real CLI and docker-py: `docker volume …`, `-v`,
`--mount`, `--tmpfs`, `--volumes-from`, the image's VOLUME with its content copied up, and
Docker's errors for bad specs (each checked to change nothing).
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import docker as docker_sdk
import pytest

from tests.acceptance.conftest import Docker

pytestmark = pytest.mark.acceptance


def _name(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(3)}"


@pytest.fixture
def cleanup(dkr: Docker) -> Iterator[dict[str, list[str]]]:
    """Containers and volumes a test registers here are removed afterwards, even on failure."""
    made: dict[str, list[str]] = {"containers": [], "volumes": [], "images": []}
    yield made
    for c in made["containers"]:
        dkr("rm", "-f", "-v", c)
    for v in made["volumes"]:
        dkr("volume", "rm", "-f", v)
    for i in made["images"]:
        dkr("rmi", "-f", i)


def _volumes(dkr: Docker) -> set[str]:
    out = dkr("volume", "ls", "-q")
    assert out.returncode == 0, out.stderr
    return set(out.stdout.split())


def test_volume_lifecycle_and_shapes(dkr: Docker, loaded: str, cleanup: dict[str, list[str]]) -> None:
    vol = _name("vol")
    cleanup["volumes"].append(vol)
    out = dkr("volume", "create", "--label", "team=berth", vol)
    assert out.returncode == 0 and out.stdout == f"{vol}\n"
    assert dkr("volume", "create", vol).stdout == f"{vol}\n"  # exists: returned as it is
    doc = json.loads(dkr("volume", "inspect", vol).stdout)[0]
    assert set(doc) == {"CreatedAt", "Driver", "Labels", "Mountpoint", "Name", "Options", "Scope"}
    assert (doc["Name"], doc["Driver"], doc["Scope"], doc["Labels"]) == (vol, "local", "local", {"team": "berth"})
    assert doc["Mountpoint"].endswith(f"/volumes/{vol}/_data") and os.path.isdir(doc["Mountpoint"])
    assert doc["CreatedAt"].endswith("Z")
    listed = dkr("volume", "ls", "--filter", "label=team=berth", "--format", "{{.Name}} {{.Driver}}")
    assert f"{vol} local" in listed.stdout.splitlines()
    assert vol not in dkr("volume", "ls", "-q", "--filter", "label=team=other").stdout
    assert vol in dkr("volume", "ls", "-q", "--filter", "dangling=true").stdout.split()
    out = dkr("volume", "rm", vol)
    assert out.returncode == 0 and out.stdout == f"{vol}\n"
    assert not os.path.exists(doc["Mountpoint"])
    out = dkr("volume", "inspect", vol)
    assert out.returncode == 1 and out.stderr.strip().endswith(f"get {vol}: no such volume")
    out = dkr("volume", "rm", vol)
    assert out.returncode == 1 and f"get {vol}: no such volume" in out.stderr
    assert dkr("volume", "rm", "-f", vol).returncode == 0  # -f: absent is fine


def test_volume_create_errors_change_nothing(dkr: Docker, loaded: str) -> None:
    before = _volumes(dkr)
    cases = [
        (["--opt", "foo=bar", "badopt"], 'create badopt: invalid option: "foo"'),
        (["--opt", "o=size=1m", "nodev"], 'create nodev: missing required option: "device"'),
        (["--driver", "flocker", "plug"], 'create plug: error looking up volume plugin flocker: plugin "flocker" '
                                          "not found"),
        (["a"], "create a: volume name is too short, names should be at least two alphanumeric characters"),
        (["bad/name"], 'create bad/name: "bad/name" includes invalid characters for a local volume name, only '
                       '"[a-zA-Z0-9][a-zA-Z0-9_.-]" are allowed. If you intended to pass a host directory, use '
                       "absolute path"),
    ]
    for args, message in cases:
        out = dkr("volume", "create", *args)
        assert out.returncode == 1
        assert out.stderr.strip() == f"Error response from daemon: {message}"
    assert _volumes(dkr) == before


def test_named_volume_persists_and_is_in_use(dkr: Docker, loaded: str, cleanup: dict[str, list[str]]) -> None:
    vol, user = _name("data"), _name("user")
    cleanup["volumes"].append(vol)
    cleanup["containers"].append(user)
    assert dkr("run", "--rm", "-v", f"{vol}:/data", "busybox", "sh", "-c", "echo kept > /data/f").returncode == 0
    assert vol in _volumes(dkr)  # made on first use
    out = dkr("run", "--rm", "-v", f"{vol}:/data:ro", "busybox", "sh", "-c", "cat /data/f; touch /data/x")
    assert out.stdout == "kept\n" and "Read-only file system" in out.stderr
    assert dkr("run", "-d", "--name", user, "-v", f"{vol}:/data", "busybox", "sleep", "300").returncode == 0
    user_id = dkr("inspect", "-f", "{{.Id}}", user).stdout.strip()
    out = dkr("volume", "rm", vol)
    assert out.returncode == 1
    assert out.stderr.strip() == f"Error response from daemon: remove {vol}: volume is in use - [{user_id}]"
    mounts = json.loads(dkr("inspect", "-f", "{{json .Mounts}}", user).stdout)
    assert mounts == [{"Type": "volume", "Name": vol, "Source": mounts[0]["Source"], "Destination": "/data",
                       "Driver": "local", "Mode": "z", "RW": True, "Propagation": ""}]
    assert user_id[:12] in dkr("ps", "-q", "--no-trunc", "--filter", f"volume={vol}").stdout
    assert dkr("rm", "-f", user).returncode == 0
    assert dkr("volume", "rm", vol).returncode == 0  # no user any more


def test_image_volume_copies_content_once(dkr: Docker, loaded: str, cleanup: dict[str, list[str]]) -> None:
    src, image, keep, named = _name("src"), f"berth-withvol-{secrets.token_hex(3)}:1", _name("keep"), _name("nv")
    cleanup["containers"] += [src, keep]
    cleanup["images"].append(image)
    cleanup["volumes"] += [named, f"{named}-nocopy"]
    assert dkr("run", "--name", src, "busybox", "sh", "-c",
               "mkdir -p /data && echo from-image > /data/f && chown 33:44 /data/f && chmod 0640 /data/f"
               ).returncode == 0
    assert dkr("commit", "--change", "VOLUME /data", src, image).returncode == 0
    before = _volumes(dkr)
    out = dkr("run", "--rm", image, "sh", "-c", "stat -c '%u:%g %a' /data/f; cat /data/f")
    assert out.stdout == "33:44 640\nfrom-image\n", out.stderr
    assert _volumes(dkr) == before  # --rm took its anonymous volume away
    assert dkr("run", "--rm", "-v", f"{named}:/data", image, "sh", "-c", "echo more >> /data/f").returncode == 0
    out = dkr("run", "--rm", "-v", f"{named}:/data", "busybox", "cat", "/data/f")
    assert out.stdout == "from-image\nmore\n"  # copied on first use only, then it is the volume's
    out = dkr("run", "--rm", "-v", f"{named}-nocopy:/data:nocopy", image, "ls", "-A", "/data")
    assert out.stdout == ""
    assert dkr("run", "-d", "--name", keep, image, "sleep", "300").returncode == 0
    anonymous = json.loads(dkr("inspect", "-f", "{{json .Mounts}}", keep).stdout)[0]
    assert anonymous["Type"] == "volume" and len(anonymous["Name"]) == 64 and anonymous["Mode"] == ""
    labels = json.loads(dkr("volume", "inspect", "-f", "{{json .Labels}}", anonymous["Name"]).stdout)
    assert labels == {"com.docker.volume.anonymous": ""}
    assert dkr("rm", "-f", keep).returncode == 0  # without -v the volume stays
    assert anonymous["Name"] in _volumes(dkr)
    out = dkr("volume", "prune", "-f")
    assert out.returncode == 0 and anonymous["Name"] in out.stdout and named not in out.stdout
    assert anonymous["Name"] not in _volumes(dkr) and named in _volumes(dkr)  # prune: anonymous ones only


def test_rm_v_removes_anonymous_volumes_only(dkr: Docker, loaded: str, cleanup: dict[str, list[str]]) -> None:
    name, vol = _name("rmv"), _name("kept")
    cleanup["containers"].append(name)
    cleanup["volumes"].append(vol)
    assert dkr("create", "--name", name, "-v", "/anon", "-v", f"{vol}:/named", "busybox", "true").returncode == 0
    anon = next(m["Name"] for m in json.loads(dkr("inspect", "-f", "{{json .Mounts}}", name).stdout)
                if m["Destination"] == "/anon")
    assert {anon, vol} <= _volumes(dkr)
    assert dkr("rm", "-v", name).returncode == 0
    remaining = _volumes(dkr)
    assert anon not in remaining and vol in remaining


def test_binds_with_modes(dkr: Docker, loaded: str, tmp_path: Path) -> None:
    (tmp_path / "in").write_text("host file\n")
    out = dkr("run", "--rm", "-v", f"{tmp_path}:/h", "busybox", "sh", "-c", "cat /h/in; echo back > /h/out")
    assert out.stdout == "host file\n", out.stderr
    assert (tmp_path / "out").read_text() == "back\n"
    out = dkr("run", "--rm", "-v", f"{tmp_path}:/h:ro", "busybox", "sh", "-c", "touch /h/x")
    assert out.returncode == 1 and "Read-only file system" in out.stderr
    out = dkr("run", "--rm", "-v", f"{tmp_path}/in:/etc/motd:ro", "busybox", "cat", "/etc/motd")
    assert out.stdout == "host file\n"  # a file on a file
    created = tmp_path / "made" / "by" / "docker"
    assert dkr("run", "--rm", "-v", f"{created}:/m", "busybox", "true").returncode == 0
    assert created.is_dir()  # -v creates a missing source directory, as dockerd does
    name = _name("bind")
    try:
        assert dkr("create", "--name", name, "-v", f"{tmp_path}:/h:ro,rslave", "busybox", "true").returncode == 0
        mounts = json.loads(dkr("inspect", "-f", "{{json .Mounts}}", name).stdout)
        assert mounts == [{"Type": "bind", "Source": str(tmp_path), "Destination": "/h", "Mode": "ro,rslave",
                           "RW": False, "Propagation": "rslave"}]
    finally:
        dkr("rm", "-f", name)


def test_mount_flag_and_tmpfs(dkr: Docker, loaded: str, tmp_path: Path, cleanup: dict[str, list[str]]) -> None:
    vol = _name("mnt")
    cleanup["volumes"].append(vol)
    out = dkr("run", "--rm", "--mount", f"type=bind,source={tmp_path},target=/b,readonly",
              "--mount", f"type=volume,source={vol},target=/v", "--mount", "type=tmpfs,target=/t,tmpfs-size=2m",
              "--tmpfs", "/run/x:size=1m,exec", "busybox", "sh", "-c",
              "touch /b/no 2>/dev/null || echo ro; touch /v/yes && echo rw; grep -E ' /(t|run/x) ' /proc/mounts")
    lines = out.stdout.splitlines()
    assert lines[:2] == ["ro", "rw"], out.stderr
    assert any(line.startswith("tmpfs /t tmpfs rw,nosuid,nodev,noexec") and "size=2048k" in line for line in lines)
    assert any(line.startswith("tmpfs /run/x tmpfs rw,nosuid,nodev,") and "noexec" not in line and
               "size=1024k" in line for line in lines)
    name = _name("mnt")
    try:
        assert dkr("create", "--name", name, "--mount", "type=tmpfs,target=/t,tmpfs-mode=1770",
                   "--tmpfs", "/hidden", "busybox", "true").returncode == 0
        mounts = json.loads(dkr("inspect", "-f", "{{json .Mounts}}", name).stdout)
        assert mounts == [{"Type": "tmpfs", "Source": "", "Destination": "/t", "Mode": "", "RW": True,
                           "Propagation": ""}]  # --tmpfs mounts are not listed, as in Docker
    finally:
        dkr("rm", "-f", name)


def test_volumes_from(dkr: Docker, loaded: str, cleanup: dict[str, list[str]], tmp_path: Path) -> None:
    source, vol = _name("from"), _name("shared")
    cleanup["containers"].append(source)
    cleanup["volumes"].append(vol)
    assert dkr("create", "--name", source, "-v", f"{vol}:/shared", "-v", f"{tmp_path}:/host", "busybox",
               "true").returncode == 0
    assert dkr("run", "--rm", "--volumes-from", source, "busybox", "sh", "-c",
               "echo via-from > /shared/f; echo bind > /host/f").returncode == 0
    assert (tmp_path / "f").read_text() == "bind\n"
    out = dkr("run", "--rm", "--volumes-from", f"{source}:ro", "busybox", "sh", "-c", "cat /shared/f; touch /shared/x")
    assert out.stdout == "via-from\n" and "Read-only file system" in out.stderr
    out = dkr("run", "--rm", "--volumes-from", "no-such-container", "busybox", "true")
    assert out.returncode == 125 and "No such container: no-such-container" in out.stderr


def test_bad_mount_specs_get_dockers_errors(dkr: Docker, loaded: str, tmp_path: Path) -> None:
    before_volumes = _volumes(dkr)
    before_containers = dkr("ps", "-aq").stdout
    cases = [
        (["-v", "relative/x:/x"], 'create relative/x: "relative/x" includes invalid characters for a local volume '
                                  'name, only "[a-zA-Z0-9][a-zA-Z0-9_.-]" are allowed. If you intended to pass a host '
                                  "directory, use absolute path"),
        (["--mount", "type=bind,source=relative,target=/x"],
         "invalid mount config for type \"bind\": invalid mount path: 'relative' mount path must be absolute"),
        (["--mount", "type=bind,source=/no/such/berth/path,target=/x"],
         'invalid mount config for type "bind": bind source path does not exist: /no/such/berth/path'),
        (["-v", f"{tmp_path}:/x", "-v", "vol:/x"], "Duplicate mount point: /x"),
        (["-v", f"{tmp_path}:/x", "--tmpfs", "/x"], "Duplicate mount point: /x"),
        (["-v", f"{tmp_path}:relative"], f"invalid volume specification: '{tmp_path}:relative': invalid mount "
                                         "config for type \"bind\": invalid mount path: 'relative' mount path must "
                                         "be absolute"),
        (["-v", f"{tmp_path}:/"], f"invalid volume specification: '{tmp_path}:/': invalid mount config for type "
                                  "\"bind\": invalid specification: destination can't be '/'"),
        (["-v", f"{tmp_path}:/x:rw,ro"], "invalid mode: rw,ro"),
        (["--tmpfs", "relative"], "invalid mount path: 'relative' mount path must be absolute"),
        (["--mount", "type=volume,target=/x,readonly"],
         'invalid mount config for type "volume": must not set ReadOnly mode when using anonymous volumes'),
    ]
    for args, message in cases:
        out = dkr("create", *args, "busybox", "true")
        assert out.returncode == 1, (args, out.stderr)  # docker create: 1 (docker run: 125)
        assert out.stderr.startswith(f"Error response from daemon: {message}\n"), (args, out.stderr)
    assert _volumes(dkr) == before_volumes
    assert dkr("ps", "-aq").stdout == before_containers


def test_image_volume_paths_cannot_escape(dkr: Docker, loaded: str, cleanup: dict[str, list[str]]) -> None:
    src = _name("esc")
    cleanup["containers"].append(src)
    assert dkr("create", "--name", src, "busybox", "true").returncode == 0
    climbing, relative = f"berth-esc-{secrets.token_hex(3)}:1", f"berth-rel-{secrets.token_hex(3)}:1"
    cleanup["images"] += [climbing, relative]
    assert dkr("commit", "--change", "VOLUME /../../../etc/berth-test", src, climbing).returncode == 0
    assert dkr("commit", "--change", 'VOLUME ["../../etc"]', src, relative).returncode == 0
    out = dkr("run", "--rm", climbing, "sh", "-c", "grep ' /etc/berth-test ' /proc/mounts >/dev/null && echo inside")
    assert out.stdout == "inside\n", out.stderr  # climbing stops at the container's root
    assert not os.path.exists("/etc/berth-test")
    before = _volumes(dkr)
    out = dkr("run", "--rm", relative, "true")
    assert out.returncode == 125
    assert "invalid mount path: '../../etc' mount path must be absolute" in out.stderr
    assert _volumes(dkr) == before


def test_system_df_lists_volumes(dkr: Docker, loaded: str, cleanup: dict[str, list[str]]) -> None:
    vol = _name("df")
    cleanup["volumes"].append(vol)
    assert dkr("run", "--rm", "-v", f"{vol}:/d", "busybox", "sh", "-c", "head -c 5000 /dev/zero > /d/f").returncode == 0
    out = dkr("system", "df", "-v", "--format", "{{json .Volumes}}")
    volumes = {v["Name"]: v for v in json.loads(out.stdout)}
    assert volumes[vol]["Size"] == "5kB" and volumes[vol]["Links"] == "0"


def test_docker_py_volumes(client: docker_sdk.DockerClient, cleanup: dict[str, list[str]]) -> None:
    name = _name("py")
    cleanup["volumes"].append(name)
    vol = client.volumes.create(name, driver="local", driver_opts={"type": "tmpfs", "device": "tmpfs",
                                                                   "o": "size=4m"}, labels={"k": "v"})
    assert vol.attrs["Options"] == {"type": "tmpfs", "device": "tmpfs", "o": "size=4m"}
    assert [v.name for v in client.volumes.list(filters={"name": name})] == [name]
    out = client.containers.run("busybox", ["sh", "-c", "grep ' /v ' /proc/mounts"], volumes={name: {"bind": "/v"}},
                                remove=True)
    assert b"tmpfs /v tmpfs" in out and b"size=4096k" in out
    with pytest.raises(docker_sdk.errors.NotFound, match="no such volume"):
        client.volumes.get("no-such-volume-berth")
    result = client.volumes.prune(filters={"label": "k=v"})
    assert name not in (result["VolumesDeleted"] or [])  # named: kept by a default prune
    vol.remove()
    assert name not in [v.name for v in client.volumes.list()]


def test_bind_propagation(dkr: Docker, loaded: str, tmp_path: Path) -> None:
    """rslave: a mount the host makes later under the bind reaches the running container; a shared
    propagation needs a shared source mount (moby's ensureShared)."""
    import subprocess

    share = tmp_path / "share"
    share.mkdir()
    mounted: list[Path] = []

    def mount(*args: str) -> None:
        subprocess.run(["mount", *args], check=True, capture_output=True)

    name = _name("prop")
    try:
        mount("--bind", str(share), str(share))
        mounted.append(share)
        mount("--make-shared", str(share))
        assert dkr("run", "-d", "--name", name, "--mount",
                   f"type=bind,source={share},target=/h,bind-propagation=rslave", "busybox", "sleep",
                   "300").returncode == 0
        (share / "later").mkdir()
        mount("-t", "tmpfs", "-o", "size=1m", "tmpfs", str(share / "later"))
        mounted.append(share / "later")
        (share / "later" / "f").write_text("propagated\n")
        assert dkr("exec", name, "cat", "/h/later/f").stdout == "propagated\n"
        private = tmp_path / "private"
        private.mkdir()
        mount("--bind", str(private), str(private))
        mounted.append(private)
        mount("--make-private", str(private))
        out = dkr("run", "--rm", "--mount", f"type=bind,source={private},target=/p,bind-propagation=rshared",
                  "busybox", "true")
        assert out.returncode == 125
        assert f"path {private} is mounted on {private} but it is not a shared mount" in out.stderr
    finally:
        dkr("rm", "-f", name)
        for path in reversed(mounted):
            subprocess.run(["umount", "-l", str(path)], capture_output=True)
