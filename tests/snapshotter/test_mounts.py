"""Real overlay mounts of unpacked snapshots: whiteouts, opaque directories, deep chains.

Layers go the production way — blobs in the content store, ``Images.unpack`` applying them into
snapshot upper directories — and the result is mounted with ``common.mounts.mount_all``.
"""

from __future__ import annotations

import errno
import os
import stat
import tarfile
from pathlib import Path

import pytest

from snapshotter.api import MAX_DEPTH
from snapshotter.unpack import upper_dir
from tests.snapshotter.conftest import Stack, mounted
from tests.snapshotter.contract import commit_layer
from tests.snapshotter.layers import E, d, f, store_layers, tar_bytes

LAYER1 = [d("etc"), f("etc/a", b"a1"), f("etc/b", b"b1"), d("data"), f("data/x", b"x1"), f("data/y", b"y1"),
          d("opaque"), f("opaque/p", b"p1"), f("opaque/q", b"q1"), d("gone"), f("gone/deep", b"d1")]
LAYER2 = [f("etc/.wh.a"), f("opaque/.wh..wh..opq"), f("opaque/new", b"n2"), f("etc/c", b"c2"),
          f(".wh.gone"), E("etc/.wh.b")]  # a whiteout of b here, re-added by layer 3
LAYER3 = [d("etc"), f("etc/b", b"b3"), f("data/x", b"x3")]


def mount_points() -> set[str]:
    with open("/proc/self/mountinfo") as fh:
        return {line.split()[4] for line in fh}


def tree(root: Path) -> dict[str, bytes | None]:
    """Files (content) and directories (None) under ``root``, relative."""
    found: dict[str, bytes | None] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames:
            found[os.path.relpath(os.path.join(dirpath, name), root)] = None
        for name in filenames:
            found[os.path.relpath(os.path.join(dirpath, name), root)] = Path(dirpath, name).read_bytes()
    return found


async def test_whiteouts_and_opaque_dirs_on_a_mounted_chain(local_stack: Stack, scratch: Path) -> None:
    layers = await store_layers(local_stack.content, [tar_bytes(x) for x in (LAYER1, LAYER2, LAYER3)])
    top = await local_stack.images.unpack(layers)
    mounts = await local_stack.snapshotter.prepare("container", top)
    upper, lowers = upper_dir(mounts)
    assert len(lowers) == 3

    # The layer with the whiteouts holds them in overlay's own form.
    middle = Path(lowers[1])
    st = os.lstat(middle / "etc" / "a")
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == 0
    assert os.getxattr(middle / "opaque", "trusted.overlay.opaque") == b"y"

    with mounted(mounts, scratch / "rootfs") as rootfs:
        assert tree(rootfs) == {
            "etc": None, "etc/b": b"b3", "etc/c": b"c2",
            "data": None, "data/x": b"x3", "data/y": b"y1",
            "opaque": None, "opaque/new": b"n2",
        }
        (rootfs / "written").write_bytes(b"w")
        (rootfs / "data" / "y").unlink()
        (rootfs / "etc" / "c").write_bytes(b"changed")
        # Writes land in the upper directory only.
        assert (Path(upper) / "written").read_bytes() == b"w"
        y = os.lstat(Path(upper) / "data" / "y")
        assert stat.S_ISCHR(y.st_mode) and y.st_rdev == 0  # the kernel's whiteout for the deletion
        assert (Path(upper) / "etc" / "c").read_bytes() == b"changed"
        for lower in lowers:
            assert not (Path(lower) / "written").exists()
        assert (Path(lowers[2]) / "data" / "y").read_bytes() == b"y1"
        assert (Path(lowers[1]) / "etc" / "c").read_bytes() == b"c2"
    assert str(scratch / "rootfs") not in mount_points()


async def test_view_of_a_chain_is_read_only(local_stack: Stack, scratch: Path) -> None:
    layers = await store_layers(local_stack.content, [tar_bytes(LAYER1), tar_bytes(LAYER2)])
    top = await local_stack.images.unpack(layers)
    with mounted(await local_stack.snapshotter.view("look", top), scratch / "view") as view:
        assert (view / "etc" / "b").exists() is False and (view / "etc" / "c").read_bytes() == b"c2"
        with pytest.raises(OSError) as caught:
            (view / "new").write_bytes(b"x")
        assert caught.value.errno == errno.EROFS


async def test_single_layer_bind_mounts(local_stack: Stack, scratch: Path) -> None:
    (layer,) = await store_layers(local_stack.content, [tar_bytes(LAYER1)])
    top = await local_stack.images.unpack([layer])
    with mounted(await local_stack.snapshotter.view("ro", top), scratch / "ro") as ro:
        assert (ro / "etc" / "a").read_bytes() == b"a1"
        with pytest.raises(OSError) as caught:
            (ro / "etc" / "z").write_bytes(b"x")
        assert caught.value.errno == errno.EROFS
    mounts = await local_stack.snapshotter.prepare("rw")
    with mounted(mounts, scratch / "rw") as rw:
        (rw / "file").write_bytes(b"1")
    assert (Path(upper_dir(mounts)[0]) / "file").read_bytes() == b"1"


async def test_a_120_layer_chain_mounts(local_stack: Stack, scratch: Path) -> None:
    parent = ""
    for i in range(120):
        await commit_layer(local_stack, f"layer-{i}", parent, {f"f{i}": str(i).encode(), "top": str(i).encode()})
        parent = f"layer-{i}"
    mounts = await local_stack.snapshotter.prepare("deep", parent)
    options = ",".join(mounts[0].options)
    assert len(options) > os.sysconf("SC_PAGE_SIZE")  # too long for mount(2): mount_all takes lowerdir+
    with mounted(mounts, scratch / "deep") as rootfs:
        assert (rootfs / "f0").read_bytes() == b"0"
        assert (rootfs / "f119").read_bytes() == b"119"
        assert (rootfs / "top").read_bytes() == b"119"  # nearest layer wins
        assert len(os.listdir(rootfs)) == 121


async def test_deepest_allowed_chain_mounts(local_stack: Stack, scratch: Path) -> None:
    parent = ""
    for i in range(MAX_DEPTH):
        await commit_layer(local_stack, f"l{i}", parent, {f"f{i}": b"x"} if i in (0, MAX_DEPTH - 1) else None)
        parent = f"l{i}"
    with mounted(await local_stack.snapshotter.prepare("ctr", parent), scratch / "max") as rootfs:
        assert sorted(os.listdir(rootfs)) == ["f0", f"f{MAX_DEPTH - 1}"]


async def test_setuid_and_ownership_survive_into_the_mount(local_stack: Stack, scratch: Path) -> None:
    layer = tar_bytes([d("bin"), E("bin/su", tarfile.REGTYPE, b"#!", 0o4755, uid=0, gid=0),
                       E("bin/tool", tarfile.REGTYPE, b"#!", 0o2750, uid=1000, gid=50)])
    top = await local_stack.images.unpack(await store_layers(local_stack.content, [layer]))
    with mounted(await local_stack.snapshotter.prepare("c", top), scratch / "m") as rootfs:
        su, tool = os.stat(rootfs / "bin" / "su"), os.stat(rootfs / "bin" / "tool")
        assert stat.S_IMODE(su.st_mode) == 0o4755
        assert (stat.S_IMODE(tool.st_mode), tool.st_uid, tool.st_gid) == (0o2750, 1000, 50)
