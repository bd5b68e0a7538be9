"""`docker load/save/images/tag/rmi/image inspect/history` through the real docker CLI."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest

from tests.acceptance.conftest import Docker
from tests.support import busybox

pytestmark = pytest.mark.acceptance


def test_images_lists_loaded_busybox(dkr: Docker, loaded: str) -> None:
    expected = busybox.busybox_image().id
    out = dkr("images", "--no-trunc", "--format", "{{.Repository}}:{{.Tag}} {{.ID}}")
    assert f"busybox:latest {expected}" in out.stdout.splitlines()


def test_image_inspect_shape(dkr: Docker, loaded: str) -> None:
    image = busybox.busybox_image()
    doc = json.loads(dkr("image", "inspect", "busybox").stdout)[0]
    assert doc["Id"] == image.id
    assert doc["RepoTags"] == ["busybox:latest"]
    assert doc["Config"]["Cmd"] == ["sh"]
    assert doc["RootFS"]["Layers"] == image.diff_ids
    assert doc["Os"] == "linux" and doc["Size"] > 1_000_000


def test_tag_and_untag(dkr: Docker, loaded: str) -> None:
    assert dkr("tag", "busybox", "berth-test/bb:v1").returncode == 0
    same = dkr("images", "-q", "--no-trunc", "berth-test/bb").stdout.split()
    assert same == [busybox.busybox_image().id]
    out = dkr("rmi", "berth-test/bb:v1")
    assert out.returncode == 0
    assert out.stdout.strip() == "Untagged: berth-test/bb:v1"
    assert dkr("image", "inspect", "busybox").returncode == 0


def test_save_and_load_round_trip(dkr: Docker, loaded: str, tmp_path: Path) -> None:
    target = tmp_path / "saved.tar"
    out = dkr("save", "-o", str(target), "busybox")
    assert out.returncode == 0, out.stderr
    with tarfile.open(target) as tar:
        names = tar.getnames()
        manifest = json.load(tar.extractfile("manifest.json"))  # type: ignore[arg-type]
    assert "index.json" in names and "oci-layout" in names
    assert manifest[0]["RepoTags"] == ["busybox:latest"]
    again = dkr("load", "-i", str(target))
    assert again.returncode == 0, again.stderr
    assert "Loaded image: busybox:latest" in again.stdout
    assert json.loads(dkr("image", "inspect", "busybox").stdout)[0]["Id"] == busybox.busybox_image().id


def test_load_oci_layout_and_run(dkr: Docker, loaded: str, tmp_path: Path) -> None:
    extra = busybox.layer_tar([busybox.Entry("etc/motd", data=b"from an oci layout\n")])
    image = busybox.busybox_image(tags=("berth-test/oci:1",), extra_layers=[extra])
    path = busybox.write_oci_layout([image], tmp_path / "oci.tar")
    out = dkr("load", "-i", str(path))
    assert out.returncode == 0, out.stderr
    try:
        run = dkr("run", "--rm", "berth-test/oci:1", "cat", "/etc/motd")
        assert run.stdout == "from an oci layout\n", run.stderr
    finally:
        dkr("rmi", "berth-test/oci:1")


def test_rmi_refuses_image_used_by_container(dkr: Docker, loaded: str, tmp_path: Path) -> None:
    extra = busybox.layer_tar([busybox.Entry("berth-rmi", data=b"x")])
    image = busybox.busybox_image(tags=("berth-test/rmi:1",), extra_layers=[extra])
    assert dkr("load", "-i", str(busybox.write_docker_save([image], tmp_path / "rmi.tar"))).returncode == 0
    cid = dkr("create", "berth-test/rmi:1", "true").stdout.strip()
    try:
        out = dkr("rmi", image.id)
        assert out.returncode == 1
        assert "image is being used by stopped container" in out.stderr
    finally:
        dkr("rm", cid)
    out = dkr("rmi", "berth-test/rmi:1")
    assert out.returncode == 0, out.stderr
    assert "Untagged: berth-test/rmi:1" in out.stdout and f"Deleted: {image.id}" in out.stdout
    assert dkr("image", "inspect", image.id).returncode == 1
    # the shared busybox layer is untouched
    assert dkr("run", "--rm", "busybox", "true").returncode == 0


def test_history(dkr: Docker, loaded: str) -> None:
    out = dkr("history", "--no-trunc", "--format", "{{.ID}}|{{.CreatedBy}}", "busybox")
    assert out.returncode == 0, out.stderr
    first = out.stdout.splitlines()[0]
    assert first == f"{busybox.busybox_image().id}|berth tests"


def _hostile_image(entries: list[tarfile.TarInfo], tag: str) -> busybox.Image:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info in entries:
            data = b"pwned\n" if info.type == tarfile.REGTYPE else None
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return busybox.busybox_image(tags=(tag,), extra_layers=[buf.getvalue()])


def _entry(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    info.mode = 0o755 if kind in (tarfile.DIRTYPE, tarfile.SYMTYPE) else 0o644
    return info


@pytest.mark.parametrize("case", ["dotdot", "symlink-escape", "hardlink-shadow"])
def test_hostile_layers_cannot_escape(dkr: Docker, loaded: str, tmp_path: Path, case: str) -> None:
    sentinel = tmp_path / "sentinel"
    sentinel.mkdir()
    shadow = Path("/etc/shadow")
    shadow_before = hashlib.sha256(shadow.read_bytes()).hexdigest() if shadow.exists() else ""
    depth = "../" * 12
    entries = {
        "dotdot": [_entry(f"{depth}{str(sentinel).lstrip('/')}/pwned")],
        "symlink-escape": [_entry("escape", tarfile.SYMTYPE, str(sentinel)), _entry("escape/pwned")],
        "hardlink-shadow": [_entry("shadow-link", tarfile.LNKTYPE, "/etc/shadow"),
                            _entry("rel-link", tarfile.LNKTYPE, f"{depth}etc/shadow")],
    }[case]
    tag = f"berth-test/hostile-{case}:1"
    path = busybox.write_docker_save([_hostile_image(entries, tag)], tmp_path / "hostile.tar")
    out = dkr("load", "-i", str(path))
    try:
        assert list(sentinel.iterdir()) == []
        if shadow_before:
            assert hashlib.sha256(shadow.read_bytes()).hexdigest() == shadow_before
        if out.returncode == 0:
            # contained: whatever was unpacked stays inside the image's own filesystem
            run = dkr("run", "--rm", tag, "sh", "-c", "cat /escape/pwned /shadow-link 2>/dev/null; true")
            assert "root:" not in run.stdout
        else:
            assert "Error" in out.stderr or "error" in out.stderr
    finally:
        dkr("rmi", "-f", tag)
