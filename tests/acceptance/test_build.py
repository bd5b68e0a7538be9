"""docker build (classic builder, DOCKER_BUILDKIT=0) and docker-py images.build."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import docker as docker_sdk
import pytest

from tests.acceptance.conftest import Docker

pytestmark = pytest.mark.acceptance

LEGACY = {"DOCKER_BUILDKIT": "0"}


def _context(tmp_path: Path, dockerfile: str, files: dict[str, str] | None = None) -> Path:
    ctx = tmp_path / "ctx"
    ctx.mkdir()
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


def test_docker_py_build(berthd: object, loaded: str) -> None:
    client = docker_sdk.DockerClient(base_url=berthd.host)  # type: ignore[attr-defined]
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
