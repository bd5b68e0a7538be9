"""Small in-process memories bounded by entry count, oldest dropped first."""

from __future__ import annotations

from typing import TypeVar

K = TypeVar("K")
V = TypeVar("V")


def remember(entries: dict[K, V], key: K, value: V, limit: int) -> None:
    """Put ``key`` in ``entries`` as the newest (a dict keeps insertion order), then drop the
    oldest entries beyond ``limit``."""
    entries.pop(key, None)
    entries[key] = value
    while len(entries) > limit:
        del entries[next(iter(entries))]
