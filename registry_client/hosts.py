"""Per-registry transport settings, as dockerd has them: which registries are insecure and which
certificates to use for each.

* ``--insecure-registry`` entries are ``host[:port]`` names or CIDRs. An insecure registry is
  tried over HTTPS *without* certificate verification first, then over plain HTTP (dockerd's
  ``newTLSConfig``: ``InsecureSkipVerify = !secure``). dockerd always adds ``127.0.0.0/8`` and
  ``::1/128``; :func:`insecure_matcher` does too unless told not to. Unlike dockerd we do not
  resolve names to match them against CIDRs (a blocking lookup per request, and DNS deciding
  whether TLS is checked); ``localhost`` is the one name taken as loopback.
* ``certs.d`` (``/etc/docker/certs.d`` semantics): ``DIR/<host:port>/*.crt`` are extra CAs
  trusted for that registry (on top of the system ones); ``X.cert`` + ``X.key`` is a client
  certificate sent to it. A certificate without its key (or the reverse) is an error, as in
  dockerd's ``ReadCertsDirectory``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import re
import ssl
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import structlog

from protos.errors import InvalidArgument

LOOPBACK = ("127.0.0.0/8", "::1/128")
_HOST = re.compile(r"(?:[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?")

log = structlog.get_logger()


def _hostname(host: str) -> str:
    """``host[:port]`` → the bare host (IPv6 brackets removed)."""
    if host.startswith("["):
        return host[1:host.find("]")] if "]" in host else host
    if host.count(":") == 1:
        return host.split(":", 1)[0]
    return host


def insecure_matcher(entries: Iterable[str], *, loopback: bool = True) -> Callable[[str], bool]:
    """A predicate over ``host[:port]``: true for the registries ``entries`` name (exactly, or
    by an address inside one of their CIDRs). Malformed entries raise ``InvalidArgument``."""
    names: set[str] = set()
    networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
    for entry in (*entries, *(LOOPBACK if loopback else ())):
        if "://" in entry:
            raise InvalidArgument(f"insecure registry {entry} should not contain '://'")
        if "/" in entry:
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                raise InvalidArgument(f"insecure registry {entry} is not a valid CIDR") from None
        elif _HOST.fullmatch(entry):
            names.add(entry.lower())
        else:
            raise InvalidArgument(f"insecure registry {entry} is not a valid host[:port] or CIDR")

    def insecure(host: str) -> bool:
        host = host.lower()
        if host in names:  # dockerd matches names exactly: "myreg" does not cover "myreg:5000"
            return True
        bare = _hostname(host)
        if bare == "localhost":
            bare = "127.0.0.1"
        try:
            ip = ipaddress.ip_address(bare)
        except ValueError:
            return False
        return any(ip in net for net in networks)

    return insecure


class RegistryTLS:
    """SSL contexts per registry host from ``certs_dir``, rebuilt when the host's directory
    changes (dockerd reads it on every operation, so adding a CA needs no restart); files are
    read off the loop."""

    def __init__(self, *, insecure: Callable[[str], bool], certs_dir: Path | None) -> None:
        self._insecure = insecure
        self._certs_dir = certs_dir
        self._contexts: dict[str, tuple[tuple[tuple[str, int, int], ...], ssl.SSLContext]] = {}

    async def context(self, host: str) -> ssl.SSLContext:
        signature = await asyncio.to_thread(self._signature, host)
        cached = self._contexts.get(host)
        if cached is not None and cached[0] == signature:
            return cached[1]
        ctx = await asyncio.to_thread(self._build, host)
        self._contexts[host] = (signature, ctx)
        return ctx

    def _directory(self, host: str) -> Path | None:
        if self._certs_dir is None or not _HOST.fullmatch(host):
            return None  # a realm host from a challenge could be anything: never a path
        return self._certs_dir / host

    def _signature(self, host: str) -> tuple[tuple[str, int, int], ...]:
        directory = self._directory(host)
        try:
            with os.scandir(directory) if directory is not None else _nothing() as entries:
                return tuple(sorted((e.name, e.stat().st_mtime_ns, e.stat().st_size) for e in entries))
        except (FileNotFoundError, NotADirectoryError):
            return ()

    def _build(self, host: str) -> ssl.SSLContext:
        ctx = ssl.create_default_context()
        if self._insecure(host):
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        directory = self._directory(host)
        if directory is None or not directory.is_dir():
            return ctx
        files = sorted(p.name for p in directory.iterdir())
        for name in files:
            path = directory / name
            if name.endswith(".crt"):
                ctx.load_verify_locations(cafile=str(path))
            elif name.endswith(".cert"):
                key = name[:-len(".cert")] + ".key"
                if key not in files:
                    raise InvalidArgument(f"missing key {key} for client certificate {name}")
                ctx.load_cert_chain(str(path), str(directory / key))
            elif name.endswith(".key") and name[:-len(".key")] + ".cert" not in files:
                raise InvalidArgument(f"missing client certificate {name[:-len('.key')]}.cert for key {name}")
        log.debug("registry_tls_loaded", host=host, files=files)
        return ctx


@contextlib.contextmanager
def _nothing() -> Iterator[list[os.DirEntry[str]]]:
    yield []
