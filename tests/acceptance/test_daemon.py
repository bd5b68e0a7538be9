"""berthd itself: Engine API conventions, restarts, listeners and TLS, events."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import docker as docker_sdk
import pytest

from tests.acceptance.conftest import Docker
from tests.support.daemon import REPO, Berthd, docker
from tests.support.tls import make_tls

pytestmark = pytest.mark.acceptance


def _raw(sock: str, request: bytes) -> tuple[int, dict[str, str], bytes]:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(sock)
    s.sendall(request)
    data = b""
    while chunk := s.recv(65536):
        data += chunk
    s.close()
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return status, headers, body


def _get(sock: str, path: str, method: str = "GET", body: bytes = b"",
         ctype: str = "") -> tuple[int, dict[str, str], bytes]:
    extra = f"Content-Type: {ctype}\r\n" if ctype else ""
    req = (f"{method} {path} HTTP/1.1\r\nHost: berth\r\nConnection: close\r\n{extra}"
           f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    return _raw(sock, req)


def _free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return int(port)


def test_ping_and_engine_headers(berthd: Berthd) -> None:
    status, headers, body = _get(berthd.socket, "/_ping", method="HEAD")
    assert status == 200 and body == b""
    assert headers["api-version"] == "1.50"
    assert headers["ostype"] == "linux"
    assert headers["server"].startswith("Docker/") and headers["server"].endswith("(linux)")
    status, headers, body = _get(berthd.socket, "/_ping")
    assert (status, body) == (200, b"OK")


def test_version_negotiation_bounds(berthd: Berthd) -> None:
    status, headers, body = _get(berthd.socket, "/v1.12/version")
    assert status == 400
    assert headers["content-type"] == "application/json"
    assert "client version 1.12 is too old. Minimum supported API version is 1.24" in json.loads(body)["message"]
    status, _, body = _get(berthd.socket, "/v9.99/version")
    assert status == 400 and "is too new. Maximum supported API version is 1.50" in json.loads(body)["message"]
    status, _, body = _get(berthd.socket, "/v1.24/version")
    assert status == 200 and json.loads(body)["ApiVersion"] == "1.50"


def test_unknown_route_is_404_page_not_found(berthd: Berthd) -> None:
    for path in ("/v1.50/no/such/thing", "/containers/x/nonsense"):
        status, headers, body = _get(berthd.socket, path)
        assert status == 404
        assert headers["content-type"] == "application/json"
        assert json.loads(body) == {"message": "page not found"}


def test_malformed_json_is_400(berthd: Berthd) -> None:
    status, _, body = _get(berthd.socket, "/v1.50/containers/create", method="POST", body=b"{not json",
                           ctype="application/json")
    assert status == 400 and "invalid JSON" in json.loads(body)["message"]


def test_docker_version_and_info(dkr: Docker) -> None:
    out = dkr("version", "--format", "{{.Server.APIVersion}} {{.Server.Os}}")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "1.50 linux"
    info = dkr("info", "--format", "{{json .}}")
    assert info.returncode == 0, info.stderr
    doc = json.loads(info.stdout)
    assert doc["Driver"] == "overlay2" and doc["NCPU"] >= 1


def test_events_for_a_run(dkr: Docker, loaded: str) -> None:
    since = f"{time.time() - 1:.3f}"
    cid = dkr("run", "--rm", "-d", "busybox", "true").stdout.strip()
    assert dkr("wait", cid).returncode in (0, 1)  # may already be removed
    deadline = time.monotonic() + 10
    while dkr("inspect", cid).returncode == 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    until = f"{time.time() + 0.5:.3f}"
    out = dkr("events", "--since", since, "--until", until, "--filter", f"container={cid}",
              "--format", "{{.Action}}", timeout=30)
    actions = out.stdout.split()
    assert actions[:1] == ["create"]
    for a in ("start", "die", "destroy"):
        assert a in actions
    assert actions.index("start") < actions.index("die") < actions.index("destroy")


def test_until_never_cuts_the_replay_of_stored_events(client: docker_sdk.DockerClient) -> None:
    """``until`` ends the follow of new events, not the replay of stored ones: with a deadline a
    few milliseconds away, all 80 stored events still arrive (moby writes the buffered
    events before it starts its timer)."""
    since = time.time() - 0.1
    names = [f"replay-{n}:latest" for n in range(40)]
    for name in names:
        client.api.tag("busybox:latest", name)
    for name in names:
        client.api.remove_image(name)
    for ahead in (0.001, 0.003, 0.006, 0.012):  # deadlines that fall before, during and after the replay
        stream = client.api.events(since=since, until=time.time() + ahead, filters={"type": "image"}, decode=True)
        seen = [(e["Action"], e["Actor"]["Attributes"].get("name")) for e in stream]
        assert sorted(n for a, n in seen if a == "tag" and n in names) == sorted(names), ahead
        assert sorted(n for a, n in seen if a == "untag" and n in names) == sorted(names), ahead


def test_containers_survive_berthd_sigkill(session_root: Path, session_token: str, cli_config: Path,
                                           image_tar: Path) -> None:
    daemon = Berthd(root=session_root / "berthd-kill", cgroup_parent=f"berth-test-{session_token}-k")
    try:
        daemon.start()

        def run(*args: str) -> subprocess.CompletedProcess[str]:
            return docker(daemon.host, *args, config_dir=cli_config)

        assert run("load", "-i", str(image_tar)).returncode == 0
        cid = run("run", "-d", "busybox", "sh", "-c", "while true; do echo alive; sleep 0.2; done").stdout.strip()
        stopped = run("run", "-d", "busybox", "sh", "-c", "exit 7").stdout.strip()
        run("wait", stopped)
        before = json.loads(run("inspect", cid).stdout)[0]["State"]
        ps_before = run("ps", "-a", "--no-trunc", "--format", "{{.ID}} {{.State}}").stdout
        services = daemon.service_pids()
        daemon.kill()
        time.sleep(0.5)
        daemon.start()
        assert daemon.service_pids() == services  # adopted, not restarted
        after = json.loads(run("inspect", cid).stdout)[0]["State"]
        assert after["Running"] is True and after["Pid"] == before["Pid"]
        assert run("ps", "-a", "--no-trunc", "--format", "{{.ID}} {{.State}}").stdout == ps_before
        assert json.loads(run("inspect", stopped).stdout)[0]["State"]["ExitCode"] == 7
        assert run("stop", "-t", "1", cid).returncode == 0
    finally:
        daemon.cleanup()


def test_tls_verify_requires_a_client_certificate(session_root: Path, session_token: str, cli_config: Path) -> None:
    tls = make_tls(session_root / "tls")
    port = _free_port()
    daemon = Berthd(root=session_root / "berthd-tls", cgroup_parent=f"berth-test-{session_token}-t",
                    extra_args=["-H", f"tcp://127.0.0.1:{port}", "--tlsverify", "--tlscacert", str(tls.ca),
                                "--tlscert", str(tls.server_cert), "--tlskey", str(tls.server_key)])
    try:
        daemon.start()
        host = f"tcp://127.0.0.1:{port}"
        good = docker(host, "--tlsverify", "--tlscacert", str(tls.ca), "--tlscert", str(tls.client_cert),
                      "--tlskey", str(tls.client_key), "version", "--format", "{{.Server.APIVersion}}",
                      config_dir=cli_config)
        assert good.returncode == 0, good.stderr
        assert good.stdout.strip() == "1.50"
        rogue = docker(host, "--tlsverify", "--tlscacert", str(tls.ca), "--tlscert", str(tls.rogue_cert),
                       "--tlskey", str(tls.rogue_key), "version", config_dir=cli_config)
        assert rogue.returncode != 0
        anonymous = docker(host, "--tls", "version", config_dir=cli_config)
        assert anonymous.returncode != 0
        plain = docker(host, "version", config_dir=cli_config)
        assert plain.returncode != 0
    finally:
        daemon.cleanup()


def test_insecure_tcp_beyond_loopback_is_refused(session_root: Path) -> None:
    root = session_root / "berthd-refuse"
    root.mkdir()
    (root / "daemon.json").write_text("{}")
    proc = subprocess.run(
        [sys.executable, "-m", "apiserver", "-H", f"tcp://0.0.0.0:{_free_port()}", "--data-root", str(root / "d"),
         "--exec-root", str(root / "r"), "--config-file", str(root / "daemon.json")],
        cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert "without --tlsverify" in proc.stderr


def test_plain_tcp_on_loopback(session_root: Path, session_token: str, cli_config: Path) -> None:
    port = _free_port()
    daemon = Berthd(root=session_root / "berthd-tcp", cgroup_parent=f"berth-test-{session_token}-p",
                    extra_args=["-H", f"tcp://127.0.0.1:{port}"])
    try:
        daemon.start()
        out = docker(f"tcp://127.0.0.1:{port}", "version", "--format", "{{.Server.Os}}", config_dir=cli_config)
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == "linux"
    finally:
        daemon.cleanup()


def test_config_file_conflict_with_flag(session_root: Path) -> None:
    root = session_root / "berthd-conflict"
    root.mkdir()
    (root / "daemon.json").write_text(json.dumps({"data-root": str(root / "x")}))
    proc = subprocess.run(
        [sys.executable, "-m", "apiserver", "--data-root", str(root / "y"), "--config-file", str(root / "daemon.json")],
        cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert "specified both as a flag and in the configuration file: data-root" in proc.stderr
