"""Prometheus text-format metrics for ``GET /metrics`` (DESIGN.md §7), without a dependency.

Counters and a latency histogram are kept in process; gauges that describe the cluster
(containers by state, nodes) are computed from Redis at scrape time by registered collectors.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Awaitable, Callable

_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

Collector = Callable[[], Awaitable[list[tuple[str, str, dict[str, str], float]]]]


def _labels(labels: dict[str, str]) -> str:
    if not labels:
        return ""
    inner = ",".join(f'{k}="{v.replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34))}"'
                     for k, v in sorted(labels.items()))
    return "{" + inner + "}"


class Metrics:
    def __init__(self) -> None:
        self.requests: dict[tuple[str, str, str], int] = defaultdict(int)
        self._hist: dict[tuple[str, str], list[int]] = {}
        self._sum: dict[tuple[str, str], float] = defaultdict(float)
        self.counters: dict[tuple[str, tuple[tuple[str, str], ...]], float] = defaultdict(float)
        self.collectors: list[Collector] = []

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        self.requests[(method, route, str(status))] += 1
        key = (method, route)
        counts = self._hist.setdefault(key, [0] * (len(_BUCKETS) + 1))
        counts[bisect.bisect_left(_BUCKETS, seconds)] += 1
        self._sum[key] += seconds

    def inc(self, name: str, amount: float = 1.0, **labels: str) -> None:
        self.counters[(name, tuple(sorted(labels.items())))] += amount

    async def render(self) -> str:
        lines = ["# HELP berth_api_requests_total Engine API requests by method, route and status.",
                 "# TYPE berth_api_requests_total counter"]
        for (method, route, status), n in sorted(self.requests.items()):
            lines.append(f"berth_api_requests_total{_labels({'method': method, 'route': route, 'status': status})} {n}")
        lines += ["# HELP berth_api_request_duration_seconds Engine API request latency.",
                  "# TYPE berth_api_request_duration_seconds histogram"]
        for (method, route), counts in sorted(self._hist.items()):
            base = {"method": method, "route": route}
            cumulative = 0
            for bound, n in zip((*_BUCKETS, float("inf")), counts, strict=True):
                cumulative += n
                le = "+Inf" if bound == float("inf") else repr(bound)
                lines.append(f"berth_api_request_duration_seconds_bucket{_labels({**base, 'le': le})} {cumulative}")
            lines.append(f"berth_api_request_duration_seconds_sum{_labels(base)} {self._sum[(method, route)]}")
            lines.append(f"berth_api_request_duration_seconds_count{_labels(base)} {cumulative}")
        seen: set[str] = set()
        for (name, label_items), value in sorted(self.counters.items()):
            if name not in seen:
                lines.append(f"# TYPE {name} counter")
                seen.add(name)
            lines.append(f"{name}{_labels(dict(label_items))} {value}")
        for collect in self.collectors:
            for name, kind, labels, value in await collect():
                if name not in seen:
                    lines.append(f"# TYPE {name} {kind}")
                    seen.add(name)
                lines.append(f"{name}{_labels(labels)} {value}")
        return "\n".join(lines) + "\n"
