"""Platform parsing, normalisation and manifest-list selection (containerd's rules)."""

from __future__ import annotations

from typing import Any

import pytest

from protos.errors import InvalidArgument, NotFound
from registry_client.platforms import Platform, host_platform, parse, select


def test_parse_and_normalise() -> None:
    assert parse("linux/amd64") == Platform("linux", "amd64")
    assert parse("linux/x86_64") == Platform("linux", "amd64")
    assert parse("linux/arm64/v8") == parse("linux/aarch64") == Platform("linux", "arm64")
    assert parse("linux/arm") == Platform("linux", "arm", "v7")
    assert parse("linux/armhf") == Platform("linux", "arm", "v7")
    assert parse("linux/arm/6") == Platform("linux", "arm", "v6")
    assert parse("s390x") == Platform("linux", "s390x")
    assert parse("linux") == host_platform()
    assert str(Platform("linux", "arm", "v7")) == "linux/arm/v7"
    for bad in ("", "linux/", "linux/amd64/v3/x", "plan10/amd64", "linux/z80"):
        with pytest.raises(InvalidArgument, match="unknown operating system or architecture"):
            parse(bad)


def entry(digest: str, arch: str, variant: str = "", os_name: str = "linux", **extra: Any) -> dict[str, Any]:
    platform = {"os": os_name, "architecture": arch, **({"variant": variant} if variant else {})}
    return {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": digest, "size": 1,
            "platform": platform, **extra}


def test_select_prefers_the_best_compatible_variant() -> None:
    index = {"manifests": [
        entry("att", "unknown", os_name="unknown", annotations={"vnd.docker.reference.type": "attestation-manifest"}),
        entry("weird", "amd64", mediaType="application/vnd.example.other"),
        entry("v5", "arm", "v5"), entry("v6", "arm", "v6"), entry("v7", "arm", "v7"),
        entry("amd64-v3", "amd64", "v3"), entry("amd64", "amd64"), entry("amd64-again", "amd64"),
        entry("arm64", "arm64", "v8"),
    ]}
    assert select(index, Platform("linux", "arm", "v7"))["digest"] == "v7"
    assert select(index, Platform("linux", "arm", "v6"))["digest"] == "v6"  # a v6 host cannot run v7
    assert select(index, Platform("linux", "amd64"))["digest"] == "amd64"  # v3 needs a v3 CPU; first wins
    assert select(index, Platform("linux", "amd64", "v3"))["digest"] == "amd64-v3"
    assert select(index, Platform("linux", "arm64"))["digest"] == "arm64"  # v8 is arm64's only variant
    with pytest.raises(NotFound, match=r"^no matching manifest for linux/s390x in the manifest list entries$"):
        select(index, Platform("linux", "s390x"))
    with pytest.raises(NotFound):
        select({"manifests": [entry("v7", "arm", "v7")]}, Platform("linux", "arm", "v6"))
