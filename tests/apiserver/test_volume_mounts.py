"""The mount-spec parser against moby's linux parser: what `-v`, `--mount`, `--tmpfs` and
`--volumes-from` become, and the exact error texts for bad specs."""

from __future__ import annotations

from pathlib import Path

import pytest

from apiserver.volumes import mounts
from apiserver.volumes.backend import _image_volume_destination, container_mounts
from protos.errors import InvalidArgument


def test_bind_and_volume_forms() -> None:
    bind = mounts.parse_bind("/host/dir:/ctr:ro,rslave")
    assert (bind.type, bind.source, bind.destination, bind.rw, bind.mode, bind.propagation) == (
        "bind", "/host/dir", "/ctr", False, "ro,rslave", "rslave")
    assert bind.create_source and bind.recursive
    assert mounts.parse_bind("/h:/c").propagation == "rprivate"  # the default for binds
    named = mounts.parse_bind("data:/var/lib/data")
    assert (named.type, named.name, named.mode, named.rw, named.copy_data, named.anonymous) == (
        "volume", "data", "z", True, True, False)
    assert mounts.parse_bind("data:/d:nocopy").copy_data is False
    anonymous = mounts.parse_bind("/only/target")
    assert (anonymous.type, anonymous.name, anonymous.anonymous) == ("volume", "", True)
    assert mounts.parse_bind("/a/../b:/c/./d/").destination == "/c/d"


@pytest.mark.parametrize(("raw", "message"), [
    ("", "invalid volume specification: ''"),
    ("/foo:rw", "invalid volume specification: '/foo:rw'"),
    ("a:b:c:d", "invalid volume specification: 'a:b:c:d'"),
    ("/a:/b:bogus", "invalid mode: bogus"),
    ("/a:/b:ro,rw", "invalid mode: ro,rw"),
    ("/a:b", "invalid volume specification: '/a:b': invalid mount config for type \"bind\": invalid mount path: "
             "'b' mount path must be absolute"),
    ("/a:/", "invalid volume specification: '/a:/': invalid mount config for type \"bind\": invalid "
             "specification: destination can't be '/'"),
    ("vol:/x:rshared", "invalid volume specification: 'vol:/x:rshared': invalid mount config for type \"volume\": "
                       "field BindOptions must not be specified"),
])
def test_bad_binds(raw: str, message: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        mounts.parse_bind(raw)
    assert caught.value.message == message


def test_mount_specs(tmp_path: Path) -> None:
    bind = mounts.parse_mount({"Type": "bind", "Source": str(tmp_path), "Target": "/b", "ReadOnly": True,
                               "BindOptions": {"Propagation": "rshared", "NonRecursive": True}})
    assert (bind.rw, bind.propagation, bind.recursive, bind.create_source, bind.mode) == (
        False, "rshared", False, False, "")
    volume = mounts.parse_mount({"Type": "volume", "Source": "v", "Target": "/v", "VolumeOptions": {
        "NoCopy": True, "DriverConfig": {"Name": "local", "Options": {"type": "tmpfs"}}, "Labels": {"a": "b"}}})
    assert (volume.name, volume.copy_data, volume.driver_options, volume.labels, volume.mode) == (
        "v", False, {"type": "tmpfs"}, {"a": "b"}, "z")
    tmpfs = mounts.parse_mount({"Type": "tmpfs", "Target": "/t", "TmpfsOptions": {
        "SizeBytes": 3 << 20, "Mode": 0o1777, "Options": [["exec"]]}})
    assert tmpfs.tmpfs_data == "mode=1777,size=3m,exec"
    assert mounts.tmpfs_data({"SizeBytes": 1000}, True) == "ro,size=1000"


@pytest.mark.parametrize(("spec", "message"), [
    ({"Type": "bind", "Source": "rel", "Target": "/x"},
     "invalid mount config for type \"bind\": invalid mount path: 'rel' mount path must be absolute"),
    ({"Type": "bind", "Source": "/no/such/berth/dir", "Target": "/x"},
     'invalid mount config for type "bind": bind source path does not exist: /no/such/berth/dir'),
    ({"Type": "bind", "Target": "/x"}, 'invalid mount config for type "bind": field Source must not be empty'),
    ({"Type": "volume", "Source": "v"}, 'invalid mount config for type "volume": field Target must not be empty'),
    ({"Type": "volume", "Target": "/x", "ReadOnly": True},
     'invalid mount config for type "volume": must not set ReadOnly mode when using anonymous volumes'),
    ({"Type": "tmpfs", "Source": "x", "Target": "/x"},
     'invalid mount config for type "tmpfs": field Source must not be specified'),
    ({"Type": "tmpfs", "Target": "/x", "TmpfsOptions": {"Options": [["suid"]]}},
     'invalid mount config for type "tmpfs": invalid option: suid'),
    ({"Type": "bogus", "Target": "/x"}, 'invalid mount config for type "bogus": mount type unknown'),
    ({"Type": "volume", "Source": "v", "Target": "/x", "VolumeOptions": {"Subpath": "../up"}},
     'invalid mount config for type "volume": subpath must be a relative path within the volume'),
])
def test_bad_mounts(spec: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        mounts.parse_mount(spec)
    assert caught.value.message == message


def test_volumes_from_tmpfs_and_image_volumes() -> None:
    assert mounts.parse_volumes_from("c") == ("c", "rw")
    assert mounts.parse_volumes_from("c:ro") == ("c", "ro")
    for bad in ("c:rshared", "c:nocopy", "c:bogus"):
        with pytest.raises(InvalidArgument, match="invalid mode"):
            mounts.parse_volumes_from(bad)
    with pytest.raises(InvalidArgument, match="volumes-from specification cannot be an empty string"):
        mounts.parse_volumes_from("")
    assert mounts.validate_tmpfs({"/run": "size=1m"}) == {"/run": "size=1m"}
    with pytest.raises(InvalidArgument) as caught:
        mounts.validate_tmpfs({"/": ""})
    assert caught.value.message == "invalid specification: destination can't be '/'"
    assert _image_volume_destination("/../../etc/x") == "/etc/x"
    with pytest.raises(InvalidArgument) as caught:
        _image_volume_destination("../etc")
    assert caught.value.message.endswith("invalid mount path: '../etc' mount path must be absolute")


def test_records_round_trip_and_views() -> None:
    bind = mounts.parse_bind("/h:/c:ro")
    again = mounts.MountPoint.from_record(bind.to_record())
    assert again == bind
    assert mounts.view(bind.to_record()) == {"Type": "bind", "Source": "/h", "Destination": "/c", "Mode": "ro",
                                             "RW": False, "Propagation": "rprivate"}
    shim = container_mounts([bind, mounts.parse_bind("v:/v")], {"/run": "size=1m"})
    assert [(m.type, m.destination, m.source, m.readonly) for m in shim] == [
        ("bind", "/c", "/h", True), ("volume", "/v", "v", False), ("tmpfs", "/run", "", False)]
    assert mounts.from_volume_of(mounts.parse_bind("v:/v"), "ro").rw is False
