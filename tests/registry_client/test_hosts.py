"""Insecure registries and per-registry TLS from a certs.d directory."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from protos.errors import InvalidArgument
from registry_client.hosts import RegistryTLS, insecure_matcher
from tests.support.tls import make_tls


def test_insecure_matching_follows_dockerd() -> None:
    insecure = insecure_matcher(["10.1.0.0/16", "myreg:5000", "plain.example"])
    for host in ("127.0.0.1:5000", "127.3.4.5", "[::1]:5000", "localhost:5000", "10.1.2.3:443", "myreg:5000",
                 "plain.example", "MyReg:5000"):
        assert insecure(host), host
    for host in ("myreg:5001", "myreg", "plain.example:5000", "10.2.0.1", "registry-1.docker.io", "[::2]:5000"):
        assert not insecure(host), host
    strict = insecure_matcher([], loopback=False)
    assert not strict("127.0.0.1:5000")


@pytest.mark.parametrize("entry", ["http://myreg:5000", "10.0.0.0/33", "my reg", "a/b", ""])
def test_bad_insecure_entries(entry: str) -> None:
    with pytest.raises(InvalidArgument, match="insecure registry"):
        insecure_matcher([entry])


async def test_certs_dir_contexts(tmp_path: Path) -> None:
    tls = make_tls(tmp_path / "pki")
    certs = tmp_path / "certs.d"
    host = "127.0.0.1:5000"
    registry_tls = RegistryTLS(insecure=lambda h: h == "insecure:1", certs_dir=certs)
    plain = await registry_tls.context(host)
    assert plain.verify_mode == ssl.CERT_REQUIRED and plain.check_hostname
    assert (await registry_tls.context("insecure:1")).verify_mode == ssl.CERT_NONE
    (certs / host).mkdir(parents=True)
    (certs / host / "ca.crt").write_bytes(tls.ca.read_bytes())
    with_ca = await registry_tls.context(host)
    assert with_ca is not plain  # the directory changed: rebuilt without a restart
    assert any(c.get("subject") == ((("commonName", "berth-test-ca"),),) for c in with_ca.get_ca_certs())
    assert await registry_tls.context(host) is with_ca  # unchanged: cached
    (certs / host / "client.cert").write_bytes(tls.client_cert.read_bytes())
    with pytest.raises(InvalidArgument, match=r"missing key client\.key for client certificate client\.cert"):
        await registry_tls.context(host)
    (certs / host / "client.key").write_bytes(tls.client_key.read_bytes())
    await registry_tls.context(host)
    (certs / host / "client.cert").unlink()
    with pytest.raises(InvalidArgument, match=r"missing client certificate client\.cert for key client\.key"):
        await registry_tls.context(host)
    # A host that is not a host name (a token realm from a hostile challenge) never names a path.
    assert (await registry_tls.context("../../etc")).verify_mode == ssl.CERT_REQUIRED
