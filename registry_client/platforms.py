"""Platforms (``os/arch[/variant]``) as containerd's ``platforms`` package normalises and matches
them, reduced to what a Linux host needs: parsing ``--platform``, this host's platform, and
picking the manifest of a manifest list / OCI index.

Matching: same OS and architecture; variants by compatibility — an ``arm/v7`` host runs v6 and
v5 too, ``amd64/v3`` runs v2 and v1, ``arm64`` has only v8 (written as no variant). The best
variant wins; between equals, the first entry (image-spec: "the first matching entry SHOULD be
used"). Attestation manifests (BuildKit's ``unknown/unknown``) and entries of unknown media types
are skipped.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from protos.errors import InvalidArgument, NotFound

_ARCH_ALIASES = {"x86_64": "amd64", "x86-64": "amd64", "aarch64": "arm64", "armhf": "arm", "armel": "arm",
                 "i386": "386", "i686": "386"}
_ARCH_VARIANT = {"armhf": "v7", "armel": "v6"}
_KNOWN_OS = {"linux", "windows", "darwin", "freebsd", "netbsd", "openbsd", "solaris", "illumos", "aix",
             "plan9", "android", "ios", "js", "wasip1", "dragonfly"}
_KNOWN_ARCH = {"amd64", "arm64", "arm", "386", "ppc64le", "ppc64", "s390x", "riscv64", "mips64le", "mips64",
               "mipsle", "mips", "loong64", "wasm"}
_MACHINE = {"x86_64": ("amd64", ""), "aarch64": ("arm64", ""), "armv7l": ("arm", "v7"), "armv6l": ("arm", "v6"),
            "i686": ("386", ""), "ppc64le": ("ppc64le", ""), "s390x": ("s390x", ""), "riscv64": ("riscv64", "")}
MANIFEST_MEDIA_TYPES = ("application/vnd.oci.image.manifest.v1+json",
                        "application/vnd.docker.distribution.manifest.v2+json")


@dataclass(frozen=True, slots=True)
class Platform:
    os: str
    architecture: str
    variant: str = ""

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)


def normalize(os_name: str, arch: str, variant: str = "") -> Platform:
    os_name, arch, variant = os_name.lower(), arch.lower(), variant.lower()
    variant = variant or _ARCH_VARIANT.get(arch, "")
    arch = _ARCH_ALIASES.get(arch, arch)
    if variant.isdigit():
        variant = "v" + variant
    if arch == "arm64" and variant in ("v8", "8"):
        variant = ""
    elif arch == "arm" and not variant:
        variant = "v7"
    elif arch == "amd64" and variant == "v1":
        variant = ""
    return Platform(os_name, arch, variant)


def host_platform() -> Platform:
    machine = os.uname().machine
    arch, variant = _MACHINE.get(machine, (machine, ""))
    return normalize("linux", arch, variant)


def parse(spec: str) -> Platform:
    """``linux``, ``amd64``, ``linux/arm64``, ``linux/arm/v7`` → a normalised platform."""
    parts = spec.strip().split("/")
    host = host_platform()
    bad = InvalidArgument(f'"{spec}": unknown operating system or architecture: invalid argument')
    if not spec.strip() or len(parts) > 3 or not all(parts):
        raise bad
    if len(parts) == 1:
        word = parts[0].lower()
        if word in _KNOWN_OS:
            return host if word == host.os else normalize(word, host.architecture)
        if _ARCH_ALIASES.get(word, word) in _KNOWN_ARCH:
            return normalize("linux", word)
        raise bad
    platform = normalize(*parts)
    if platform.os not in _KNOWN_OS or platform.architecture not in _KNOWN_ARCH:
        raise bad
    return platform


def _level(variant: str) -> int:
    return int(variant[1:]) if variant[1:].isdigit() else -1


def _rank(wanted: Platform, offered: Platform) -> int | None:
    """None if ``offered`` cannot run on ``wanted``; else lower is better."""
    if (offered.os, offered.architecture) != (wanted.os, wanted.architecture):
        return None
    if offered.variant == wanted.variant:
        return 0
    if wanted.architecture in ("arm", "amd64"):
        base = 7 if wanted.architecture == "arm" else 1
        have = _level(wanted.variant) if wanted.variant else base
        offer = _level(offered.variant) if offered.variant else (base if wanted.architecture == "amd64" else -1)
        if 0 <= offer <= have:
            return 1 + have - offer
        return None
    return 1 if not offered.variant else None


def select(index: Mapping[str, Any], wanted: Platform) -> Mapping[str, Any]:
    """The descriptor in ``index["manifests"]`` that best runs on ``wanted``; ``NotFound`` with
    Docker's text if none does."""
    best: tuple[int, int] | None = None
    chosen: Mapping[str, Any] | None = None
    entries = index.get("manifests")
    for position, entry in enumerate(entries if isinstance(entries, list) else []):
        if not isinstance(entry, dict):
            continue
        annotations = entry.get("annotations")
        if isinstance(annotations, dict) and annotations.get("vnd.docker.reference.type") == "attestation-manifest":
            continue
        media_type = entry.get("mediaType")
        if media_type and media_type not in MANIFEST_MEDIA_TYPES:
            continue
        platform = entry.get("platform")
        if not isinstance(platform, dict):
            continue
        offered = normalize(str(platform.get("os", "")), str(platform.get("architecture", "")),
                            str(platform.get("variant", "") or ""))
        rank = _rank(wanted, offered)
        if rank is not None and (best is None or (rank, position) < best):
            best, chosen = (rank, position), entry
    if chosen is None:
        raise NotFound(f"no matching manifest for {wanted} in the manifest list entries")
    return chosen
