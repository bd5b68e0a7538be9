"""A real berthd for the acceptance tests, driven by the docker CLI and docker-py.

One daemon per session (start-up is paid once); tests that kill or restart a daemon make their
own. The busybox image is built from Debian's busybox-static and `docker load`ed.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import docker as docker_sdk
import pytest

from tests.support import busybox
from tests.support.daemon import Berthd, docker

Docker = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture(scope="session")
def image_tar(session_root: Path) -> Path:
    return busybox.write_docker_save([busybox.busybox_image()], session_root / "busybox.tar")


@pytest.fixture(scope="session")
def cli_config(session_root: Path) -> Path:
    """An empty docker CLI config dir, so the user's config (contexts, auth) never applies."""
    path = session_root / "docker-config"
    path.mkdir(exist_ok=True)
    (path / "config.json").write_text("{}")
    return path


@pytest.fixture(scope="session")
def berthd(session_root: Path, session_token: str) -> Iterator[Berthd]:
    daemon = Berthd(root=session_root / "berthd", cgroup_parent=f"berth-test-{session_token}-d",
                    net_token=session_token)
    try:
        daemon.start()
        yield daemon
    finally:
        daemon.cleanup()


@pytest.fixture(scope="session")
def dkr(berthd: Berthd, cli_config: Path) -> Docker:
    def run(*args: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
        return docker(berthd.host, *args, config_dir=cli_config, **kwargs)  # type: ignore[arg-type]

    return run


@pytest.fixture(scope="session")
def loaded(dkr: Docker, image_tar: Path) -> str:
    out = dkr("load", "-i", str(image_tar))
    assert out.returncode == 0, out.stderr
    assert "Loaded image: busybox:latest" in out.stdout
    return "busybox"


@pytest.fixture
def client(berthd: Berthd, loaded: str) -> Iterator[docker_sdk.DockerClient]:
    c = docker_sdk.DockerClient(base_url=berthd.host, timeout=60)
    yield c
    c.close()
