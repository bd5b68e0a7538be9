"""The committed generated modules of snapshotter.proto are what ``make protos`` produces."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
GENERATED = ("snapshotter_pb2.py", "snapshotter_pb2.pyi", "snapshotter_pb2_grpc.py")


def test_generated_code_is_current(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", "-I", ".", f"--python_out={tmp_path}",
                    f"--pyi_out={tmp_path}", f"--grpc_python_out={tmp_path}",
                    "protos/snapshotter/v1/snapshotter.proto"], cwd=REPO, check=True)
    for name in GENERATED:
        fresh = (tmp_path / "protos/snapshotter/v1" / name).read_bytes()
        assert fresh == (REPO / "protos/snapshotter/v1" / name).read_bytes(), f"{name} is stale: run make protos"
