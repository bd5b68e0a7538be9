"""Mount specs as the snapshotter returns them, and how a consumer mounts them.

Placeholder: the mount helper (``mount_all``/``unmount_all``) lands with the snapshotter.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Mount:
    """One mount(2) call: ``type`` (``overlay``, ``bind``), ``source``, and options.

    For overlay, ``options`` holds ``lowerdir=a:b:c`` (nearest parent first), and ``upperdir=`` /
    ``workdir=`` for active snapshots. ``mount_all`` copes with lowerdir lists longer than a page.
    """

    type: str
    source: str
    options: tuple[str, ...] = ()
