"""Mutual TLS for the gRPC services between hosts (DESIGN.md §6).

Who checks what:

- a shim or snapshotter listening on TCP (``--tlscacert/--tlscert/--tlskey``) presents its
  certificate and requires a client certificate signed by the cluster CA
  (:meth:`TLSFiles.server_credentials`, :func:`add_port`); without them it serves plain TCP on
  loopback only (:func:`check_listener`);
- berthd connects to a node's TCP addresses with its own client certificate
  (``--node-tlscacert/--node-tlscert/--node-tlskey``, :meth:`TLSFiles.channel_credentials`) and
  checks the node's certificate against the same CA *and* against the host in the address it
  dials (an IP address needs an ``IP:`` subjectAltName, a name a ``DNS:`` one); without them it
  talks plain TCP to loopback only (:func:`check_target`).

Unix sockets stay plain on both sides: they are root-only files on the same host.

The files are PEM, as for dockerd's ``--tlscacert/--tlscert/--tlskey``. ``deploy/gen-tls.sh``
makes them: a certificate with ``extendedKeyUsage=serverAuth,clientAuth`` (its ``--node`` mode)
serves a node's services and identifies berthd to the nodes alike.
"""

from __future__ import annotations

import argparse
import ipaddress
from dataclasses import dataclass
from pathlib import Path

import grpc


@dataclass(frozen=True, slots=True)
class TLSFiles:
    """Paths of the CA that signs every peer, and of this side's certificate and private key."""

    cacert: str = ""
    cert: str = ""
    key: str = ""

    @property
    def enabled(self) -> bool:
        return bool(self.cacert and self.cert and self.key)

    def check(self, flag_prefix: str = "--") -> None:
        """All three paths or none, each an existing file; ``ValueError`` naming the flags if not."""
        given = [bool(self.cacert), bool(self.cert), bool(self.key)]
        if any(given) and not all(given):
            p = flag_prefix
            raise ValueError(f"{p}tlscacert, {p}tlscert and {p}tlskey go together: give all three or none")
        for path in (self.cacert, self.cert, self.key):
            if path and not Path(path).is_file():
                raise ValueError(f"TLS file not found: {path}")

    def _read(self) -> tuple[bytes, bytes, bytes]:
        return Path(self.cacert).read_bytes(), Path(self.cert).read_bytes(), Path(self.key).read_bytes()

    def server_credentials(self) -> grpc.ServerCredentials:
        """Serve with ``cert``/``key``; clients must present a certificate signed by ``cacert``."""
        ca, cert, key = self._read()
        return grpc.ssl_server_credentials([(key, cert)], root_certificates=ca, require_client_auth=True)

    def channel_credentials(self) -> grpc.ChannelCredentials:
        """Trust only ``cacert`` for the server, and present ``cert``/``key`` as the client."""
        ca, cert, key = self._read()
        return grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)


NO_TLS = TLSFiles()  # plain: unix sockets, and TCP on loopback


def is_tcp(address: str) -> bool:
    """``HOST:PORT`` (TCP) as opposed to ``unix:PATH`` or ``/PATH``."""
    return not (address.startswith("unix:") or address.startswith("/"))


def host_of(address: str) -> str:
    """The host of ``HOST:PORT`` or ``[IPv6]:PORT`` (an IPv6 address without brackets has no port)."""
    if address.startswith("["):
        return address[1:].partition("]")[0]
    return address.rpartition(":")[0] if address.count(":") == 1 else address


def is_loopback(address: str) -> bool:
    """Whether ``HOST:PORT`` names this host only (``localhost``, 127.0.0.0/8, ``::1``)."""
    host = host_of(address)
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name other than localhost may resolve to anything


def check_listener(address: str, tls: TLSFiles) -> None:
    """Plain TCP only on loopback: anything other hosts can reach needs mutual TLS."""
    if is_tcp(address) and not tls.enabled and not is_loopback(address):
        raise ValueError(f"refusing to serve without TLS on non-loopback address {address}: "
                         "give --tlscacert, --tlscert and --tlskey (mutual TLS), or listen on 127.0.0.1")


def check_target(address: str, tls_enabled: bool) -> None:
    """Plaintext to loopback only: a node's TCP address elsewhere needs client TLS configured."""
    if is_tcp(address) and not tls_enabled and not is_loopback(address):
        raise ValueError(f"refusing to connect without TLS to non-loopback address {address}: "
                         "configure --node-tlscacert, --node-tlscert and --node-tlskey")


def add_port(server: grpc.aio.Server, address: str, tls: TLSFiles) -> int:
    """Bind ``address`` (``unix:PATH`` or ``HOST:PORT``): TCP with mutual TLS when ``tls`` is
    set, plain otherwise (loopback only, see :func:`check_listener`). Returns the bound port, 0
    when grpc could not bind."""
    check_listener(address, tls)
    if is_tcp(address) and tls.enabled:
        return int(server.add_secure_port(address, tls.server_credentials()))
    return int(server.add_insecure_port(address))


def add_tls_arguments(parser: argparse.ArgumentParser) -> None:
    """A gRPC service's ``--tlscacert/--tlscert/--tlskey`` (see :func:`tls_from_arguments`)."""
    parser.add_argument("--tlscacert", default="", metavar="PEM",
                        help="CA whose signature clients' certificates must carry (mutual TLS on TCP)")
    parser.add_argument("--tlscert", default="", metavar="PEM",
                        help="this service's certificate; must name the host of --address (IP or DNS SAN)")
    parser.add_argument("--tlskey", default="", metavar="PEM", help="the key of --tlscert")


def tls_from_arguments(args: argparse.Namespace) -> TLSFiles:
    return TLSFiles(cacert=args.tlscacert, cert=args.tlscert, key=args.tlskey)
