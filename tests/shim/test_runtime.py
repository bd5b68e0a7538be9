"""The Runtime contract against ``LinuxRuntime`` directly, and against ``RemoteRuntime`` through
a live gRPC server on a unix socket (the same runtime behind it), with and without the direct
path to the supervisor that an API server on the node takes for attached execs."""

from __future__ import annotations

import pytest

from shim.api import Runtime
from tests.shim.contract import RuntimeContract


class TestLinuxRuntime(RuntimeContract):
    @pytest.fixture
    def runtime(self, local_runtime: Runtime) -> Runtime:
        return local_runtime


class TestRemoteRuntime(RuntimeContract):
    @pytest.fixture
    def runtime(self, remote_runtime: Runtime) -> Runtime:
        return remote_runtime


class TestDirectRuntime(RuntimeContract):
    @pytest.fixture
    def runtime(self, direct_runtime: Runtime) -> Runtime:
        return direct_runtime
