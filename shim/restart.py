"""Restart policies at a start of the host's services: the containers a new supervisor found
stopped and whose policy brings them back (dockerd's restore at its start: ``always``, and
``unless-stopped`` unless a user stopped them) are started through the full runtime (networking
included), once it is ready. Restarts after an exit are the supervisor's own business."""

from __future__ import annotations

import structlog

from protos.errors import BerthError, NotModified
from shim.api import Runtime
from shim.linux import LinuxRuntime

log = structlog.get_logger()


async def restart_on_boot(core: LinuxRuntime, runtime: Runtime) -> list[str]:
    """Start what ``core``'s supervisor hands out, through ``runtime``; returns the ids started."""
    started = []
    for id in await core.take_boot_restarts():
        try:
            await runtime.start(id)
        except NotModified:
            continue
        except BerthError as exc:  # one container's trouble does not keep the others down
            log.warning("restart_on_boot_failed", container=id[:12], error=exc.message)
            continue
        started.append(id)
        log.info("container_restarted_on_boot", container=id[:12])
    return started
