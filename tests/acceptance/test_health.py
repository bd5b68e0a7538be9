"""Healthchecks through the CLI: from --health-* flags and from the image's HEALTHCHECK, the
statuses in `docker ps` and inspect, the log of probes, timeouts, and health_status events."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from apiserver.containers.views import parse_rfc3339
from tests.acceptance.conftest import Docker
from tests.support import busybox
from tests.support.waiting import eventually

pytestmark = pytest.mark.acceptance


def health(dkr: Docker, cid: str) -> dict[str, object] | None:
    value: dict[str, object] | None = json.loads(dkr("inspect", "-f", "{{json .State.Health}}", cid).stdout)
    return value


def status(dkr: Docker, cid: str) -> str:
    return dkr("ps", "-a", "--filter", f"id={cid}", "--format", "{{.Status}}").stdout.strip()


@pytest.fixture(scope="module")
def health_image(dkr: Docker, loaded: str, session_root: Path) -> str:
    """An image whose config has a HEALTHCHECK (as `docker build` would write it)."""
    image = busybox.busybox_image(tags=("berth-healthy:latest",), config={
        "Healthcheck": {"Test": ["CMD-SHELL", "echo image-probe; exit 0"], "Interval": 100_000_000, "Retries": 2}})
    out = dkr("load", "-i", str(busybox.write_docker_save([image], session_root / "healthy.tar")))
    assert out.returncode == 0, out.stderr
    return "berth-healthy"


@pytest.fixture
def containers(dkr: Docker) -> Iterator[list[str]]:
    ids: list[str] = []
    yield ids
    if ids:
        dkr("rm", "-f", *ids)


def test_starting_healthy_unhealthy(dkr: Docker, loaded: str, containers: list[str]) -> None:
    since = f"{time.time() - 1:.3f}"
    slow = dkr("run", "-d", "--health-cmd", "true", "--health-interval", "1h", "busybox", "sleep", "1000")
    containers.append(slow.stdout.strip())
    assert status(dkr, containers[0]).endswith("(health: starting)")
    assert health(dkr, containers[0]) == {"Status": "starting", "FailingStreak": 0, "Log": []}

    cid = dkr("run", "-d", "--health-cmd", "cat /tmp/state", "--health-interval", "100ms", "--health-retries", "2",
              "busybox", "sleep", "1000").stdout.strip()
    containers.append(cid)
    eventually(lambda: status(dkr, cid).endswith("(unhealthy)"), what="unhealthy")
    h = health(dkr, cid)
    assert h is not None and h["Status"] == "unhealthy" and int(h["FailingStreak"]) >= 2  # type: ignore[call-overload]
    last = h["Log"][-1]  # type: ignore[index]
    assert last["ExitCode"] == 1 and "No such file or directory" in last["Output"]
    assert parse_rfc3339(last["Start"]) <= parse_rfc3339(last["End"])
    assert dkr("ps", "-q", "--no-trunc", "--filter", "health=unhealthy").stdout.split().count(cid) == 1
    dkr("exec", cid, "sh", "-c", "echo all-good > /tmp/state")
    eventually(lambda: status(dkr, cid).endswith("(healthy)"), what="healthy")
    h = health(dkr, cid)
    assert h is not None and h["FailingStreak"] == 0 and h["Log"][-1]["Output"] == "all-good\n"  # type: ignore[index]
    assert 1 <= len(h["Log"]) <= 5  # type: ignore[arg-type]
    events = dkr("events", "--since", since, "--until", f"{time.time() + 1:.3f}", "--filter", f"container={cid}",
                 "--filter", "event=health_status", "--format", "{{.Action}}", timeout=30).stdout.splitlines()
    assert events == ["health_status: unhealthy", "health_status: healthy"]


def test_timeout_and_start_period(dkr: Docker, loaded: str, containers: list[str]) -> None:
    cid = dkr("run", "-d", "--health-cmd", "sleep 5", "--health-interval", "50ms", "--health-timeout", "200ms",
              "--health-retries", "1", "busybox", "sleep", "1000").stdout.strip()
    containers.append(cid)
    eventually(lambda: status(dkr, cid).endswith("(unhealthy)"))
    h = health(dkr, cid)
    assert h is not None
    assert h["Log"][-1]["ExitCode"] == -1  # type: ignore[index]
    assert h["Log"][-1]["Output"] == "Health check exceeded timeout (200ms)"  # type: ignore[index]
    # Failures within the start period do not count: it stays "starting".
    patient = dkr("run", "-d", "--health-cmd", "false", "--health-interval", "50ms", "--health-retries", "1",
                  "--health-start-period", "1h", "--health-start-interval", "50ms", "busybox", "sleep", "1000")
    containers.append(patient.stdout.strip())
    eventually(lambda: len(health(dkr, containers[-1])["Log"]) >= 3)  # type: ignore[index,arg-type]
    h = health(dkr, containers[-1])
    assert h is not None and h["Status"] == "starting" and h["FailingStreak"] == 0


def test_image_healthcheck_and_overrides(dkr: Docker, health_image: str, containers: list[str]) -> None:
    cid = dkr("run", "-d", health_image, "sleep", "1000").stdout.strip()
    containers.append(cid)
    config = json.loads(dkr("inspect", "-f", "{{json .Config.Healthcheck}}", cid).stdout)
    assert config["Test"] == ["CMD-SHELL", "echo image-probe; exit 0"] and config["Interval"] == 100_000_000
    eventually(lambda: status(dkr, cid).endswith("(healthy)"))
    assert health(dkr, cid)["Log"][-1]["Output"] == "image-probe\n"  # type: ignore[index]
    # --health-cmd replaces the test, the image's interval stays
    mine = dkr("run", "-d", "--health-cmd", "echo mine; exit 1", health_image, "sleep", "1000").stdout.strip()
    containers.append(mine)
    config = json.loads(dkr("inspect", "-f", "{{json .Config.Healthcheck}}", mine).stdout)
    assert config["Test"] == ["CMD-SHELL", "echo mine; exit 1"] and config["Interval"] == 100_000_000
    eventually(lambda: status(dkr, mine).endswith("(unhealthy)"))
    none = dkr("run", "-d", "--no-healthcheck", health_image, "sleep", "1000").stdout.strip()
    containers.append(none)
    assert health(dkr, none) is None and status(dkr, none).startswith("Up ") and "(" not in status(dkr, none)
