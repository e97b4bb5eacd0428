"""Manifests: the signed description of one checkpoint, as canonical JSON.

A manifest names every blob it needs by SHA-256, with its size, so a verified manifest pins the
exact bytes of everything it restores. Fields::

    format, session (hex), name, seq, created (unix time), parent,
    entries: [{blob, size, fp, members: [{names: [...], type}]}],
    state: {blob, size, fp},
    unpicklable: [{name, type, reason}],
    changes: {added, changed, removed}, state_changed, written, blobs_written
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

from ._protocol import Changes, CheckpointInfo, Problem

FORMAT = 1


def encode(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def decode(raw: bytes) -> dict[str, Any]:
    doc = json.loads(raw)
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ValueError(
            f"unknown manifest format {doc.get('format') if isinstance(doc, dict) else doc!r}"
        )
    return doc


def blob_sizes(doc: dict[str, Any]) -> dict[str, int]:
    """Every blob the manifest needs, with its payload size."""
    sizes = {e["blob"]: int(e["size"]) for e in doc["entries"]}
    sizes[doc["state"]["blob"]] = int(doc["state"]["size"])
    return sizes


def names(doc: dict[str, Any]) -> dict[str, tuple[str, int]]:
    """name -> (blob, member index): what identifies a name's saved value."""
    out = {}
    for entry in doc["entries"]:
        for k, member in enumerate(entry["members"]):
            for name in member["names"]:
                out[name] = (entry["blob"], k)
    return out


def changes(old: dict[str, Any] | None, new: dict[str, Any]) -> Changes:
    before = names(old) if old else {}
    after = names(new)
    return Changes(
        added=tuple(sorted(after.keys() - before.keys())),
        changed=tuple(sorted(n for n in after.keys() & before.keys() if after[n] != before[n])),
        removed=tuple(sorted(before.keys() - after.keys())),
    )


def info(doc: dict[str, Any]) -> CheckpointInfo:
    ch = doc.get("changes") or {}
    return CheckpointInfo(
        name=doc["name"],
        seq=int(doc["seq"]),
        created=datetime.fromtimestamp(doc["created"], timezone.utc),
        size=sum(blob_sizes(doc).values()),
        objects=len(names(doc)),
        parent=doc.get("parent"),
        changes=Changes(
            tuple(ch.get("added", ())), tuple(ch.get("changed", ())), tuple(ch.get("removed", ()))
        ),
        state_changed=bool(doc.get("state_changed", True)),
        unpicklable=tuple(
            Problem(p["name"], p["type"], p["reason"]) for p in doc.get("unpicklable", ())
        ),
        written=int(doc.get("written", 0)),
        blobs_written=int(doc.get("blobs_written", 0)),
    )
