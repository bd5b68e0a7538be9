"""``berthd``: the Berth daemon."""

from __future__ import annotations

import common.grpc_env  # noqa: F401  # first: gRPC reads its settings when it loads

# isort: split

import sys

from apiserver import API_VERSION, BERTH_VERSION
from apiserver.config import ConfigError, load
from common import eventloop, logs


def main(argv: list[str] | None = None) -> None:
    try:
        cfg, version = load(sys.argv[1:] if argv is None else argv)
    except ConfigError as exc:
        print(f"berthd: {exc}", file=sys.stderr)
        sys.exit(1)
    if version:
        print(f"Berth version {BERTH_VERSION}, API {API_VERSION}")
        return
    logs.configure(cfg.log_level, process="berthd")
    from apiserver.daemon import Daemon

    try:
        eventloop.run(Daemon(cfg).run())
    except ConfigError as exc:
        print(f"berthd: {exc}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
