"""`docker commit` through the real CLI and docker-py: the new image is the container's image plus
its changes, with its config, `--change` lines, author, message and a history entry; a running
container is paused for the commit unless told otherwise."""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator

import docker as docker_sdk
import pytest

from tests.acceptance.conftest import Docker

pytestmark = pytest.mark.acceptance


@pytest.fixture
def names(dkr: Docker) -> Iterator[list[str]]:
    """Containers and images to remove afterwards (names and tags)."""
    made: list[str] = []
    yield made
    for name in made:
        if ":" in name:
            dkr("rmi", "-f", name)
        else:
            dkr("rm", "-f", name)


def _actions(dkr: Docker, since: float, container: str, fmt: str = "{{.Action}}") -> list[str]:
    """The container's events since ``since`` (the events stream ends half a second from now)."""
    out = dkr("events", "--since", f"{since:.3f}", "--until", f"{time.time() + 0.5:.3f}", "--filter",
              f"container={container}", "--format", fmt, timeout=30)
    assert out.returncode == 0, out.stderr
    return out.stdout.splitlines()


def _inspect(dkr: Docker, ref: str) -> dict:  # type: ignore[type-arg]
    out = dkr("image", "inspect", ref)
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)[0]
    assert isinstance(doc, dict)
    return doc


def test_commit_a_stopped_container(dkr: Docker, loaded: str, names: list[str]) -> None:
    ctr, image = f"commit-{secrets.token_hex(3)}", f"berth-commit-{secrets.token_hex(3)}:v1"
    names += [ctr, image]
    since = time.time() - 1
    out = dkr("run", "--name", ctr, "-e", "KEEP=1", "-w", "/srv", "busybox", "sh", "-c",
              "echo made > /srv/made; rm /etc/group")
    assert out.returncode == 0, out.stderr
    out = dkr("commit", "-a", "Berth Tester <t@example.com>", "-m", "a message", "-c", "ENV ADDED=yes",
              "-c", 'CMD ["cat", "/srv/made"]', "-c", "LABEL role=test", "-c", "EXPOSE 8080", ctr, image)
    assert out.returncode == 0, out.stderr
    image_id = out.stdout.strip()
    assert image_id.startswith("sha256:") and len(image_id) == 71
    base, doc = _inspect(dkr, "busybox"), _inspect(dkr, image)
    assert doc["Id"] == image_id and doc["Parent"] == base["Id"]
    assert (doc["Author"], doc["Comment"]) == ("Berth Tester <t@example.com>", "a message")
    config = doc["Config"]
    assert "KEEP=1" in config["Env"] and "ADDED=yes" in config["Env"]
    assert config["Cmd"] == ["cat", "/srv/made"] and config["WorkingDir"] == "/srv"
    assert config["Labels"] == {"role": "test"} and "8080/tcp" in config["ExposedPorts"]
    assert doc["RootFS"]["Layers"][:-1] == base["RootFS"]["Layers"]
    assert len(doc["RootFS"]["Layers"]) == len(base["RootFS"]["Layers"]) + 1
    out = dkr("run", "--rm", image)
    assert out.stdout == "made\n", out.stderr
    out = dkr("run", "--rm", image, "ls", "/etc/group")
    assert out.returncode == 1  # the deletion is part of the layer
    history = dkr("history", "--no-trunc", "--format", "{{.CreatedBy}}|{{.Comment}}", image).stdout.splitlines()
    assert history[0] == "sh -c echo made > /srv/made; rm /etc/group|a message"
    events = _actions(dkr, since, ctr, '{{.Action}} {{index .Actor.Attributes "imageRef"}}')
    assert events[-1:] == [f"commit {image}"]


def test_commit_of_an_unchanged_container_adds_an_empty_layer(dkr: Docker, loaded: str, names: list[str]) -> None:
    ctr, image = f"commit-empty-{secrets.token_hex(3)}", f"berth-empty-{secrets.token_hex(3)}:1"
    names += [ctr, image]
    assert dkr("create", "--name", ctr, "busybox", "true").returncode == 0
    assert dkr("commit", ctr, image).returncode == 0
    base, doc = _inspect(dkr, "busybox"), _inspect(dkr, image)
    assert doc["RootFS"]["Layers"] == base["RootFS"]["Layers"]
    history = dkr("history", "--format", "{{.Size}}", image).stdout.splitlines()
    assert history[0] == "0B"


def test_commit_a_running_container_pauses_it(dkr: Docker, loaded: str, names: list[str]) -> None:
    ctr, image = f"commit-run-{secrets.token_hex(3)}", f"berth-live-{secrets.token_hex(3)}:1"
    names += [ctr, image]
    since = time.time() - 1
    assert dkr("run", "-d", "--name", ctr, "busybox", "sh", "-c", "echo live > /live; sleep 300").returncode == 0
    for _ in range(200):
        if dkr("exec", ctr, "test", "-e", "/live").returncode == 0:
            break
    out = dkr("commit", ctr, image)
    assert out.returncode == 0, out.stderr
    assert dkr("inspect", "-f", "{{.State.Status}}", ctr).stdout.strip() == "running"  # unpaused again
    events = _actions(dkr, since, ctr)
    assert events[-3:] == ["pause", "unpause", "commit"]
    assert dkr("run", "--rm", image, "cat", "/live").stdout == "live\n"
    assert dkr("commit", "--pause=false", ctr, image).returncode == 0
    events = _actions(dkr, since, ctr)
    assert events[-4:] == ["pause", "unpause", "commit", "commit"]  # --pause=false: no second pause


def test_commit_errors(dkr: Docker, loaded: str, names: list[str]) -> None:
    ctr = f"commit-err-{secrets.token_hex(3)}"
    names.append(ctr)
    assert dkr("create", "--name", ctr, "busybox", "true").returncode == 0
    out = dkr("commit", "no-such-container-berth", "x:1")
    assert out.returncode == 1 and "No such container: no-such-container-berth" in out.stderr
    out = dkr("commit", "-c", "FROM busybox", ctr, "x:1")
    assert out.returncode == 1 and "FROM is not a valid change command" in out.stderr
    out = dkr("commit", ctr, "Bad_Reference:1")
    assert out.returncode == 1
    assert dkr("image", "inspect", "x:1").returncode == 1  # nothing was made


def test_docker_py_commit(client: docker_sdk.DockerClient, names: list[str]) -> None:
    container = client.containers.run("busybox", ["sh", "-c", "echo py > /py"], detach=True)
    names.append(container.id)
    container.wait()
    tag = f"berth-py-{secrets.token_hex(3)}"
    names.append(f"{tag}:latest")
    image = container.commit(repository=tag, changes=["ENV FROM_PY=1"], message="py")
    assert f"{tag}:latest" in image.tags
    assert "FROM_PY=1" in image.attrs["Config"]["Env"] and image.attrs["Comment"] == "py"
    assert client.containers.run(image.id, ["cat", "/py"], remove=True) == b"py\n"
