"""docker build (classic builder, DOCKER_BUILDKIT=0) and docker-py images.build."""

from __future__ import annotations

import io
import json
import os
import subprocess
import tarfile
from pathlib import Path

import docker as docker_sdk
import pytest

from tests.acceptance.conftest import Docker
from tests.support.daemon import Berthd

pytestmark = pytest.mark.acceptance

LEGACY = {"DOCKER_BUILDKIT": "0"}


def _context(tmp_path: Path, dockerfile: str, files: dict[str, str] | None = None) -> Path:
    ctx = tmp_path / "ctx"
    ctx.mkdir(parents=True)
    (ctx / "Dockerfile").write_text(dockerfile)
    for name, content in (files or {}).items():
        (ctx / name).parent.mkdir(parents=True, exist_ok=True)
        (ctx / name).write_text(content)
    return ctx


def test_metadata_build_cache_and_config(dkr: Docker, loaded: str, tmp_path: Path) -> None:
    ctx = _context(tmp_path, "FROM busybox\nARG WHO=world\nENV GREETING=\"hello ${WHO}\"\n"
                             "LABEL org.example.a=\"b c\"\nEXPOSE 80 53/udp\nWORKDIR /srv\nUSER nobody\n"
                             'STOPSIGNAL SIGINT\nCMD ["sh", "-c", "echo $GREETING from $(pwd)"]\n')
    first = dkr("build", "-t", "berth-test/meta:1", "--build-arg", "WHO=berth", str(ctx), env=LEGACY)
    assert first.returncode == 0, first.stderr
    lines = first.stdout.splitlines()
    assert lines[0].startswith("Sending build context to Docker daemon")
    assert "Step 1/9 : FROM busybox" in lines
    assert 'Step 9/9 : CMD ["sh", "-c", "echo $GREETING from $(pwd)"]' in lines
    assert lines[-1] == "Successfully tagged berth-test/meta:1"
    built = lines[-2].removeprefix("Successfully built ")
    try:
        second = dkr("build", "-t", "berth-test/meta:1", "--build-arg", "WHO=berth", str(ctx), env=LEGACY)
        assert second.stdout.count(" ---> Using cache") == 8
        assert f"Successfully built {built}" in second.stdout
        run = dkr("run", "--rm", "berth-test/meta:1")
        assert run.stdout == "hello berth from /srv\n", run.stderr
        config = json.loads(dkr("image", "inspect", "berth-test/meta:1").stdout)[0]["Config"]
        assert config["User"] == "nobody" and config["WorkingDir"] == "/srv" and config["StopSignal"] == "SIGINT"
        assert config["ExposedPorts"] == {"80/tcp": {}, "53/udp": {}}
        assert config["Labels"] == {"org.example.a": "b c"}
        history = dkr("history", "--no-trunc", "--format", "{{.CreatedBy}}", "berth-test/meta:1").stdout
        assert "/bin/sh -c #(nop)  ENV GREETING=hello berth" in history
        # intermediate images are hidden without -a
        assert built in dkr("images", "-q").stdout
        plain = set(dkr("images", "-q").stdout.split())
        everything = set(dkr("images", "-aq").stdout.split())
        assert len(everything - plain) >= 7
    finally:
        dkr("rmi", "berth-test/meta:1")
    # removing the tagged image pruned its untagged parents too
    assert len(set(dkr("images", "-aq").stdout.split())) == len(set(dkr("images", "-q").stdout.split()))


def test_build_errors(dkr: Docker, loaded: str, tmp_path: Path) -> None:
    bad = _context(tmp_path, "FROM busybox\nFOO bar\n")
    out = dkr("build", str(bad), env=LEGACY)
    assert out.returncode == 1
    assert "unknown instruction: FOO" in out.stderr
    target = dkr("build", "--target", "nope", str(bad.parent / "ctx"), env=LEGACY)
    assert target.returncode == 1


def test_missing_target_and_label_option(dkr: Docker, loaded: str, tmp_path: Path) -> None:
    ctx = _context(tmp_path, "FROM busybox AS base\nENV A=1\nFROM base AS final\nENV B=2\n")
    missing = dkr("build", "--target", "nowhere", str(ctx), env=LEGACY)
    assert missing.returncode == 1 and "failed to reach build target nowhere in Dockerfile" in missing.stderr
    out = dkr("build", "-q", "--target", "base", "--label", "built.by=berth", "-t", "berth-test/target:1", str(ctx),
              env=LEGACY)
    assert out.returncode == 0, out.stderr
    try:
        doc = json.loads(dkr("image", "inspect", "berth-test/target:1").stdout)[0]
        assert out.stdout.strip() == doc["Id"]
        assert doc["Config"]["Labels"] == {"built.by": "berth"}
        assert "B=2" not in doc["Config"]["Env"] and "A=1" in doc["Config"]["Env"]
    finally:
        dkr("rmi", "berth-test/target:1")


def test_docker_py_build(berthd: Berthd, loaded: str) -> None:
    client = docker_sdk.DockerClient(base_url=berthd.host)
    try:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            data = b"FROM busybox\nENV FROM_SDK=1\nCMD [\"env\"]\n"
            info = tarfile.TarInfo("Dockerfile")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        buf.seek(0)
        image, logs = client.images.build(fileobj=buf, custom_context=True, tag="berth-test/sdk:1")
        try:
            assert "FROM_SDK=1" in image.attrs["Config"]["Env"]
            assert any("Successfully built" in (entry.get("stream") or "") for entry in logs)
        finally:
            client.images.remove("berth-test/sdk:1")
    finally:
        client.close()


def test_run_copy_add_and_layers(dkr: Docker, loaded: str, tmp_path: Path) -> None:
    ctx = _context(tmp_path, (
        "FROM busybox\n"
        "RUN echo built > /built && mkdir -p /app\n"
        "COPY app/ /app/\n"
        "COPY --chown=nobody:nogroup --chmod=640 notes.txt /app/notes.txt\n"
        "COPY *.cfg /etc/berth/\n"
        "ADD bundle.tar /opt/\n"
        "WORKDIR /app\n"
        "RUN ls -ln /app/notes.txt | awk '{print $1, $3, $4}' > /perm && cat main.sh\n"
        'CMD ["sh", "main.sh"]\n'),
        {"app/main.sh": "echo app says hi; cat /built /etc/berth/a.cfg /etc/berth/b.cfg /opt/inner/file\n",
         "app/sub/deep.txt": "deep\n", "notes.txt": "secret\n", "a.cfg": "A\n", "b.cfg": "B\n",
         "ignored.log": "nope\n", ".dockerignore": "*.log\n"})
    inner = tmp_path / "inner"
    (inner / "inner").mkdir(parents=True)
    (inner / "inner" / "file").write_text("from the archive\n")
    import tarfile as tf
    with tf.open(ctx / "bundle.tar", "w") as tar:
        tar.add(inner / "inner", arcname="inner")
    out = dkr("build", "-t", "berth-test/layers:1", str(ctx), env=LEGACY)
    assert out.returncode == 0, out.stdout + out.stderr
    assert " ---> Running in " in out.stdout and "echo app says hi" in out.stdout  # RUN output streams
    try:
        run = dkr("run", "--rm", "berth-test/layers:1")
        assert run.stdout == "app says hi\nbuilt\nA\nB\nfrom the archive\n", run.stderr
        perm = dkr("run", "--rm", "berth-test/layers:1", "cat", "/perm").stdout.strip()
        assert perm == "-rw-r----- 65534 65534"
        listing = dkr("run", "--rm", "berth-test/layers:1", "sh", "-c",
                      "ls /app/sub/deep.txt; test ! -e /ignored.log && echo no-log").stdout
        assert listing.splitlines() == ["/app/sub/deep.txt", "no-log"]
        doc = json.loads(dkr("image", "inspect", "berth-test/layers:1").stdout)[0]
        base = json.loads(dkr("image", "inspect", "busybox").stdout)[0]
        # RUN, COPY, COPY, COPY, ADD, RUN add layers; WORKDIR and CMD do not
        assert len(doc["RootFS"]["Layers"]) == len(base["RootFS"]["Layers"]) + 6
        history = json.loads(dkr("history", "--format", "{{json .}}", "--no-trunc", "berth-test/layers:1")
                             .stdout.splitlines()[0])
        assert history["CreatedBy"].startswith("/bin/sh -c #(nop)  CMD")
        again = dkr("build", "-t", "berth-test/layers:1", str(ctx), env=LEGACY)
        assert again.stdout.count("Using cache") == 8  # every step but FROM
        (ctx / "b.cfg").write_text("B2\n")
        changed = dkr("build", "-t", "berth-test/layers:1", str(ctx), env=LEGACY)
        assert changed.stdout.count("Using cache") == 3  # RUN, COPY app, COPY notes; then *.cfg changed
        assert "B2" in dkr("run", "--rm", "berth-test/layers:1").stdout
    finally:
        dkr("rmi", "berth-test/layers:1")


def test_failing_run_reports_its_code(dkr: Docker, loaded: str, tmp_path: Path) -> None:
    ctx = _context(tmp_path, "FROM busybox\nRUN echo before && exit 3\n")
    out = dkr("build", str(ctx), env=LEGACY)
    assert out.returncode == 3
    assert "The command '/bin/sh -c echo before && exit 3' returned a non-zero code: 3" in out.stderr
    assert "before" in out.stdout


def test_multi_stage_copy_from_and_skipped_stage(dkr: Docker, loaded: str, tmp_path: Path) -> None:
    ctx = _context(tmp_path, (
        "FROM busybox AS unused\nRUN exit 1\n"
        "FROM busybox AS builder\nRUN mkdir /out && echo artifact > /out/a.txt\n"
        "FROM busybox\nCOPY --from=builder /out/a.txt /a.txt\nCOPY --from=busybox /etc/group /group-copy\n"))
    out = dkr("build", "-t", "berth-test/stages:1", str(ctx), env=LEGACY)
    assert out.returncode == 0, out.stderr + out.stdout
    try:
        assert "RUN exit 1" not in out.stdout  # a stage the target does not need is skipped
        run = dkr("run", "--rm", "berth-test/stages:1", "sh", "-c", "cat /a.txt; head -1 /group-copy")
        assert run.stdout == "artifact\nroot:x:0:\n"
    finally:
        dkr("rmi", "berth-test/stages:1")


def test_context_escapes_are_refused(dkr: Docker, loaded: str, tmp_path: Path) -> None:
    outside = tmp_path / "outside-secret"
    outside.write_text("host secret\n")
    ctx = _context(tmp_path, "FROM busybox\nCOPY link /copied\n")
    (ctx / "link").symlink_to(outside)
    out = dkr("build", "-t", "berth-test/escape:1", str(ctx), env=LEGACY)
    if out.returncode == 0:
        try:
            run = dkr("run", "--rm", "berth-test/escape:1", "cat", "/copied")
            assert "host secret" not in run.stdout
        finally:
            dkr("rmi", "berth-test/escape:1")
    missing = _context(tmp_path / "m", "FROM busybox\nCOPY nothere /x\n")
    failed = dkr("build", str(missing), env=LEGACY)
    assert failed.returncode == 1 and "nothere" in failed.stderr


def test_default_cli_uses_the_legacy_builder(dkr: Docker, loaded: str, tmp_path: Path) -> None:
    ctx = _context(tmp_path, "FROM busybox\nENV DEFAULT_CLI=1\n")
    out = dkr("build", "-q", str(ctx))  # no DOCKER_BUILDKIT: the ping's Builder-Version is 1
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().startswith("sha256:")
    assert "legacy builder is deprecated" in out.stderr


def test_add_url_onbuild_platform_and_no_cache(dkr: Docker, loaded: str, tmp_path: Path) -> None:
    import http.server
    import threading

    served = tmp_path / "served"
    served.mkdir()
    (served / "remote.txt").write_text("fetched over http\n")

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                             lambda *a: Quiet(*a, directory=str(served)))  # type: ignore[misc]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        port = server.server_address[1]
        base = _context(tmp_path / "base", f"FROM busybox\nADD http://127.0.0.1:{port}/remote.txt /r.txt\n"
                                           "ONBUILD RUN echo triggered > /t\n")
        out = dkr("build", "-t", "berth-test/onbuild-base:1", str(base), env=LEGACY)
        assert out.returncode == 0, out.stderr + out.stdout
        child = _context(tmp_path / "child", "FROM berth-test/onbuild-base:1\nCMD [\"cat\", \"/t\", \"/r.txt\"]\n")
        built = dkr("build", "-t", "berth-test/onbuild-child:1", str(child), env=LEGACY)
        assert built.returncode == 0, built.stderr + built.stdout
        assert "# Executing 1 build trigger" in built.stdout
        run = dkr("run", "--rm", "berth-test/onbuild-child:1")
        assert run.stdout == "triggered\nfetched over http\n"
        mode = dkr("run", "--rm", "berth-test/onbuild-child:1", "stat", "-c", "%a", "/r.txt").stdout.strip()
        assert mode == "600"
        doc = json.loads(dkr("image", "inspect", "berth-test/onbuild-child:1").stdout)[0]
        assert not doc["Config"].get("OnBuild")  # triggers do not pass on
        fresh = dkr("build", "--no-cache", str(child), env=LEGACY)
        assert fresh.returncode == 0 and "Using cache" not in fresh.stdout
        other = dkr("build", "--platform", "linux/s390x", str(child), env=LEGACY)
        assert other.returncode != 0 and "s390x" in other.stderr
    finally:
        server.shutdown()
        dkr("rmi", "berth-test/onbuild-child:1")
        dkr("rmi", "berth-test/onbuild-base:1")


def test_hostile_context_tar_is_refused(berthd: Berthd, loaded: str) -> None:
    import socket

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in (("Dockerfile", b"FROM busybox\nCOPY . /\n"), ("../../escape", b"x")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    body = buf.getvalue()
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(30)
    s.connect(berthd.socket)
    s.sendall(f"POST /v1.50/build HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-tar\r\n"
              f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body)
    data = b""
    while chunk := s.recv(65536):
        data += chunk
    s.close()
    assert data.startswith(b"HTTP/1.1 400")
    assert b"forbidden path in the build context: ../../escape" in data


def test_cache_survives_a_restart_and_context_limit(session_root: Path, session_token: str, cli_config: Path,
                                                    image_tar: Path, tmp_path: Path) -> None:
    from tests.support.daemon import docker

    daemon = Berthd(root=session_root / "berthd-build", cgroup_parent=f"berth-test-{session_token}-b",
                    extra_args=["--max-build-context", "256k"])
    try:
        daemon.start()

        def run(*args: str) -> subprocess.CompletedProcess[str]:
            return docker(daemon.host, *args, config_dir=cli_config, env=LEGACY)

        assert run("load", "-i", str(image_tar)).returncode == 0
        ctx = _context(tmp_path, "FROM busybox\nRUN echo once > /once\nENV A=1\n")
        assert run("build", "-t", "berth-test/restart:1", str(ctx)).returncode == 0
        daemon.stop()
        daemon.start()
        again = run("build", "-t", "berth-test/restart:1", str(ctx))
        assert again.returncode == 0 and again.stdout.count("Using cache") == 2
        (ctx / "big.bin").write_bytes(os.urandom(400 * 1024))
        too_big = run("build", str(ctx))
        assert too_big.returncode == 1 and "build context is larger than the limit" in too_big.stderr
    finally:
        daemon.cleanup()


def test_run_steps_use_the_default_bridge(dkr: Docker, loaded: str, tmp_path: Path) -> None:
    web = dkr("run", "-d", "busybox", "sh", "-c", "mkdir /www && echo served > /www/f && exec httpd -f -p 8080 -h /www")
    assert web.returncode == 0, web.stderr
    web_id = web.stdout.strip()
    try:
        address = dkr("inspect", "-f", "{{.NetworkSettings.IPAddress}}", web_id).stdout.strip()
        assert address
        ctx = _context(tmp_path, "FROM busybox\nARG WEB\nRUN ls /sys/class/net\n"
                                 "RUN wget -q -O /fetched http://$WEB:8080/f\n")
        built = dkr("build", "--no-cache", "-t", "berth-test/bridge-run", "--build-arg", f"WEB={address}", str(ctx),
                    env=LEGACY)
        assert built.returncode == 0, built.stdout + built.stderr
        assert "eth0\nlo\n" in built.stdout
        assert dkr("run", "--rm", "berth-test/bridge-run", "cat", "/fetched").stdout == "served\n"
        # The steps' addresses went with them.
        network = json.loads(dkr("network", "inspect", "bridge").stdout)[0]
        assert set(network["Containers"]) == {web_id}
        isolated = dkr("build", "--no-cache", "--network", "none", "-t", "berth-test/bridge-none", str(ctx),
                       env=LEGACY)
        assert isolated.returncode != 0  # no way to the server without a network
        assert "lo\n" in isolated.stdout and "eth0" not in isolated.stdout
    finally:
        dkr("rm", "-f", web_id)
        dkr("rmi", "-f", "berth-test/bridge-run")
