"""The supervisor's planning of users' mounts: option parsing as moby/sys/mount does it, the
mount table lookups behind propagation checks, and the steps a container's child gets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from common import linux
from shim.api import ContainerMount
from shim.supervisor import user_mounts

MOUNTINFO = """\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
40 22 0:35 / /mnt/shared rw shared:7 - tmpfs tmpfs rw
41 22 0:36 / /mnt/private rw - tmpfs tmpfs rw
42 22 0:37 / /mnt/slave rw master:7 - tmpfs tmpfs rw
43 22 0:38 / /mnt/with\\040space rw - tmpfs tmpfs rw
"""


def test_option_words() -> None:
    flags, data = user_mounts.parse_options("ro,nosuid,size=10m,bind,uid=5")
    assert flags == linux.MS_RDONLY | linux.MS_NOSUID | linux.MS_BIND and data == "size=10m,uid=5"
    flags, data = user_mounts.parse_options("ro,rw")
    assert flags == 0 and data == ""  # later words win
    flags, data = user_mounts.tmpfs_options("size=1m,exec,rprivate")
    assert flags == linux.MS_NOSUID | linux.MS_NODEV and data == "size=1m"  # exec lifts noexec
    flags, _ = user_mounts.tmpfs_options("")
    assert flags == linux.MS_NOSUID | linux.MS_NODEV | linux.MS_NOEXEC


def test_mount_table_lookups() -> None:
    assert user_mounts.mount_point_of("/mnt/shared/x/y", MOUNTINFO) == ("/mnt/shared", "shared:7")
    assert user_mounts.mount_point_of("/mnt/sharedness", MOUNTINFO)[0] == "/"  # a prefix is not a parent
    assert user_mounts.mount_point_of("/mnt/with space/f", MOUNTINFO)[0] == "/mnt/with space"
    assert user_mounts.mount_point_of("/etc", MOUNTINFO) == ("/", "shared:1")


def test_plan_sorts_by_depth_and_prepares_sources(tmp_path: Path) -> None:
    root = tmp_path / "volumes"
    (root / "v" / "_data").mkdir(parents=True)
    missing = tmp_path / "made" / "here"
    steps, propagation = user_mounts.plan((
        ContainerMount(type="bind", destination="/a/b/c", source=str(missing), create_source=True),
        ContainerMount(type="volume", destination="/a", source="v", readonly=True),
        ContainerMount(type="tmpfs", destination="/a/b", data="size=1m"),
    ), root)
    assert [s.destination for s in steps] == ["/a", "/a/b", "/a/b/c"]
    assert steps[0].source == str(root / "v" / "_data") and steps[0].readonly
    assert steps[1].kind == "tmpfs" and steps[1].data == "size=1m"
    assert missing.is_dir() and propagation == linux.MS_PRIVATE  # -v made the source, as dockerd does
    with pytest.raises(user_mounts.MountError, match="bind source path does not exist"):
        user_mounts.plan((ContainerMount(type="bind", destination="/x", source=str(tmp_path / "absent")),), root)
    with pytest.raises(user_mounts.MountError, match="has no data directory"):
        user_mounts.plan((ContainerMount(type="volume", destination="/x", source="gone"),), root)


def test_volume_options_are_read_from_the_volume(tmp_path: Path) -> None:
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "opts.json").write_text(json.dumps({"type": "tmpfs", "device": "tmpfs", "o": "size=1m"}))
    assert user_mounts.read_volume_options(tmp_path, "t") == {"type": "tmpfs", "device": "tmpfs", "o": "size=1m"}
    assert user_mounts.read_volume_options(tmp_path, "plain") == {}
    assert user_mounts.late("/dev/shm") and user_mounts.late("/proc") and not user_mounts.late("/devices")
