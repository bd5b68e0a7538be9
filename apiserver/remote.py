"""Connect to a node's shim and snapshotter over gRPC.

Unix sockets (the node on this host) are plain. TCP addresses (nodes of a cluster) take mutual
TLS when berthd has its node certificate (``--node-tlscacert/--node-tlscert/--node-tlskey``):
it presents ``--node-tlscert`` and accepts only a node certificate signed by
``--node-tlscacert`` that names the host of the address it dials. Without them plaintext goes to
loopback only; a node anywhere else is refused before any channel exists, so nothing crosses
the network in the clear (DESIGN.md §6).
"""

from __future__ import annotations

import grpc

from apiserver.config import ConfigError
from apiserver.nodes import Connector, HostServices
from common.grpc_tls import TLSFiles, check_target, is_tcp
from common.nodes import NodeRecord
from protos.errors import Unavailable
from protos.rpc import insecure_channel, secure_channel
from shim.client import RemoteRuntime
from shim.network.client import RemoteNetworks
from shim.storage.client import RemoteFiles, RemoteVolumes
from shim.supervisor.direct import DirectExecs
from snapshotter.client import RemoteContentStore, RemoteImages, RemoteSnapshotter


def node_connector(tls: TLSFiles) -> Connector:
    """``connect_remote`` with berthd's node TLS files read once, now: a file that cannot be read
    is a :class:`ConfigError` at start, not a failed request later."""
    try:
        credentials = tls.channel_credentials() if tls.enabled else None
    except OSError as exc:
        raise ConfigError(f"could not load the node TLS material: {exc}") from None

    async def connect(record: NodeRecord) -> HostServices:
        return await connect_remote(record, credentials)

    return connect


def _channel(address: str, credentials: grpc.ChannelCredentials | None) -> grpc.aio.Channel:
    if credentials is not None and is_tcp(address):
        return secure_channel(address, credentials)
    return insecure_channel(address)


async def connect_remote(record: NodeRecord,
                         credentials: grpc.ChannelCredentials | None = None) -> HostServices:
    """Proxies for the services of ``record``'s node; ``credentials``: berthd's client side of the
    mutual TLS (see :func:`node_connector`). Channels connect lazily, on the first call."""
    for address in (record.shim_address, record.snapshotter_address):
        try:
            check_target(address, credentials is not None)
        except ValueError as exc:
            raise Unavailable(f"node {record.hostname or record.id}: {exc}") from None
    shim_channel = _channel(record.shim_address, credentials)
    snap_channel = _channel(record.snapshotter_address, credentials)

    runtime = RemoteRuntime(shim_channel, direct=DirectExecs.for_node(record))

    async def close() -> None:
        await runtime.close()
        await shim_channel.close()
        await snap_channel.close()

    return HostServices(
        node=record,
        runtime=runtime,
        snapshots=RemoteSnapshotter(snap_channel),
        content=RemoteContentStore(snap_channel),
        images=RemoteImages(snap_channel),
        close=close,
        networks=RemoteNetworks(shim_channel),
        files=RemoteFiles(shim_channel),
        volumes=RemoteVolumes(shim_channel),
    )
