"""Supervision of berthd's embedded services (redis-server, shim, snapshotter).

Each runs in its own session, so a SIGKILLed berthd leaves them running; the next berthd finds
them through their PID files and adopts them (watching them through a pidfd, which works for
processes that are not its children) instead of starting second copies. A service that dies is
restarted with back-off.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import structlog

log = structlog.get_logger()

ReadyCheck = Callable[[], Awaitable[None]]


def _proc_start_time(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[19]


class ManagedProcess:
    def __init__(self, name: str, argv: Sequence[str], pidfile: Path, ready: ReadyCheck, *,
                 log_file: Path | None = None, ready_timeout: float = 30.0) -> None:
        self.name = name
        self.argv = list(argv)
        self.pidfile = pidfile
        self._ready = ready
        self._log_file = log_file
        self._ready_timeout = ready_timeout
        self._popen: subprocess.Popen[bytes] | None = None
        self.pid = 0
        self._stopping = False
        self._log = log.bind(service=name)

    # -- discovery ---------------------------------------------------------------------------------
    def _recorded(self) -> int:
        """The PID in our pidfile if that process is still the one we started: the pidfile keeps
        the process start time, so a reused PID never matches."""
        try:
            pid_s, start = self.pidfile.read_text().split()
            pid = int(pid_s)
            return pid if _alive(pid) and _proc_start_time(pid) == start else 0
        except (OSError, ValueError):
            return 0

    def _write_pidfile(self, pid: int) -> None:
        tmp = self.pidfile.with_suffix(".tmp")
        tmp.write_text(f"{pid} {_proc_start_time(pid)}\n")
        os.replace(tmp, self.pidfile)

    # -- lifecycle ---------------------------------------------------------------------------------
    async def ensure(self) -> None:
        """Adopt a running copy or start one, then wait until it is ready."""
        pid = self._recorded()
        if pid:
            self.pid = pid
            self._log.info("service_adopted", pid=pid)
        else:
            self._spawn()
        try:
            async with asyncio.timeout(self._ready_timeout):
                while True:
                    if not _alive(self.pid):
                        raise RuntimeError(f"{self.name} exited during start-up{self._log_hint()}")
                    try:
                        await self._ready()
                        return
                    except (OSError, ConnectionError, RuntimeError, TimeoutError):
                        await asyncio.sleep(0.05)
        except TimeoutError:
            raise RuntimeError(f"{self.name} did not become ready within {self._ready_timeout:.0f}s"
                               f"{self._log_hint()}") from None

    def _log_hint(self) -> str:
        return f" (see {self._log_file})" if self._log_file else ""

    def _spawn(self) -> None:
        out = open(self._log_file, "ab") if self._log_file else subprocess.DEVNULL
        try:
            self._popen = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                           start_new_session=True, close_fds=True)
        finally:
            if self._log_file:
                out.close()  # type: ignore[union-attr]
        self.pid = self._popen.pid
        self._write_pidfile(self.pid)
        self._log.info("service_started", pid=self.pid)

    async def watch(self) -> None:
        """Restart the service whenever it dies, until ``stop``; back-off 0.1 s → 10 s."""
        delay = 0.1
        while True:
            await self._wait_exit()
            if self._stopping:  # set by stop() while we waited
                return
            code = self._reap()
            self._log.error("service_died", pid=self.pid, exit_code=code)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)
            started = time.monotonic()
            try:
                self._spawn()
                await self.ensure_ready_only()
            except RuntimeError as exc:
                self._log.error("service_restart_failed", error=str(exc))
                continue
            if time.monotonic() - started < 60:
                continue
            delay = 0.1

    async def ensure_ready_only(self) -> None:
        async with asyncio.timeout(self._ready_timeout):
            while True:
                try:
                    await self._ready()
                    return
                except (OSError, ConnectionError, RuntimeError, TimeoutError):
                    await asyncio.sleep(0.05)

    async def _wait_exit(self) -> None:
        try:
            fd = os.pidfd_open(self.pid)
        except ProcessLookupError:
            return
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()

        def exited() -> None:
            if not done.done():
                done.set_result(None)

        loop.add_reader(fd, exited)
        try:
            await done
        finally:
            loop.remove_reader(fd)
            os.close(fd)

    def _reap(self) -> int | None:
        if self._popen is not None and self._popen.pid == self.pid:
            return self._popen.wait()
        return None

    async def stop(self, timeout: float = 10.0, sig: int = signal.SIGTERM) -> None:
        self._stopping = True
        if not self.pid or not _alive(self.pid):
            self._cleanup_pidfile()
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, sig)
        try:
            async with asyncio.timeout(timeout):
                await self._wait_exit()
        except TimeoutError:
            self._log.warning("service_kill", pid=self.pid)
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
            await self._wait_exit()
        self._reap()
        self._cleanup_pidfile()
        self._log.info("service_stopped", pid=self.pid)

    def _cleanup_pidfile(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.pidfile.unlink()


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        return state != "Z"
    except OSError:
        return False
