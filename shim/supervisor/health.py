"""Docker healthchecks, run by the supervisor (one timer per container on its event loop, no
process of its own): every interval the test command runs as an exec in the container, with a
timeout; its exit code and first 4 KiB of output update ``State.Health`` the way moby's
``handleProbeResult`` does (last five results, failing streak, ``starting`` while the start
period lasts, ``unhealthy`` after ``retries`` consecutive failures).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import replace

from shim.api import Health, Healthcheck, HealthLogEntry, HealthStatus

DEFAULT_INTERVAL_NS = 30_000_000_000
DEFAULT_TIMEOUT_NS = 30_000_000_000
DEFAULT_START_INTERVAL_NS = 5_000_000_000
DEFAULT_RETRIES = 3
MAX_OUTPUT = 4096
MAX_LOG_ENTRIES = 5


def probe_args(check: Healthcheck) -> tuple[str, ...] | None:
    """The command of a probe, or None when the container has no healthcheck."""
    if not check.test or check.test[0] == "NONE":
        return None
    if check.test[0] == "CMD":
        return tuple(check.test[1:]) or None
    if check.test[0] == "CMD-SHELL":
        return (*(check.shell or ("/bin/sh", "-c")), *check.test[1:])
    return None


def go_duration(ns: int) -> str:
    """Go's ``time.Duration.String`` (``30s``, ``1.5s``, ``100ms``, ``1m0s``)."""
    if ns == 0:
        return "0s"
    if ns < 1_000_000_000:
        for unit, size in (("ms", 1_000_000), ("µs", 1_000), ("ns", 1)):
            if ns >= size:
                return _trim(ns / size) + unit
    hours, rest = divmod(ns, 3_600_000_000_000)
    minutes, rest = divmod(rest, 60_000_000_000)
    seconds = _trim(rest / 1e9) + "s"
    if hours:
        return f"{hours}h{minutes}m{seconds}"
    if minutes:
        return f"{minutes}m{seconds}"
    return seconds


def _trim(value: float) -> str:
    text = f"{value:.9f}".rstrip("0").rstrip(".")
    return text or "0"


class Probe:
    """What the monitor needs from a running probe process."""

    def kill(self) -> None:
        raise NotImplementedError


# start(args, on_done(exit_code, output)) runs a probe; on_result(health, changed) reports.
StartProbe = Callable[[tuple[str, ...], Callable[[int, str], None]], Probe]
OnResult = Callable[[Health, bool, HealthLogEntry], None]


class HealthMonitor:
    def __init__(self, check: Healthcheck, started_ns: int, health: Health, start_probe: StartProbe,
                 on_result: OnResult) -> None:
        self.check = check
        self.args = probe_args(check)
        self.started_ns = started_ns
        self.health = health
        self._start_probe = start_probe
        self._on_result = on_result
        self._loop = asyncio.get_running_loop()
        self._timer: asyncio.TimerHandle | None = None
        self._timeout: asyncio.TimerHandle | None = None
        self._probe: Probe | None = None
        self._stopped = False

    def start(self) -> None:
        if self.args is not None:
            self._schedule()

    def stop(self) -> None:
        self._stopped = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._timeout is not None:
            self._timeout.cancel()
            self._timeout = None
        if self._probe is not None:
            self._probe.kill()
            self._probe = None

    def _interval_ns(self) -> int:
        interval = self.check.interval_ns or DEFAULT_INTERVAL_NS
        in_start_period = time.time_ns() - self.started_ns < self.check.start_period_ns
        if in_start_period and self.health.status == HealthStatus.STARTING:
            return self.check.start_interval_ns or DEFAULT_START_INTERVAL_NS
        return interval

    def _schedule(self) -> None:
        if not self._stopped:
            self._timer = self._loop.call_later(self._interval_ns() / 1e9, self._run)

    def _run(self) -> None:
        self._timer = None
        if self._stopped or self.args is None:
            return
        start_ns = time.time_ns()
        timeout_ns = self.check.timeout_ns or DEFAULT_TIMEOUT_NS
        timed_out = False

        def expired() -> None:
            nonlocal timed_out
            timed_out = True
            if self._probe is not None:
                self._probe.kill()

        def done(exit_code: int, output: str) -> None:
            self._probe = None
            if self._timeout is not None:
                self._timeout.cancel()
                self._timeout = None
            if self._stopped:
                return
            if timed_out:
                exit_code = -1
                limit = go_duration(timeout_ns)
                output = (f"Health check exceeded timeout ({limit}): {output}" if output
                          else f"Health check exceeded timeout ({limit})")
            self._record(HealthLogEntry(start_ns, time.time_ns(), exit_code, output))
            self._schedule()

        try:
            self._probe = self._start_probe(self.args, done)
        except Exception as exc:  # could not even start: a failed probe, as moby records it
            self._record(HealthLogEntry(start_ns, time.time_ns(), -1, str(exc)))
            self._schedule()
            return
        if self._probe is not None:
            self._timeout = self._loop.call_later(timeout_ns / 1e9, expired)

    def _record(self, entry: HealthLogEntry) -> None:
        h = self.health
        old = h.status
        log = (*h.log, entry)[-MAX_LOG_ENTRIES:]
        streak, status = h.failing_streak, h.status
        if entry.exit_code == 0:
            streak, status = 0, HealthStatus.HEALTHY
        else:
            in_start_period = (status == HealthStatus.STARTING
                               and entry.start_ns - self.started_ns < self.check.start_period_ns)
            if not in_start_period:
                streak += 1
                if streak >= (self.check.retries if self.check.retries > 0 else DEFAULT_RETRIES):
                    status = HealthStatus.UNHEALTHY
        self.health = replace(h, status=status, failing_streak=streak, log=log)
        self._on_result(self.health, status != old, entry)
