"""The API's listeners: unix sockets (root or the berth group only) and TCP, with TLS as dockerd
does it (``--tlsverify``: client certificates signed by ``--tlscacert`` are required).

Plain TCP is allowed on loopback only; anything else needs ``--tlsverify`` or the explicit
``--allow-insecure-tcp`` flag, which logs dockerd's warnings.
"""

from __future__ import annotations

import grp
import ipaddress
import os
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import structlog
from aiohttp import web

from apiserver.config import ConfigError, DaemonConfig, TLSConfig

log = structlog.get_logger()


@dataclass(frozen=True, slots=True)
class Endpoint:
    scheme: str  # "unix" | "tcp"
    path: str = ""
    host: str = ""
    port: int = 0


def parse_host(raw: str, tls: bool) -> Endpoint:
    """``unix:///p``, ``tcp://h:p``, ``tcp://:p`` or ``h:p`` (dockerd's -H forms)."""
    if raw.startswith("unix://"):
        path = raw[len("unix://"):]
        if not path:
            raise ConfigError(f"invalid unix socket address: {raw}")
        return Endpoint("unix", path=path)
    if raw.startswith("fd://"):
        raise ConfigError("fd:// listeners (systemd socket activation) are not supported by berthd")
    if "://" not in raw:
        raw = "tcp://" + raw
    parts = urlsplit(raw)
    if parts.scheme != "tcp":
        raise ConfigError(f"invalid bind address format: {raw}")
    host = parts.hostname or "127.0.0.1"
    port = parts.port or (2376 if tls else 2375)
    return Endpoint("tcp", host=host, port=port)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_tcp_policy(endpoint: Endpoint, cfg: DaemonConfig, *, warn: bool = True) -> None:
    if endpoint.scheme != "tcp" or cfg.tls.verify or is_loopback(endpoint.host):
        return
    if not cfg.allow_insecure_tcp:
        raise ConfigError(
            f"refusing to listen on tcp://{endpoint.host}:{endpoint.port} without --tlsverify: anyone who can "
            "reach that address would get root on this host. Use --tlsverify (with --tlscacert, --tlscert, "
            "--tlskey), bind to 127.0.0.1, or pass --allow-insecure-tcp if you really mean it")
    if not warn:
        return
    log.warning("Binding to IP address without --tlsverify is insecure and gives root access on this machine "
                "to everyone who has access to your network.", host=endpoint.host)
    log.warning("Binding to an IP address, even on localhost, can also give access to scripts run in a browser. "
                "Be safe out there!")


def server_ssl_context(tls: TLSConfig) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(tls.cert, tls.key)
        if tls.verify:
            ctx.load_verify_locations(cafile=tls.cacert)
            ctx.verify_mode = ssl.CERT_REQUIRED
        else:
            ctx.verify_mode = ssl.CERT_NONE
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"could not load TLS material: {exc}") from None
    return ctx


def _prepare_unix_path(path: str) -> None:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    if p.is_socket() or p.exists():
        # A live daemon still answering there means a second berthd on the same socket.
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(path)
        except OSError:
            p.unlink()
        else:
            raise ConfigError(f"another daemon is listening on {path}")
        finally:
            probe.close()


def _secure_unix_socket(path: str, group: str) -> None:
    gid = 0
    try:
        gid = grp.getgrnam(group).gr_gid
    except KeyError:
        pass
    os.chown(path, 0, gid)
    os.chmod(path, 0o660)


def validate_listeners(cfg: DaemonConfig) -> None:
    """Every -H parses, TCP listeners obey the TLS policy, TLS material loads."""
    if cfg.tls.enabled:
        server_ssl_context(cfg.tls)
    for raw in cfg.hosts:
        check_tcp_policy(parse_host(raw, cfg.tls.enabled), cfg, warn=False)


async def start_sites(runner: web.AppRunner, cfg: DaemonConfig) -> list[web.BaseSite]:
    sites: list[web.BaseSite] = []
    ssl_ctx = server_ssl_context(cfg.tls) if cfg.tls.enabled else None
    for raw in cfg.hosts:
        endpoint = parse_host(raw, cfg.tls.enabled)
        site: web.BaseSite
        if endpoint.scheme == "unix":
            _prepare_unix_path(endpoint.path)
            site = web.UnixSite(runner, endpoint.path)
            await site.start()
            _secure_unix_socket(endpoint.path, cfg.group)
        else:
            check_tcp_policy(endpoint, cfg)
            site = web.TCPSite(runner, endpoint.host, endpoint.port, ssl_context=ssl_ctx, reuse_address=True)
            await site.start()
        log.info("api_listening", address=raw, tls=bool(ssl_ctx and endpoint.scheme == "tcp"))
        sites.append(site)
    return sites
