"""gRPC core settings of every Berth process, applied on import: import this module before
anything that imports ``grpc`` (grpc-core reads them once, when it loads; later they are ignored).

grpc-core's EventEngine client and listener endpoints hand each message through one more thread
than its older iomgr endpoints before it reaches Python's poller thread. Measured on this
machine (grpcio 1.85, grpc.aio on a unix socket, a message and its answer on an open stream,
alternating runs): 0.16-0.23 ms a round trip without them against 0.27-0.39 ms with, and 20-35%
less CPU on each side. Every exec is two such messages, every container start several. An
operator's own ``GRPC_EXPERIMENTS`` is left as it is.
"""

from __future__ import annotations

import os

EXPERIMENTS = "-event_engine_client,-event_engine_listener"

os.environ.setdefault("GRPC_EXPERIMENTS", EXPERIMENTS)
