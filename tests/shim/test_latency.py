"""Start latency: create + start of busybox ``true`` (returning once the process runs), through the
local runtime and through gRPC. DESIGN §4 wants this well under 50 ms; the figures are printed
(``pytest -s``) and checked against that bound."""

from __future__ import annotations

import asyncio
import secrets
import statistics
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import grpc
import pytest

from protos.rpc import SERVER_OPTIONS, insecure_channel
from protos.shim.v1 import shim_pb2_grpc
from shim.api import Runtime, Status
from shim.client import RemoteRuntime
from shim.linux import LinuxRuntime
from shim.service import TasksServicer
from shim.supervisor.client import SupervisorPaths
from tests.shim.conftest import Containers, Recorder

RUNS = 15
TARGET_MS = 50.0


@pytest.fixture
async def runtimes(supervisor: SupervisorPaths, shim_dir: Path) -> AsyncIterator[tuple[LinuxRuntime, RemoteRuntime]]:
    local = await LinuxRuntime.connect(supervisor.socket, Recorder())
    server = grpc.aio.server(options=SERVER_OPTIONS)
    shim_pb2_grpc.add_TasksServicer_to_server(TasksServicer(local), server)  # type: ignore[no-untyped-call]
    path = shim_dir / f"latency-{secrets.token_hex(3)}.sock"
    server.add_insecure_port(f"unix:{path}")
    await server.start()
    channel = insecure_channel(str(path))
    try:
        yield local, RemoteRuntime(channel)
    finally:
        await channel.close()
        await server.stop(None)
        await local.close()


async def measure(runtime: Runtime, containers: Containers) -> list[float]:
    times = []
    for _ in range(RUNS):
        spec = containers.spec("true")
        began = time.perf_counter()
        await runtime.create(spec)
        state = await runtime.start(spec.id)
        times.append((time.perf_counter() - began) * 1000)
        assert state.status == Status.RUNNING
        assert (await asyncio.wait_for(runtime.wait(spec.id), 10)).exit_code == 0
        await runtime.delete(spec.id)
        await asyncio.sleep(0.02)  # an idle gap, as between API requests
    return times


async def test_create_and_start_latency(runtimes: tuple[LinuxRuntime, RemoteRuntime], containers: Containers,
                                        record_property: Callable[[str, object], None]) -> None:
    local, remote = runtimes
    try:
        await measure(local, containers)  # warm up caches (dentries, page cache, the gRPC channel)
        for name, runtime in (("local", local), ("grpc", remote)):
            times = sorted(await measure(runtime, containers))
            median = statistics.median(times)
            record_property(f"{name}_create_start_ms_p50", round(median, 1))
            print(f"\n{name}: create+start of busybox true: p50 {median:.1f} ms, "
                  f"p90 {times[int(len(times) * 0.9)]:.1f} ms, min {times[0]:.1f} ms")
            assert median < TARGET_MS
    finally:
        await containers.cleanup(local)
