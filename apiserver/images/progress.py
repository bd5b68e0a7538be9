"""Docker's JSON progress messages (moby pkg/jsonmessage + streamformatter), as the CLI expects
them to draw its progress bars."""

from __future__ import annotations

from typing import Any

from snapshotter.api import Progress

_BAR_WIDTH = 50
_UNITS = ("B", "kB", "MB", "GB", "TB", "PB")


def human_size(size: float) -> str:
    """go-units HumanSize: decimal units, about 3 significant digits (``1.23MB``)."""
    i = 0
    while size >= 1000 and i < len(_UNITS) - 1:
        size /= 1000
        i += 1
    return f"{size:.3g}{_UNITS[i]}"


def progress_bar(current: int, total: int) -> str:
    if total <= 0:
        return human_size(current)
    current = min(current, total)
    filled = int(_BAR_WIDTH * current / total)
    bar = "=" * filled + (">" if filled < _BAR_WIDTH else "") + " " * max(0, _BAR_WIDTH - filled - 1)
    return f"[{bar}] {human_size(current):>8}/{human_size(total)}"


def progress_message(p: Progress) -> dict[str, Any]:
    """``progress.Update`` carries ``progressDetail`` (maybe empty); a bare status does not."""
    message: dict[str, Any] = {"status": p.status}
    if p.total > 0 or p.current > 0:
        message["progressDetail"] = {"current": p.current, **({"total": p.total} if p.total else {})}
        message["progress"] = progress_bar(p.current, p.total)
    elif p.status in ("Downloading", "Extracting", "Pushing"):
        message["progressDetail"] = {}
    if p.id:
        message["id"] = p.id
    return message


def status(text: str, id: str = "") -> dict[str, Any]:
    return {"status": text, **({"id": id} if id else {})}
