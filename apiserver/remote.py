"""Connect to a node's shim and snapshotter over gRPC (unix sockets on one host)."""

from __future__ import annotations

from apiserver.nodes import HostServices
from common.nodes import NodeRecord
from protos.rpc import insecure_channel
from shim.client import RemoteRuntime
from shim.network.client import RemoteNetworks
from shim.storage.client import RemoteFiles, RemoteVolumes
from snapshotter.client import RemoteContentStore, RemoteImages, RemoteSnapshotter


async def connect_remote(record: NodeRecord) -> HostServices:
    shim_channel = insecure_channel(record.shim_address)
    snap_channel = insecure_channel(record.snapshotter_address)

    async def close() -> None:
        await shim_channel.close()
        await snap_channel.close()

    return HostServices(
        node=record,
        runtime=RemoteRuntime(shim_channel),
        snapshots=RemoteSnapshotter(snap_channel),
        content=RemoteContentStore(snap_channel),
        images=RemoteImages(snap_channel),
        close=close,
        networks=RemoteNetworks(shim_channel),
        files=RemoteFiles(shim_channel),
        volumes=RemoteVolumes(shim_channel),
    )
