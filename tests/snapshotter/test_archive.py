"""The layer applier against hostile and tricky tars, built here with ``tarfile``.

Each hostile case is either rejected (``UnsafeArchive``) or contained (written inside the root);
either way nothing outside the snapshot root may change: a sentinel directory next to the root
stays empty, host paths named by the tar do not appear, /etc/shadow is untouched.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import secrets
import stat
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import zstandard

from protos.errors import DigestMismatch, InvalidArgument, UnsafeArchive
from snapshotter.archive import MAX_HEADER_RECORD, ApplyResult, LayerReader, apply_layer
from tests.snapshotter.layers import E, d, f, hard, sym, tar_bytes
from tests.support.busybox import sha256


@dataclass
class Box:
    root: Path
    sentinel: Path

    def apply(self, data: bytes, **kw: object) -> ApplyResult:
        return apply_layer(io.BytesIO(data), str(self.root), **kw)  # type: ignore[arg-type]


def _digest_file(path: str) -> tuple[str, int, int]:
    st = os.stat(path)
    with open(path, "rb") as fh:
        return hashlib.sha256(fh.read()).hexdigest(), st.st_nlink, st.st_mtime_ns


@pytest.fixture
def box(scratch: Path) -> Iterator[Box]:
    root, sentinel = scratch / "root", scratch / "sentinel"
    root.mkdir()
    sentinel.mkdir()
    shadow = _digest_file("/etc/shadow")
    etc = set(os.listdir("/etc"))
    yield Box(root=root, sentinel=sentinel)
    assert os.listdir(sentinel) == [], "an entry escaped the root"
    assert _digest_file("/etc/shadow") == shadow
    assert set(os.listdir("/etc")) == etc
    assert set(os.listdir(scratch)) == {"root", "sentinel"}


def rejected_or_contained(box: Box, data: bytes) -> str:
    try:
        box.apply(data)
    except UnsafeArchive as exc:
        assert str(exc)
        return "rejected"
    return "contained"


def test_dotdot_entries_are_rejected(box: Box) -> None:
    for name in ("../sentinel/pwned", "a/../../sentinel/pwned", "./../sentinel/pwned", "/../sentinel/pwned"):
        with pytest.raises(UnsafeArchive, match="outside of the layer root"):
            box.apply(tar_bytes([f(name)]))


def test_absolute_names_are_contained(box: Box) -> None:
    name = f"/etc/berth-test-{secrets.token_hex(4)}"
    box.apply(tar_bytes([d("/etc"), f(name, b"inside")]))
    assert (box.root / name.lstrip("/")).read_bytes() == b"inside"
    assert not os.path.exists(name)


def test_absolute_symlink_then_file_through_it(box: Box) -> None:
    outcome = rejected_or_contained(box, tar_bytes([sym("link", str(box.sentinel)), f("link/pwned")]))
    assert outcome == "rejected"  # the link leads nowhere inside the layer
    assert os.readlink(box.root / "link") == str(box.sentinel)  # the link itself is plain data


def test_absolute_symlink_to_root_is_followed_inside(box: Box) -> None:
    name = f"berth-test-{secrets.token_hex(4)}"
    box.apply(tar_bytes([d("etc"), sym("host", "/"), f(f"host/etc/{name}", b"contained")]))
    assert (box.root / "etc" / name).read_bytes() == b"contained"
    assert not os.path.exists(f"/etc/{name}")


def test_relative_symlink_climbing_out(box: Box) -> None:
    climb = "../" * 12 + str(box.sentinel).lstrip("/")
    assert rejected_or_contained(box, tar_bytes([sym("up", climb), f("up/pwned")])) == "rejected"
    # With the target present inside the layer, the same link resolves (clamped) inside it.
    box.apply(tar_bytes([d(str(box.sentinel).lstrip("/")), sym("up2", climb), f("up2/inside", b"ok")]))
    assert (box.root / str(box.sentinel).lstrip("/") / "inside").read_bytes() == b"ok"


def test_symlinked_directory_then_file_inside(box: Box) -> None:
    box.apply(tar_bytes([d("real"), sym("dir", "real"), f("dir/file", b"through"), sym("abs", "/real"),
                         f("abs/file2", b"abs")]))
    assert (box.root / "real" / "file").read_bytes() == b"through"
    assert (box.root / "real" / "file2").read_bytes() == b"abs"


def test_symlink_swapped_in_for_a_directory(box: Box) -> None:
    # A later entry replaces a directory with a symlink out of the root; writes after it must not
    # follow the cached directory or the new link outside.
    data = tar_bytes([d("a"), f("a/one"), sym("a", str(box.sentinel)), f("a/two")])
    assert rejected_or_contained(box, data) == "rejected"


def test_hardlink_to_host_file_is_rejected(box: Box) -> None:
    for target in ("/etc/shadow", "../../../../../../etc/shadow", "etc/shadow"):
        with pytest.raises(UnsafeArchive, match="invalid hardlink"):
            box.apply(tar_bytes([hard("stolen", target)]))
    with pytest.raises(UnsafeArchive, match="invalid hardlink"):
        box.apply(tar_bytes([sym("etc2", "/etc"), hard("stolen", "etc2/shadow")]))
    assert not (box.root / "stolen").exists()


def test_hardlinks_inside_the_layer(box: Box) -> None:
    box.apply(tar_bytes([d("bin"), f("bin/busybox", b"elf", 0o755), hard("bin/sh", "bin/busybox"),
                         sym("bin/ls", "busybox"), hard("bin/ls2", "bin/ls")]))
    assert os.stat(box.root / "bin/sh").st_ino == os.stat(box.root / "bin/busybox").st_ino
    assert os.readlink(box.root / "bin/ls2") == "busybox"  # a link to a symlink links the symlink
    with pytest.raises(UnsafeArchive):
        box.apply(tar_bytes([hard("dirlink", "bin")]))


def test_device_nodes_need_permission(box: Box) -> None:
    null = E("dev-null", tarfile.CHRTYPE, mode=0o666, devmajor=1, devminor=3)
    with pytest.raises(UnsafeArchive, match="device node"):
        box.apply(tar_bytes([null]))
    with pytest.raises(UnsafeArchive, match="device node"):
        box.apply(tar_bytes([E("disk", tarfile.BLKTYPE, devmajor=8, devminor=0)]))
    assert not (box.root / "dev-null").exists()
    box.apply(tar_bytes([null]), allow_devices=True)
    st = os.lstat(box.root / "dev-null")
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(1, 3) and stat.S_IMODE(st.st_mode) == 0o666
    box.apply(tar_bytes([E("fifo", tarfile.FIFOTYPE, mode=0o640), E("wh", tarfile.CHRTYPE)]))
    assert stat.S_ISFIFO(os.lstat(box.root / "fifo").st_mode)
    assert os.lstat(box.root / "wh").st_rdev == 0  # char 0/0: already a whiteout, allowed


def test_whiteouts_in_overlay_form(box: Box) -> None:
    box.apply(tar_bytes([d("etc"), E("etc/.wh.passwd", uid=7, gid=8), d("var"), f("var/.wh..wh..opq"),
                         f("var/kept", b"same layer")]))
    st = os.lstat(box.root / "etc" / "passwd")
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == 0 and (st.st_uid, st.st_gid) == (7, 8)
    assert os.getxattr(box.root / "var", "trusted.overlay.opaque") == b"y"
    assert (box.root / "var" / "kept").read_bytes() == b"same layer"
    assert not any(name.startswith(".wh.") for _, dirs, files in os.walk(box.root) for name in dirs + files)


def test_whiteout_and_entry_of_the_same_layer(box: Box) -> None:
    # Either order: the layer's own directory stays, and stops merging with lower ones.
    box.apply(tar_bytes([d("a"), f("a/mine"), f(".wh.a"), f(".wh.b"), d("b"), f("b/mine")]))
    for name in ("a", "b"):
        assert (box.root / name / "mine").exists()
        assert os.getxattr(box.root / name, "trusted.overlay.opaque") == b"y"


def test_invalid_whiteouts(box: Box) -> None:
    for name in (".wh.", "dir/.wh.", ".wh..", ".wh.x/file", "a/.wh.b/c"):
        with pytest.raises(InvalidArgument, match="invalid whiteout"):
            box.apply(tar_bytes([f(name)]))
    box.apply(tar_bytes([d(".wh..wh.plnk"), f(".wh..wh.plnk/123.456", b"aufs")]))  # AUFS metadata: skipped
    assert os.listdir(box.root) == []


def test_forged_overlay_xattrs_are_dropped(box: Box) -> None:
    box.apply(tar_bytes([d("d", pax={"SCHILY.xattr.trusted.overlay.redirect": "/etc",
                                     "SCHILY.xattr.trusted.overlay.opaque": "y",
                                     "SCHILY.xattr.user.overlay.origin": "x",
                                     "SCHILY.xattr.user.kept": "value"})]))
    assert os.listxattr(box.root / "d") == ["user.kept"]
    assert os.getxattr(box.root / "d", "user.kept") == b"value"


def test_metadata_is_restored(box: Box) -> None:
    cap = bytes([0, 0, 0, 2, 0, 32, 0, 0] + [0] * 12)  # v2 file capability: cap_net_bind_service
    box.apply(tar_bytes([
        d("srv", 0o750, uid=33, gid=33, mtime=1_600_000_000),
        f("srv/suid", b"x", 0o4755, uid=1000, gid=1000, mtime=1_500_000_000),
        f("srv/cap", b"x", 0o755, pax={"SCHILY.xattr.security.capability": cap.decode("latin-1")}),
        f("srv/precise", b"x", pax={"mtime": "1500000000.123456789"}),
        sym("srv/link", "suid", uid=5, gid=6, mtime=1_400_000_000),
    ]))
    srv, suid = os.stat(box.root / "srv"), os.stat(box.root / "srv" / "suid")
    assert (stat.S_IMODE(srv.st_mode), srv.st_uid, srv.st_gid, srv.st_mtime) == (0o750, 33, 33, 1_600_000_000)
    assert (stat.S_IMODE(suid.st_mode), suid.st_uid, suid.st_mtime) == (0o4755, 1000, 1_500_000_000)
    assert os.stat(box.root / "srv" / "precise").st_mtime_ns == 1_500_000_000_123_456_789
    link = os.lstat(box.root / "srv" / "link")
    assert (link.st_uid, link.st_gid, link.st_mtime) == (5, 6, 1_400_000_000)
    raw = cap.decode("latin-1").encode("utf-8", "surrogateescape")
    assert os.getxattr(box.root / "srv" / "cap", "security.capability") == raw


def test_missing_parents_copy_lower_attributes(box: Box, scratch: Path) -> None:
    lower = scratch / "root" / "lower"
    (lower / "opt" / "app").mkdir(parents=True)
    os.chmod(lower / "opt" / "app", 0o711)
    os.chown(lower / "opt" / "app", 12, 34)
    upper = box.root / "upper"
    upper.mkdir()
    apply_layer(io.BytesIO(tar_bytes([f("opt/app/bin", b"1"), f("new/dir/file")])), str(upper), lowers=[str(lower)])
    st = os.stat(upper / "opt" / "app")
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o711, 12, 34)
    assert stat.S_IMODE(os.stat(upper / "new" / "dir").st_mode) == 0o755


def test_later_entries_replace_earlier_ones(box: Box) -> None:
    box.apply(tar_bytes([d("x"), f("x/inner"), f("x", b"now a file"), f("y", b"1"), d("y"), sym("z", "y"),
                         f("z", b"file again")]))
    assert (box.root / "x").read_bytes() == b"now a file"
    assert (box.root / "y").is_dir()
    assert not (box.root / "z").is_symlink() and (box.root / "z").read_bytes() == b"file again"


def test_diff_id_gzip_and_multi_member(box: Box) -> None:
    raw = tar_bytes([f("a", os.urandom(200_000)), f("b", b"b")])
    assert box.apply(raw).diff_id == sha256(raw)
    assert box.apply(gzip.compress(raw), expected_diff_id=sha256(raw)).size == len(raw)
    split = len(raw) // 3
    two_members = gzip.compress(raw[:split]) + gzip.compress(raw[split:])
    assert box.apply(two_members).diff_id == sha256(raw)
    zst = zstandard.ZstdCompressor().compress(raw[:split]) + zstandard.ZstdCompressor().compress(raw[split:])
    assert box.apply(zst, expected_diff_id=sha256(raw)).size == len(raw)  # two frames, one stream
    with pytest.raises(DigestMismatch, match="invalid diffID"):
        box.apply(raw, expected_diff_id=sha256(b"other"))


def test_truncated_and_corrupt_input(box: Box) -> None:
    raw = tar_bytes([f("a", os.urandom(300_000))])
    packed = gzip.compress(raw)
    with pytest.raises(InvalidArgument, match="truncated"):
        box.apply(packed[: len(packed) - 100])
    corrupt = bytearray(packed)
    corrupt[5000:5100] = bytes(100)
    with pytest.raises(InvalidArgument, match="gzip"):
        box.apply(bytes(corrupt))
    with pytest.raises(InvalidArgument, match="trailing garbage"):
        box.apply(packed + b"not gzip")
    with pytest.raises(InvalidArgument, match=r"unexpected end of data|invalid layer tar"):
        box.apply(raw[:100_000])
    bad_header = bytearray(tar_bytes([f("first"), f("second")]))
    bad_header[1024 + 148:1024 + 156] = b"0000000\0"  # second header's checksum
    with pytest.raises(InvalidArgument, match="invalid tar header"):
        box.apply(bytes(bad_header))
    with pytest.raises(InvalidArgument, match="zstd layer is truncated"):  # empty blocks, never a last one
        box.apply(b"\x28\xb5\x2f\xfd" + bytes(100))
    with pytest.raises(InvalidArgument, match="invalid zstd layer"):
        box.apply(b"\x28\xb5\x2f\xfd\x08" + bytes(100))  # a reserved bit
    zst = zstandard.ZstdCompressor().compress(raw)
    with pytest.raises(InvalidArgument, match="unexpected EOF: the zstd layer is truncated"):
        box.apply(zst[:len(zst) // 2])
    with pytest.raises(InvalidArgument, match="invalid zstd layer"):
        box.apply(zst + b"not zstd")


def test_header_records_are_bounded(box: Box) -> None:
    with pytest.raises(InvalidArgument, match="header record"):
        box.apply(tar_bytes([f("big", pax={"comment": "x" * (MAX_HEADER_RECORD + 1)})]))
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        info = tarfile.TarInfo("n" * (MAX_HEADER_RECORD + 10))
        tar.addfile(info, io.BytesIO(b""))
    with pytest.raises(InvalidArgument, match="header record"):
        box.apply(buf.getvalue())


def test_empty_layers(box: Box) -> None:
    assert box.apply(b"").entries == 0
    empty_tar = tar_bytes([])
    assert box.apply(empty_tar).diff_id == sha256(empty_tar)


def test_layer_reader_keeps_bombs_small() -> None:
    bomb = gzip.compress(bytes(64 << 20))  # 64 MiB of zeros in ~64 KiB
    reader = LayerReader(io.BytesIO(bomb))
    biggest = 0
    while chunk := reader.read(8 << 20):
        biggest = max(biggest, len(chunk))
    assert reader.size == 64 << 20 and biggest <= 1 << 20
