"""The body of ``GET /containers/{id}/json``, built once per version of a record.

``docker exec`` and most scripts inspect a container before acting on it, and the record rarely
changed since the last time: decoding its JSON, building the view and encoding it again cost more
than the Redis call that reads it. A body is kept per container with the record's ``v`` stamp
(every write of ``config`` or ``state`` sets a new one) and ``net`` (the shim writes it without a
stamp); the exec ids, which change with every exec, are put in between its two halves. With
``?size=1`` the body is built every time (the sizes are the snapshotter's, not the record's).
"""

from __future__ import annotations

from typing import Any

from apiserver.containers import views
from apiserver.containers.store import decode_resolved
from apiserver.fastjson import dumps
from common.bounded import remember

_KEPT = 256  # containers whose body is kept
_SPLIT_AT = "ExecIDs"


def split_body(view: dict[str, Any]) -> tuple[bytes, bytes]:
    """``view`` as JSON in two halves, around its ``ExecIDs`` value: ``head + ids + tail`` is
    ``dumps(view)`` with those ids (``null`` for none, as the view has it)."""
    items = list(view.items())
    at = next(i for i, (k, _) in enumerate(items) if k == _SPLIT_AT)
    before, after = dict(items[:at]), dict(items[at + 1:])
    head = dumps(before)[:-1] + (b"," if before else b"") + b'"ExecIDs":'
    tail = (b"," + dumps(after)[1:]) if after else b"}"
    return head, tail


class InspectBodies:
    def __init__(self) -> None:
        # id → ((v, net), head, tail), oldest first
        self._bodies: dict[str, tuple[tuple[bytes, bytes | None], bytes, bytes]] = {}

    def body(self, ref: str, id: str, raw: dict[bytes, bytes], exec_ids: list[str]) -> bytes:
        """The response body for the record ``raw`` (its fields as Redis holds them, as a
        resolve of ``ref`` read them) with ``exec_ids``."""
        stamp = raw.get(b"v")
        version = (stamp or b"", raw.get(b"net"))
        kept = self._bodies.get(id)
        if kept is not None and stamp and kept[0] == version:
            _, head, tail = kept
        else:
            head, tail = split_body(views.inspect_view(decode_resolved(ref, id, raw)))
            if stamp:
                remember(self._bodies, id, (version, head, tail), _KEPT)
        return head + dumps(exec_ids or None) + tail + b"\n"
