"""berthd's configuration: dockerd's flags where they overlap, plus a ``daemon.json``-style file.

As dockerd does, a directive given both as a flag and in the configuration file is an error.

Two sets of TLS files: ``--tlscacert/--tlscert/--tlskey`` are the API's (dockerd's meaning);
``--node-tlscacert/--node-tlscert/--node-tlskey`` (daemon.json ``node-tlscacert`` …) are what berthd
presents to the nodes' shims and snapshotters on TCP, and the CA it checks their certificates
against (mutual TLS, DESIGN.md §6).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.grpc_tls import TLSFiles

DEFAULT_SOCKET = "unix:///run/berth/berth.sock"


class ConfigError(Exception):
    """A configuration problem berthd reports and exits on (exit code 1, like dockerd)."""


@dataclass(frozen=True, slots=True)
class TLSConfig:
    enabled: bool = False
    verify: bool = False
    cacert: str = ""
    cert: str = ""
    key: str = ""


@dataclass(frozen=True, slots=True)
class DaemonConfig:
    hosts: tuple[str, ...] = (DEFAULT_SOCKET,)
    data_root: Path = Path("/var/lib/berth")
    exec_root: Path = Path("/run/berth")
    pidfile: Path = Path("/run/berth/berthd.pid")
    tls: TLSConfig = field(default_factory=TLSConfig)
    # client side of the mutual TLS to nodes' shims and snapshotters on TCP
    node_tls: TLSFiles = field(default_factory=TLSFiles)
    allow_insecure_tcp: bool = False
    log_level: str = "info"
    debug: bool = False
    redis_url: str = ""
    redis_namespace: str = "berth"
    cgroup_parent: str = "berth"
    labels: tuple[str, ...] = ()
    shutdown_timeout: int = 15
    group: str = "berth"
    node_id: str = ""
    insecure_registries: tuple[str, ...] = ()
    max_build_context: int = 4 * 1024 * 1024 * 1024
    registry_certs_dir: Path = Path("/etc/berth/certs.d")
    # networking (dockerd's --bridge/--bip/--default-address-pool; the rest are Berth's names
    # on the host, so two Berths, or test sessions, never meet)
    bridge: str = "berth0"
    bip: str = ""
    default_address_pools: tuple[str, ...] = ()
    bridge_prefix: str = "br-"
    veth_prefix: str = "veth"
    nft_table: str = "berth"
    resolv_conf: Path = Path("/etc/resolv.conf")

    @property
    def embedded(self) -> bool:
        """No cluster configuration: berthd runs its own Redis, shim and snapshotter."""
        return not self.redis_url


# flag dest → daemon.json key
_FILE_KEYS = {
    "hosts": "hosts", "data_root": "data-root", "exec_root": "exec-root", "pidfile": "pidfile",
    "tls": "tls", "tlsverify": "tlsverify", "tlscacert": "tlscacert", "tlscert": "tlscert", "tlskey": "tlskey",
    "node_tlscacert": "node-tlscacert", "node_tlscert": "node-tlscert", "node_tlskey": "node-tlskey",
    "log_level": "log-level", "debug": "debug", "redis_url": "redis-url", "redis_namespace": "redis-namespace",
    "cgroup_parent": "cgroup-parent", "labels": "labels", "shutdown_timeout": "shutdown-timeout",
    "group": "group", "allow_insecure_tcp": "allow-insecure-tcp", "node_id": "node-id",
    "insecure_registries": "insecure-registries", "registry_certs_dir": "registry-certs-dir",
    "max_build_context": "max-build-context",
    "bridge": "bridge", "bip": "bip", "default_address_pools": "default-address-pools",
    "bridge_prefix": "bridge-prefix", "veth_prefix": "veth-prefix", "nft_table": "nft-table",
    "resolv_conf": "resolv-conf",
}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="berthd", description="Berth: a Docker-compatible container engine.")
    p.add_argument("-H", "--host", dest="hosts", action="append", default=None,
                   help="daemon socket(s) to listen on: unix:///path or tcp://host:port (repeatable)")
    p.add_argument("--data-root", dest="data_root", default=None, help="root of persistent state")
    p.add_argument("--exec-root", dest="exec_root", default=None, help="root of runtime state (sockets, pids)")
    p.add_argument("-p", "--pidfile", dest="pidfile", default=None, help="path of the daemon PID file")
    p.add_argument("--tls", dest="tls", action="store_true", default=None, help="use TLS; implied by --tlsverify")
    p.add_argument("--tlsverify", dest="tlsverify", action="store_true", default=None,
                   help="use TLS and require client certificates signed by --tlscacert")
    p.add_argument("--tlscacert", dest="tlscacert", default=None, help="CA that signs client certificates")
    p.add_argument("--tlscert", dest="tlscert", default=None, help="server certificate")
    p.add_argument("--tlskey", dest="tlskey", default=None, help="server key")
    p.add_argument("--node-tlscacert", dest="node_tlscacert", default=None,
                   help="CA that signs the nodes' shim and snapshotter certificates (mutual TLS to nodes on TCP)")
    p.add_argument("--node-tlscert", dest="node_tlscert", default=None,
                   help="client certificate berthd presents to the nodes' shims and snapshotters")
    p.add_argument("--node-tlskey", dest="node_tlskey", default=None, help="key of --node-tlscert")
    p.add_argument("--allow-insecure-tcp", dest="allow_insecure_tcp", action="store_true", default=None,
                   help="allow TCP listeners beyond loopback without --tlsverify (gives root to the network)")
    p.add_argument("-l", "--log-level", dest="log_level", default=None,
                   choices=["debug", "info", "warn", "error", "fatal"], help="logging level")
    p.add_argument("-D", "--debug", dest="debug", action="store_true", default=None, help="debug mode")
    p.add_argument("--config-file", dest="config_file", default="/etc/berth/daemon.json",
                   help="daemon configuration file (JSON)")
    p.add_argument("--redis-url", dest="redis_url", default=None,
                   help="join a cluster through this Redis instead of running an embedded one")
    p.add_argument("--redis-namespace", dest="redis_namespace", default=None, help="key prefix in Redis")
    p.add_argument("--cgroup-parent", dest="cgroup_parent", default=None, help="parent cgroup of containers")
    p.add_argument("--label", dest="labels", action="append", default=None, help="daemon label key=value")
    p.add_argument("--shutdown-timeout", dest="shutdown_timeout", type=int, default=None,
                   help="seconds to wait for containers to stop on shutdown")
    p.add_argument("-G", "--group", dest="group", default=None, help="group owning the unix socket")
    p.add_argument("--node-id", dest="node_id", default=None, help="node id of the embedded host services")
    p.add_argument("--insecure-registry", dest="insecure_registries", action="append", default=None,
                   help="registry (host[:port] or CIDR) that may be reached over plain HTTP (loopback always may)")
    p.add_argument("--registry-certs-dir", dest="registry_certs_dir", default=None,
                   help="per-registry TLS material: DIR/<host:port>/{ca.crt,client.cert,client.key}")
    p.add_argument("-b", "--bridge", dest="bridge", default=None, help="name of the default bridge (berth0)")
    p.add_argument("--bip", dest="bip", default=None,
                   help="address/prefix of the default bridge (default: a free subnet, never 172.17.0.0/16)")
    p.add_argument("--default-address-pool", dest="default_address_pools", action="append", default=None,
                   help="pool of subnets for new networks: base=CIDR,size=N (repeatable)")
    p.add_argument("--bridge-prefix", dest="bridge_prefix", default=None,
                   help="name prefix of user-defined networks' bridges (br-)")
    p.add_argument("--veth-prefix", dest="veth_prefix", default=None, help="name prefix of host-side veths (veth)")
    p.add_argument("--nft-table", dest="nft_table", default=None, help="name of Berth's nftables table (berth)")
    p.add_argument("--resolv-conf", dest="resolv_conf", default=None,
                   help="resolver configuration containers' resolv.conf is built from (/etc/resolv.conf)")
    p.add_argument("--max-build-context", dest="max_build_context", default=None,
                   help="largest build context accepted (bytes, or with k/m/g), 4g by default")
    p.add_argument("-v", "--version", dest="version", action="store_true", help="print the version and exit")
    return p


def load(argv: list[str]) -> tuple[DaemonConfig, bool]:
    """Parse flags and the config file; returns (config, version_requested)."""
    args = parser().parse_args(argv)
    flags = {k: v for k, v in vars(args).items() if v is not None and k not in ("config_file", "version")}
    from_file: dict[str, Any] = {}
    config_path = Path(args.config_file)
    explicit_file = "--config-file" in " ".join(argv)
    if config_path.exists():
        try:
            from_file = json.loads(config_path.read_text() or "{}")
        except json.JSONDecodeError as exc:
            raise ConfigError(f"unable to configure the daemon with file {config_path}: {exc}") from None
        if not isinstance(from_file, dict):
            raise ConfigError(f"unable to configure the daemon with file {config_path}: not a JSON object")
    elif explicit_file:
        raise ConfigError(f"unable to configure the Docker daemon with file {config_path}: "
                          "open: no such file or directory")
    reverse = {v: k for k, v in _FILE_KEYS.items()}
    unknown = [k for k in from_file if k not in reverse]
    if unknown:
        raise ConfigError(f"the following directives don't match any configuration option: {', '.join(unknown)}")
    both = sorted(_FILE_KEYS[k] for k in flags if k in _FILE_KEYS and _FILE_KEYS[k] in from_file)
    if both:
        raise ConfigError("the following directives are specified both as a flag and in the configuration "
                          f"file: {', '.join(both)}")
    merged: dict[str, Any] = {reverse[k]: v for k, v in from_file.items()}
    merged.update(flags)
    return build(merged), bool(args.version)


def build(values: dict[str, Any]) -> DaemonConfig:
    default = DaemonConfig()
    tlsverify = bool(values.get("tlsverify"))
    tls = TLSConfig(
        enabled=bool(values.get("tls")) or tlsverify, verify=tlsverify,
        cacert=str(values.get("tlscacert") or ""), cert=str(values.get("tlscert") or ""),
        key=str(values.get("tlskey") or ""))
    if tls.enabled and not (tls.cert and tls.key):
        raise ConfigError("could not load X509 key pair: --tlscert and --tlskey are required with --tls")
    if tls.verify and not tls.cacert:
        raise ConfigError("--tlsverify requires --tlscacert")
    node_tls = TLSFiles(cacert=str(values.get("node_tlscacert") or ""), cert=str(values.get("node_tlscert") or ""),
                        key=str(values.get("node_tlskey") or ""))
    try:
        node_tls.check(flag_prefix="--node-")
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    hosts = tuple(values.get("hosts") or default.hosts)
    return DaemonConfig(
        hosts=hosts,
        data_root=Path(values.get("data_root") or default.data_root),
        exec_root=Path(values.get("exec_root") or default.exec_root),
        pidfile=Path(values.get("pidfile") or (Path(values["exec_root"]) / "berthd.pid"
                                                if values.get("exec_root") else default.pidfile)),
        tls=tls,
        node_tls=node_tls,
        allow_insecure_tcp=bool(values.get("allow_insecure_tcp")),
        log_level="debug" if values.get("debug") else str(values.get("log_level") or default.log_level),
        debug=bool(values.get("debug")),
        redis_url=str(values.get("redis_url") or ""),
        redis_namespace=str(values.get("redis_namespace") or default.redis_namespace),
        cgroup_parent=str(values.get("cgroup_parent") or default.cgroup_parent),
        labels=tuple(values.get("labels") or ()),
        shutdown_timeout=int(values.get("shutdown_timeout", default.shutdown_timeout)),
        group=str(values.get("group") or default.group),
        node_id=str(values.get("node_id") or ""),
        insecure_registries=tuple(values.get("insecure_registries") or ()),
        registry_certs_dir=Path(values.get("registry_certs_dir") or default.registry_certs_dir),
        max_build_context=_size(values.get("max_build_context"), default.max_build_context),
        bridge=_name(values.get("bridge") or default.bridge, "bridge", 15),
        bip=str(values.get("bip") or ""),
        default_address_pools=tuple(values.get("default_address_pools") or ()),
        bridge_prefix=_name(values.get("bridge_prefix") or default.bridge_prefix, "bridge-prefix", 11),
        veth_prefix=_name(values.get("veth_prefix") or default.veth_prefix, "veth-prefix", 11),
        nft_table=_name(values.get("nft_table") or default.nft_table, "nft-table", 32),
        resolv_conf=Path(values.get("resolv_conf") or default.resolv_conf),
    )


def _name(value: str, flag: str, limit: int) -> str:
    """Names that reach the host (interfaces, nft tables): short, no separators or spaces."""
    if not value or len(value) > limit or any(c in value for c in "/ :\t\n"):
        raise ConfigError(f"invalid --{flag} {value!r}: at most {limit} characters, no '/', ':' or spaces")
    return value


def _size(value: object, default: int) -> int:
    """``1024``, ``64k``, ``100m``, ``4g`` → bytes."""
    if value is None or value == "":
        return default
    text = str(value).strip().lower()
    units = {"k": 1024, "m": 1024 ** 2, "g": 1024 ** 3}
    try:
        if text[-1] in units:
            return int(float(text[:-1]) * units[text[-1]])
        return int(text)
    except (ValueError, IndexError):
        raise ConfigError(f"invalid size: {value}") from None
