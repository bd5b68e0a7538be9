"""The committed generated modules match what `make protos` would produce now."""

from __future__ import annotations

import filecmp
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PROTOS = sorted(p.relative_to(REPO) for p in (REPO / "protos").rglob("*.proto"))


@pytest.mark.parametrize("proto", PROTOS, ids=str)
def test_generated_code_is_current(proto: Path, tmp_path: Path) -> None:
    (tmp_path / proto.parent).mkdir(parents=True)
    shutil.copy(REPO / proto, tmp_path / proto)
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", "-I", str(tmp_path), f"--python_out={tmp_path}",
                    f"--pyi_out={tmp_path}", f"--grpc_python_out={tmp_path}", str(tmp_path / proto)], check=True)
    stem = proto.stem
    for suffix in ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py"):
        fresh = tmp_path / proto.parent / f"{stem}{suffix}"
        committed = REPO / proto.parent / f"{stem}{suffix}"
        assert committed.exists(), f"{committed} is missing: run `make protos`"
        assert filecmp.cmp(fresh, committed, shallow=False), f"{committed} is stale: run `make protos`"
