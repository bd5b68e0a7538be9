"""``GET /containers/{id}/stats``: the shim's samples in Docker's ``StatsResponse`` JSON
(moby v28 field order and omissions), and moby's sampling: a stream of one sample a second (the
first with an empty ``precpu_stats``), ``stream=false`` two samples a second apart (so that
``precpu_stats`` is filled, as ``docker stats --no-stream`` needs), ``one-shot`` a single one.
A container that does not run gets the empty record (only ``name`` and ``id``)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from typing import Any

from apiserver.containers.store import ContainerRecord
from apiserver.containers.views import ZERO_TIME, rfc3339_nano
from protos.errors import ContainerNotRunning, NotFound
from shim.api import ContainerStats, Runtime

INTERVAL = 1.0  # moby's stats collector period
_BLKIO_LISTS = ("io_service_bytes_recursive", "io_serviced_recursive", "io_queue_recursive",
                "io_service_time_recursive", "io_wait_time_recursive", "io_merged_recursive", "io_time_recursive",
                "sectors_recursive")


def _cpu(sample: ContainerStats | None) -> dict[str, Any]:
    usage: dict[str, Any] = {"total_usage": 0, "usage_in_kernelmode": 0, "usage_in_usermode": 0}
    throttling = {"periods": 0, "throttled_periods": 0, "throttled_time": 0}
    out: dict[str, Any] = {"cpu_usage": usage}
    if sample is not None:
        c = sample.cpu
        usage["total_usage"] = c.total_ns
        if c.percpu_ns:
            usage["percpu_usage"] = list(c.percpu_ns)
        usage["usage_in_kernelmode"], usage["usage_in_usermode"] = c.kernel_ns, c.user_ns
        if sample.system_cpu_ns:
            out["system_cpu_usage"] = sample.system_cpu_ns
        if sample.online_cpus:
            out["online_cpus"] = sample.online_cpus
        throttling = {"periods": c.throttling_periods, "throttled_periods": c.throttled_periods,
                      "throttled_time": c.throttled_ns}
    # key order as Go writes the struct
    return {"cpu_usage": {k: usage[k] for k in ("total_usage", "percpu_usage", "usage_in_kernelmode",
                                                  "usage_in_usermode") if k in usage},
            **{k: out[k] for k in ("system_cpu_usage", "online_cpus") if k in out},
            "throttling_data": throttling}


def body(record: ContainerRecord, sample: ContainerStats | None, previous: ContainerStats | None) -> dict[str, Any]:
    out: dict[str, Any] = {"name": record.config.get("Name", ""), "id": record.id,
                           "read": rfc3339_nano(sample.read_ns) if sample else ZERO_TIME,
                           "preread": rfc3339_nano(previous.read_ns) if previous else ZERO_TIME}
    pids: dict[str, int] = {}
    blkio: dict[str, list[dict[str, Any]] | None] = dict.fromkeys(_BLKIO_LISTS)
    memory: dict[str, Any] = {}
    if sample is not None:
        if sample.pids_current:
            pids["current"] = sample.pids_current
        if sample.pids_limit:
            pids["limit"] = sample.pids_limit
        for e in sample.blkio:
            if e.kind in blkio:
                entries = blkio[e.kind] or []
                entries.append({"major": e.major, "minor": e.minor, "op": e.op, "value": e.value})
                blkio[e.kind] = entries
        for key, value in (("usage", sample.memory_usage), ("max_usage", sample.memory_max_usage),
                           ("stats", dict(sample.memory_stats)), ("failcnt", sample.memory_failcnt),
                           ("limit", sample.memory_limit)):
            if value:
                memory[key] = value
    out.update({"pids_stats": pids, "blkio_stats": blkio, "num_procs": 0, "storage_stats": {},
                "cpu_stats": _cpu(sample), "precpu_stats": _cpu(previous), "memory_stats": memory})
    if sample is not None and sample.networks:
        out["networks"] = {name: {"rx_bytes": n.rx_bytes, "rx_packets": n.rx_packets, "rx_errors": n.rx_errors,
                                  "rx_dropped": n.rx_dropped, "tx_bytes": n.tx_bytes, "tx_packets": n.tx_packets,
                                  "tx_errors": n.tx_errors, "tx_dropped": n.tx_dropped}
                           for name, n in sorted(sample.networks.items())}
    return out


async def _sample(runtime: Runtime, id: str) -> ContainerStats | None:
    try:
        return await runtime.stats(id)
    except (ContainerNotRunning, NotFound):
        return None
    except Exception as exc:  # a Conflict (restarting) included: an empty record, as moby's collector
        if getattr(exc, "http_status", 500) == 409:
            return None
        raise


async def stream(runtime: Runtime, record: ContainerRecord, *, follow: bool,
                 one_shot: bool) -> AsyncGenerator[dict[str, Any], None]:
    first = await _sample(runtime, record.id)
    if not follow:
        if first is None or one_shot:
            yield body(record, first, None)
            return
        await asyncio.sleep(INTERVAL)
        second = await _sample(runtime, record.id)
        yield body(record, second, first if second is not None else None)
        return
    previous: ContainerStats | None = None
    current = first
    while True:
        yield body(record, current, previous)
        previous = current
        await asyncio.sleep(INTERVAL)
        current = await _sample(runtime, record.id)
        if current is None:
            previous = None
