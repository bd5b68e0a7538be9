"""``POST /containers/prune`` filters, as moby reads them: ``until`` (a timestamp or a Go
duration before now), ``label`` and ``label!`` (``key`` or ``key=value``)."""

from __future__ import annotations

import re
import time

from apiserver.containers.store import ContainerRecord
from apiserver.httputil import Filters
from apiserver.streams import unix_ns
from protos.errors import InvalidArgument

ACCEPTED = ("label", "label!", "until")
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNITS = {"ns": 1, "us": 1_000, "µs": 1_000, "ms": 1_000_000, "s": 1_000_000_000, "m": 60_000_000_000,
          "h": 3_600_000_000_000}


def go_duration_ns(text: str) -> int | None:
    """Go's time.ParseDuration (``90m``, ``1h30m``, ``2.5s``); None if ``text`` is not one."""
    pos, total = 0, 0.0
    sign = -1 if text.startswith("-") else 1
    body = text.lstrip("+-")
    if not body:
        return None
    if body == "0":
        return 0
    while pos < len(body):
        match = _DURATION_PART.match(body, pos)
        if match is None:
            return None
        total += float(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    return sign * int(total)


def until(filters: Filters) -> int:
    """The ``until`` filter as a Unix time in ns (0: no such filter)."""
    values = filters.get("until", [])
    if len(values) > 1:
        raise InvalidArgument("more than one until filter specified")
    if not values:
        return 0
    value = values[0]
    duration = go_duration_ns(value)
    if duration is not None:
        return time.time_ns() - duration
    try:
        return unix_ns(value)
    except InvalidArgument:
        raise InvalidArgument(f"failed to parse value of filter: {value!r}") from None


def _label_match(labels: dict[str, str], want: str) -> bool:
    key, sep, value = want.partition("=")
    return key in labels and (not sep or labels[key] == value)


def matches(record: ContainerRecord, filters: Filters, until_ns: int) -> bool:
    if until_ns and int(record.config.get("CreatedNs", 0)) > until_ns:
        return False
    labels = record.config["Config"].get("Labels") or {}
    if not all(_label_match(labels, want) for want in filters.get("label", [])):
        return False
    return not any(_label_match(labels, want) for want in filters.get("label!", []))
