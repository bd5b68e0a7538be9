"""The Python SDK (docker-py 7.1) against berthd, unchanged."""

from __future__ import annotations

import docker as docker_sdk
import pytest
from docker.errors import APIError, ContainerError, ImageNotFound, NotFound

from tests.support import busybox

pytestmark = pytest.mark.acceptance


def test_ping_and_version(client: docker_sdk.DockerClient) -> None:
    assert client.ping() is True
    assert client.version()["ApiVersion"] == "1.50"
    assert client.api.api_version == "1.50"


def test_run_returns_output(client: docker_sdk.DockerClient) -> None:
    assert client.containers.run("busybox", ["echo", "from docker-py"], remove=True) == b"from docker-py\n"


def test_run_nonzero_raises_container_error(client: docker_sdk.DockerClient) -> None:
    with pytest.raises(ContainerError) as info:
        client.containers.run("busybox", ["sh", "-c", "echo oops >&2; exit 4"], remove=True)
    assert info.value.exit_status == 4


def test_detached_container_object(client: docker_sdk.DockerClient) -> None:
    container = client.containers.run("busybox", ["sh", "-c", "echo one; echo two >&2; sleep 30"],
                                      detach=True, labels={"berth.sdk": "yes"})
    try:
        assert container.status in ("created", "running")
        container.reload()
        assert container.status == "running"
        assert container.attrs["Config"]["Labels"]["berth.sdk"] == "yes"
        listed = client.containers.list(filters={"label": "berth.sdk=yes"})
        assert [c.id for c in listed] == [container.id]
        assert client.containers.get(container.short_id).id == container.id
        container.stop(timeout=1)
        result = container.wait()
        assert result["StatusCode"] == 137
        logs = container.logs(stdout=True, stderr=False)
        assert logs == b"one\n"
        assert container.logs(stdout=False, stderr=True) == b"two\n"
    finally:
        container.remove(force=True)
    with pytest.raises(NotFound):
        client.containers.get(container.id)


def test_attach_socket_and_stdin(client: docker_sdk.DockerClient) -> None:
    created = client.api.create_container("busybox", ["cat"], stdin_open=True)  # docker-py sets StdinOnce
    container = client.containers.get(created["Id"])
    try:
        sock = client.api.attach_socket(container.id, params={"stdin": 1, "stdout": 1, "stream": 1})
        container.start()
        sock._sock.sendall(b"through the socket\n")
        sock._sock.shutdown(1)
        data = b""
        while True:
            chunk = sock._sock.recv(4096)
            if not chunk:
                break
            data += chunk
        sock.close()
        # multiplexed: 8-byte header, then the payload
        assert data[0] == 1 and data[8:] == b"through the socket\n"
        assert container.wait()["StatusCode"] == 0
    finally:
        container.remove(force=True)


def test_images_api(client: docker_sdk.DockerClient) -> None:
    image = client.images.get("busybox")
    assert image.id == busybox.busybox_image().id
    assert "busybox:latest" in image.tags
    with pytest.raises(ImageNotFound):
        client.images.get("berth-test/absent:1")
    assert any(i.id == image.id for i in client.images.list())


def test_create_with_missing_image_is_image_not_found(client: docker_sdk.DockerClient) -> None:
    with pytest.raises(ImageNotFound):
        client.api.create_container("berth-test/absent:2", ["true"])


def test_api_error_messages(client: docker_sdk.DockerClient) -> None:
    with pytest.raises(NotFound) as info:
        client.api.inspect_container("no-such-container")
    assert info.value.explanation == "No such container: no-such-container"
    with pytest.raises(APIError):
        client.api.create_container("busybox", ["true"], name="bad name!")
