"""The Runtime contract against ``LinuxRuntime`` directly, and against ``RemoteRuntime`` through
a live gRPC server on a unix socket (the same runtime behind it)."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import grpc
import pytest

from protos.rpc import SERVER_OPTIONS, insecure_channel
from protos.shim.v1 import shim_pb2_grpc
from shim.api import Runtime
from shim.client import RemoteRuntime
from shim.linux import LinuxRuntime
from shim.service import TasksServicer
from shim.supervisor.client import SupervisorPaths
from tests.shim.conftest import Containers, Recorder
from tests.shim.contract import RuntimeContract


@pytest.fixture
async def linux_runtime(supervisor: SupervisorPaths, recorder: Recorder) -> AsyncIterator[LinuxRuntime]:
    runtime = await LinuxRuntime.connect(supervisor.socket, recorder)
    yield runtime
    await runtime.close()


class TestLinuxRuntime(RuntimeContract):
    @pytest.fixture
    async def runtime(self, linux_runtime: LinuxRuntime, containers: Containers,
                      cleanup_check: Callable[[], list[str]]) -> AsyncIterator[Runtime]:
        yield linux_runtime
        await containers.cleanup(linux_runtime)
        assert cleanup_check() == []


class TestRemoteRuntime(RuntimeContract):
    @pytest.fixture
    async def runtime(self, linux_runtime: LinuxRuntime, containers: Containers, shim_dir: Path,
                      cleanup_check: Callable[[], list[str]]) -> AsyncIterator[Runtime]:
        server = grpc.aio.server(options=SERVER_OPTIONS)
        shim_pb2_grpc.add_TasksServicer_to_server(TasksServicer(linux_runtime), server)  # type: ignore[no-untyped-call]
        socket_path = shim_dir / f"grpc-{secrets.token_hex(3)}.sock"
        server.add_insecure_port(f"unix:{socket_path}")
        await server.start()
        channel = insecure_channel(str(socket_path))
        try:
            yield RemoteRuntime(channel)
        finally:
            await containers.cleanup(linux_runtime)
            await channel.close()
            await server.stop(None)
        assert cleanup_check() == []
