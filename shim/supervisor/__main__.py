"""``python -m shim.supervisor``: started once per host by the shim, in its own session."""

from __future__ import annotations

import argparse
import asyncio
import fcntl
import os
import sys
from pathlib import Path

from common import logs
from shim.supervisor import exec_child
from shim.supervisor.server import Supervisor, SupervisorConfig
from shim.wire import SupervisorPaths


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m shim.supervisor")
    parser.add_argument("--root", required=True, type=Path)
    parser.add_argument("--exec-root", required=True, type=Path)
    parser.add_argument("--cgroup-parent", default="berth")
    parser.add_argument("--log-level", default="info")
    parser.add_argument("--ready-fd", type=int, default=-1,
                        help="write 'ready' to this fd once the socket accepts connections")
    args = parser.parse_args(argv)
    logs.configure(args.log_level, process="supervisor")
    paths = SupervisorPaths(root=args.root.absolute(), exec_root=args.exec_root.absolute())
    config = SupervisorConfig(paths=paths, cgroup_parent=args.cgroup_parent)
    try:
        exec_child.check_helper()
    except exec_child.HelperMissing as exc:
        print(exc, file=sys.stderr)
        sys.exit(1)
    os.chdir("/")  # hold no directory busy
    paths.exec_root.mkdir(parents=True, exist_ok=True, mode=0o700)
    paths.root.mkdir(parents=True, exist_ok=True, mode=0o700)
    # Held for the life of the process: a second supervisor on the same directories must fail.
    lock = os.open(paths.lock_file, os.O_CREAT | os.O_RDWR | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        print(f"another supervisor runs in {paths.exec_root}", file=sys.stderr)
        sys.exit(1)

    async def run() -> None:
        await Supervisor(config).serve(args.ready_fd)

    asyncio.run(run())


if __name__ == "__main__":
    main()
