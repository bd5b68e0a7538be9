"""Samples, summaries and the interleaved A B A B … runner.

Absolute times on a shared 2-core VM drift with whatever else runs, so both engines are measured
in the same loop, alternately, and compared by the median of the pairwise ratios."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

TIMES = "\N{MULTIPLICATION SIGN}"  # "2.5 times" in tables and charts


class Better(StrEnum):
    LOWER = "lower"  # times, memory
    HIGHER = "higher"  # throughput


@dataclass
class Series:
    """One engine's samples of one scenario, in the row's unit."""

    samples: list[float] = field(default_factory=list)

    @property
    def min(self) -> float:
        return min(self.samples)

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def max(self) -> float:
        return max(self.samples)

    def as_dict(self) -> dict[str, Any]:
        return {"min": self.min, "median": self.median, "max": self.max, "n": len(self.samples),
                "samples": [round(s, 6) for s in self.samples]}


@dataclass
class Goal:
    """A ratio to reach (dockerd ÷ Berth for times, Berth ÷ dockerd for throughput), and an
    absolute bound on Berth's own figure that decides when there is no dockerd to compare with."""

    ratio: float
    absolute: float | None = None  # Berth's median must be below (LOWER) / above (HIGHER) this

    def describe(self, unit: str) -> str:
        text = f"≥ {self.ratio:g}{TIMES}"
        if self.absolute is not None:
            text += f" (< {self.absolute:g} {unit})"
        return text


@dataclass
class Row:
    scenario: str
    via: str  # cli | http | grpc | proc | shell
    unit: str
    better: Better = Better.LOWER
    goal: Goal | None = None
    berth: Series | None = None
    docker: Series | None = None
    note: str = ""  # why a side is missing, or a caveat
    extra: dict[str, Any] = field(default_factory=dict)

    def ratios(self) -> list[float]:
        if not self.berth or not self.docker:
            return []
        pairs = zip(self.berth.samples, self.docker.samples, strict=False)
        if self.better is Better.LOWER:
            return [d / b for b, d in pairs if b > 0]
        return [b / d for b, d in pairs if d > 0]

    @property
    def ratio(self) -> float | None:
        r = self.ratios()
        return statistics.median(r) if r else None

    @property
    def met(self) -> bool | None:
        """Goal met? None when there is no goal or nothing to judge it by."""
        if self.goal is None or self.berth is None:
            return None
        absolute_ok: bool | None = None
        if self.goal.absolute is not None:
            b = self.berth.median
            absolute_ok = b < self.goal.absolute if self.better is Better.LOWER else b > self.goal.absolute
        ratio = self.ratio
        if ratio is None:
            return absolute_ok
        return ratio >= self.goal.ratio and absolute_ok is not False

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> Row:
        goal = doc.get("goal")
        return cls(doc["scenario"], doc["via"], doc["unit"], better=Better(doc["better"]),
                   goal=Goal(goal["ratio"], goal.get("absolute")) if goal else None,
                   berth=Series(doc["berth"]["samples"]) if doc.get("berth") else None,
                   docker=Series(doc["dockerd"]["samples"]) if doc.get("dockerd") else None,
                   note=doc.get("note", ""), extra=doc.get("extra", {}))

    def as_dict(self) -> dict[str, Any]:
        return {"scenario": self.scenario, "via": self.via, "unit": self.unit, "better": str(self.better),
                "goal": None if self.goal is None else {"ratio": self.goal.ratio, "absolute": self.goal.absolute},
                "berth": self.berth.as_dict() if self.berth else None,
                "dockerd": self.docker.as_dict() if self.docker else None,
                "ratio": self.ratio, "pairwise_ratios": [round(r, 4) for r in self.ratios()],
                "met": self.met, "note": self.note, **({"extra": self.extra} if self.extra else {})}


class Deadline:
    """The bench's time budget: every loop asks before another round."""

    def __init__(self, seconds: float) -> None:
        self.start = time.monotonic()
        self.end = self.start + seconds

    def left(self) -> float:
        return self.end - time.monotonic()

    def elapsed(self) -> float:
        return time.monotonic() - self.start


Op = Callable[[Any], float]  # engine -> one measured value (its own set-up untimed)


def interleave(engines: Sequence[Any], op: Op, iterations: int, warmup: int, deadline: Deadline,
               min_left: float = 30.0) -> list[Series]:
    """Warm each engine up, then run ``op`` A B A B …; stop early (keeping at least 3 pairs)
    when the budget runs low. Returns one Series per engine, in order."""
    for _ in range(warmup):
        for engine in engines:
            op(engine)
    series = [Series() for _ in engines]
    for i in range(iterations):
        if i >= 3 and deadline.left() < min_left:
            break
        for engine, s in zip(engines, series, strict=True):
            s.samples.append(op(engine))
    return series
