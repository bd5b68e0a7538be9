"""The generated /etc files, word for word as Docker 28 writes them, and DNS messages."""

from __future__ import annotations

import socket
import struct

from shim.network import dns, etc
from shim.network.api import BridgeNetwork, Endpoint

HOST_RC = "# host\nnameserver 127.0.0.53\nnameserver 192.0.2.53\nsearch corp.test\noptions edns0\n"


def test_resolv_conf_legacy_drops_loopback_nameservers() -> None:
    rc = etc.ResolvConf.parse(HOST_RC, "/etc/resolv.conf")
    rc.legacy()
    assert rc.render() == (
        f"{etc.HEADER}\n\nnameserver 192.0.2.53\nsearch corp.test\noptions edns0\n\n"
        "# Based on host file: '/etc/resolv.conf' (legacy)\n# Overrides: []\n")


def test_resolv_conf_legacy_falls_back_to_default_servers() -> None:
    rc = etc.ResolvConf.parse("nameserver 127.0.0.53\n", "/etc/resolv.conf")
    rc.legacy()
    assert "nameserver 8.8.8.8\nnameserver 8.8.4.4\n" in rc.render()
    assert "# Used default nameservers.\n" in rc.render()


def test_resolv_conf_internal_resolver() -> None:
    rc = etc.ResolvConf.parse(HOST_RC, "/etc/resolv.conf")
    upstream = rc.internal()
    assert upstream == [("127.0.0.53", True), ("192.0.2.53", False)]
    assert rc.render() == (
        f"{etc.HEADER}\n\nnameserver 127.0.0.11\nsearch corp.test\noptions edns0 ndots:0\n\n"
        "# Based on host file: '/etc/resolv.conf' (internal resolver)\n"
        "# ExtServers: [host(127.0.0.53) 192.0.2.53]\n# Overrides: []\n# Option ndots from: internal\n")


def test_hosts_file() -> None:
    text = etc.hosts(hostname="web", domainname="example.test", extra_hosts=["db:192.0.2.9", "v6=[::1]"],
                     addresses=["10.0.0.2"])
    assert text.splitlines() == [
        "127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback", "fe00::0\tip6-localnet",
        "ff00::0\tip6-mcastprefix", "ff02::1\tip6-allnodes", "ff02::2\tip6-allrouters",
        "192.0.2.9\tdb", "::1\tv6", "10.0.0.2\tweb.example.test web"]


def _query(name: str, qtype: int) -> bytes:
    return struct.pack(">HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0) + dns.encode_name(name) + struct.pack(">HH", qtype, 1)


async def test_resolver_answers_names_of_its_networks_only() -> None:
    resolver = dns.Resolver()
    net = BridgeNetwork(id="n1", name="front", bridge="b", subnet="10.0.0.0/24", gateway="10.0.0.1",
                        embedded_dns=True)
    other = BridgeNetwork(id="n2", name="back", bridge="c", subnet="10.0.1.0/24", gateway="10.0.1.1",
                          embedded_dns=True)
    resolver.add_endpoint("a", Endpoint(net, "e1", "10.0.0.2", "02:42:0a:00:00:02", ("web", "alias")))
    resolver.add_endpoint("b", Endpoint(other, "e2", "10.0.1.2", "02:42:0a:00:01:02", ("db",)))
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    tcp.bind(("127.0.0.1", 0))
    tcp.listen()
    await resolver.serve("asker", udp, tcp, networks=["n1"], upstreams=[], external=False)
    try:
        for name in ("web", "alias", "web.front", "WEB"):
            reply = await resolver.answer("asker", _query(name, dns.TYPE_A), tcp=False)
            assert reply is not None and reply[3] & 0x0F == dns.RCODE_OK and reply[7] == 1
            assert reply.endswith(socket.inet_aton("10.0.0.2"))
        aaaa = await resolver.answer("asker", _query("web", dns.TYPE_AAAA), tcp=False)
        assert aaaa is not None and aaaa[3] & 0x0F == dns.RCODE_OK and aaaa[7] == 0
        ptr = await resolver.answer("asker", _query("2.0.0.10.in-addr.arpa", dns.TYPE_PTR), tcp=False)
        assert ptr is not None and ptr.endswith(dns.encode_name("web"))
        # Not on a network of the asker, and no upstream for an internal-only container.
        missing = await resolver.answer("asker", _query("db", dns.TYPE_A), tcp=False)
        assert missing is not None and missing[3] & 0x0F == dns.RCODE_SERVFAIL
    finally:
        await resolver.close()
