"""Image records in Docker's JSON shapes (swagger ``ImageSummary``, ``ImageInspect``,
``HistoryResponseItem``)."""

from __future__ import annotations

from typing import Any

from apiserver.containers.views import ZERO_TIME, parse_rfc3339
from apiserver.images.store import ImageRecord
from registry_client import reference


def _familiar(canonical: str) -> str:
    return reference.parse(canonical).familiar


def _created_unix(record: ImageRecord) -> int:
    try:
        return parse_rfc3339(record.created) // 1_000_000_000
    except ValueError:
        return 0


def summary(record: ImageRecord, tags: list[str], digests: list[str], containers: int) -> dict[str, Any]:
    return {
        "Containers": containers,
        "Created": _created_unix(record),
        "Id": record.id,
        "Labels": (record.config.get("config") or {}).get("Labels") or {},
        "ParentId": record.parent,
        "RepoDigests": [_familiar(d) for d in digests],
        "RepoTags": [_familiar(t) for t in tags],
        "SharedSize": -1,
        "Size": record.size,
    }


def inspect(record: ImageRecord, tags: list[str], digests: list[str]) -> dict[str, Any]:
    cfg = record.config
    return {
        "Id": record.id,
        "RepoTags": [_familiar(t) for t in tags],
        "RepoDigests": [_familiar(d) for d in digests],
        "Parent": record.parent,
        "Comment": cfg.get("comment", ""),
        "Created": record.created or ZERO_TIME,
        "DockerVersion": cfg.get("docker_version", ""),
        "Author": cfg.get("author", ""),
        "Config": cfg.get("config") or {},
        "Architecture": cfg.get("architecture", ""),
        **({"Variant": cfg["variant"]} if cfg.get("variant") else {}),
        "Os": cfg.get("os", "linux"),
        "Size": record.size,
        "GraphDriver": {"Data": None, "Name": "overlay2"},
        "RootFS": {"Type": "layers", "Layers": record.diff_ids},
        "Metadata": {"LastTagTime": ZERO_TIME},
    }


def history(record: ImageRecord, tags: list[str]) -> list[dict[str, Any]]:
    """Newest first; the top entry carries the image id and tags, others ``<missing>``."""
    entries = list(record.config.get("history") or [])
    layer_sizes = [int(layer.get("size", 0)) for layer in record.layers]
    out: list[dict[str, Any]] = []
    layer_index = 0
    for entry in entries:
        empty = bool(entry.get("empty_layer"))
        size = 0
        if not empty and layer_index < len(layer_sizes):
            size = layer_sizes[layer_index]
            layer_index += 1
        try:
            created = parse_rfc3339(str(entry.get("created", ""))) // 1_000_000_000
        except ValueError:
            created = 0
        out.append({"Id": "<missing>", "Created": created, "CreatedBy": entry.get("created_by", ""),
                    "Tags": None, "Size": size, "Comment": entry.get("comment", "")})
    out.reverse()
    if out:
        out[0]["Id"] = record.id
        out[0]["Tags"] = [_familiar(t) for t in tags] or None
    return out
