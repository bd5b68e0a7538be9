"""The contract suites run against the local implementations and the gRPC proxies."""

from __future__ import annotations

import pytest

from tests.snapshotter.conftest import Stack
from tests.snapshotter.contract import ContentContract, ImagesContract, SnapshotterContract
from tests.snapshotter.distribution_contract import DistributionContract
from tests.snapshotter.files_contract import FilesContract


class TestLocalSnapshotter(SnapshotterContract):
    @pytest.fixture
    def stack(self, local_stack: Stack) -> Stack:
        return local_stack


class TestRemoteSnapshotter(SnapshotterContract):
    @pytest.fixture
    def stack(self, remote_stack: Stack) -> Stack:
        return remote_stack


class TestLocalContentStore(ContentContract):
    @pytest.fixture
    def stack(self, local_stack: Stack) -> Stack:
        return local_stack


class TestRemoteContentStore(ContentContract):
    @pytest.fixture
    def stack(self, remote_stack: Stack) -> Stack:
        return remote_stack


class TestLocalImages(ImagesContract):
    @pytest.fixture
    def stack(self, local_stack: Stack) -> Stack:
        return local_stack


class TestRemoteImages(ImagesContract):
    @pytest.fixture
    def stack(self, remote_stack: Stack) -> Stack:
        return remote_stack


class TestLocalDistribution(DistributionContract):
    @pytest.fixture
    def stack(self, local_stack: Stack) -> Stack:
        return local_stack


class TestRemoteDistribution(DistributionContract):
    @pytest.fixture
    def stack(self, remote_stack: Stack) -> Stack:
        return remote_stack


class TestLocalFiles(FilesContract):
    @pytest.fixture
    def stack(self, local_stack: Stack) -> Stack:
        return local_stack


class TestRemoteFiles(FilesContract):
    @pytest.fixture
    def stack(self, remote_stack: Stack) -> Stack:
        return remote_stack
