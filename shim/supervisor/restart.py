"""Docker's restart policies, as moby's restart manager applies them.

An exit is followed by a restart when the policy says so (``always``; ``unless-stopped`` unless
a user stopped the container; ``on-failure`` for a non-zero exit while fewer than
``maximum_retry_count`` restarts happened), after a back-off: 100 ms, doubled at every restart,
at most one minute, and back to 100 ms when the container had run for 10 s or more. A manual
stop or kill cancels the pending restart; a start through the API resets the count.
"""

from __future__ import annotations

from dataclasses import dataclass

from shim.api import RestartPolicy

BACKOFF_FIRST = 0.1
BACKOFF_MAX = 60.0
RESET_AFTER = 10.0

POLICIES = ("no", "always", "unless-stopped", "on-failure")


@dataclass(slots=True)
class Backoff:
    """The delay state of one container (moby's ``RestartManager.timeout``)."""

    delay: float = 0.0

    def next(self, ran_seconds: float) -> float:
        if ran_seconds >= RESET_AFTER:
            self.delay = 0.0
        if self.delay == 0.0:
            self.delay = BACKOFF_FIRST
        elif self.delay < BACKOFF_MAX:
            self.delay = min(self.delay * 2, BACKOFF_MAX)
        return self.delay


def should_restart(policy: RestartPolicy, exit_code: int, *, manually_stopped: bool, restart_count: int) -> bool:
    name = policy.name or "no"
    if name == "always":
        return True
    if name == "unless-stopped":
        return not manually_stopped
    if name == "on-failure":
        limit = policy.maximum_retry_count
        return exit_code != 0 and (limit == 0 or restart_count < limit)
    return False


def restart_on_boot(policy: RestartPolicy, exit_code: int, *, manually_stopped: bool, restart_count: int,
                    started_before: bool) -> bool:
    """moby's ``ShouldRestart`` at daemon start: a container that ran before and whose policy
    would restart it after its last exit."""
    return started_before and should_restart(policy, exit_code, manually_stopped=manually_stopped,
                                             restart_count=restart_count)
