"""gRPC's settings are in place before grpc loads, in every Berth entry point
(common.grpc_env), and an operator's own are kept."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from common.grpc_env import EXPERIMENTS

REPO = Path(__file__).resolve().parents[2]

# Prints GRPC_EXPERIMENTS as it is when ``grpc`` is first imported, then imports the entry point.
_PROBE = """
import os, sys
class Spy:
    def find_spec(self, name, path, target=None):
        if name == "grpc":
            print("at-grpc-import:", os.environ.get("GRPC_EXPERIMENTS"))
            sys.meta_path.remove(self)
        return None
sys.meta_path.insert(0, Spy())
import {module}
"""


def _at_grpc_import(module: str, env: dict[str, str]) -> str:
    out = subprocess.run([sys.executable, "-c", _PROBE.format(module=module)], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=60, check=True).stdout
    return next(line for line in out.splitlines() if line.startswith("at-grpc-import:"))


@pytest.mark.parametrize("module", ["apiserver.__main__", "shim.__main__", "snapshotter.__main__"])
def test_entry_points_set_grpc_experiments_before_grpc_loads(module: str) -> None:
    env = {k: v for k, v in os.environ.items() if k != "GRPC_EXPERIMENTS"}
    assert _at_grpc_import(module, env) == f"at-grpc-import: {EXPERIMENTS}"
    assert _at_grpc_import(module, {**env, "GRPC_EXPERIMENTS": "operator"}) == "at-grpc-import: operator"
