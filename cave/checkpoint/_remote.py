"""The fsspec store (``s3://bucket/prefix``, ``memory://``, ...): SQLite cannot live there.

    <prefix>/session.json                 {"session": hex}; written once, by the first save
    <prefix>/manifests/<name>.json        {"manifest": <canonical JSON text>, "sig": hex}
    <prefix>/blobs/<2 hex>/<sha256>       same bytes as a local blob file

Object stores replace a whole object atomically on PUT, so committing a checkpoint is one PUT of
its manifest, issued after every blob it names has been uploaded: a crash leaves either no
manifest or a complete one. There is no local cache: listing reads every manifest (a few KiB
each), which keeps two machines that share a prefix consistent without invalidation.

Not enforced here: mutual exclusion. Two writers saving into one prefix at once may both take the
same sequence number, and `gc` only spares blobs newer than its grace period. One writer per
session is the intended use.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Collection, Iterator, Mapping
from datetime import datetime
from typing import Any

from . import _blobio
from ._signing import Signer


class FsspecBackend:
    def __init__(self, url: str, storage_options: Mapping[str, Any] | None = None) -> None:
        import fsspec

        self.fs, path = fsspec.core.url_to_fs(url, **dict(storage_options or {}))
        self.url = url
        self.root = path.rstrip("/")
        self._session: bytes | None = None

    def _p(self, *parts: str) -> str:
        return "/".join((self.root, *parts))

    def session_id(self) -> bytes:
        if self._session is None:
            path = self._p("session.json")
            try:
                self._session = bytes.fromhex(json.loads(self.fs.cat_file(path))["session"])
            except FileNotFoundError:
                import os

                session = os.urandom(16)
                self.fs.pipe_file(path, json.dumps({"session": session.hex()}).encode())
                # Read back: if another machine created it at the same moment, use theirs.
                self._session = bytes.fromhex(json.loads(self.fs.cat_file(path))["session"])
        return self._session

    # --- manifests ------------------------------------------------------------------------------

    def _manifest_paths(self) -> list[str]:
        try:
            return [
                p for p in self.fs.ls(self._p("manifests"), detail=False) if p.endswith(".json")
            ]
        except FileNotFoundError:
            return []

    @staticmethod
    def _parse(raw: bytes) -> tuple[bytes, bytes | None]:
        doc = json.loads(raw)
        sig = doc.get("sig")
        return doc["manifest"].encode(), bytes.fromhex(sig) if sig else None

    def manifests(self) -> list[tuple[str, bytes, bytes | None]]:
        out = []
        paths = self._manifest_paths()
        for path, raw in (self.fs.cat(paths) if paths else {}).items():
            name = path.rsplit("/", 1)[-1][: -len(".json")]
            try:
                manifest, sig = self._parse(raw)
            except (ValueError, KeyError, TypeError):
                manifest, sig = raw, None  # refused later, as unsigned
            out.append((name, manifest, sig))
        out.sort(key=lambda item: _seq(item[1]))
        return out

    def manifest(self, name: str) -> tuple[bytes, bytes | None] | None:
        try:
            raw = self.fs.cat_file(self._p("manifests", f"{name}.json"))
        except FileNotFoundError:
            return None
        try:
            return self._parse(raw)
        except (ValueError, KeyError, TypeError):
            return raw, None

    def commit(self, build: Callable[[int], tuple[str, bytes, bytes]]) -> None:
        seq = max((_seq(m) for _n, m, _s in self.manifests()), default=0) + 1
        name, manifest, sig = build(seq)
        doc = json.dumps({"manifest": manifest.decode(), "sig": sig.hex()})
        self.fs.pipe_file(self._p("manifests", f"{name}.json"), doc.encode())

    def delete(self, name: str) -> bool:
        path = self._p("manifests", f"{name}.json")
        if not self.fs.exists(path):
            return False
        self.fs.rm_file(path)
        return True

    # --- blobs ----------------------------------------------------------------------------------

    def _path(self, digest: str) -> str:
        return self._p("blobs", digest[:2], digest)

    def missing_blobs(self, digests: Collection[str]) -> set[str]:
        return {d for d in digests if not self.has_blob(d)}

    def has_blob(self, digest: str) -> bool:
        return bool(self.fs.exists(self._path(digest)))

    def write_blob(
        self, parts: list[bytes | memoryview], signer: Signer, on_bytes: Callable[[int], None]
    ) -> tuple[str, bool]:
        # The object's name is its hash and an upload cannot be renamed cheaply: hash first.
        length = _blobio.size_of(parts)
        version = _blobio.write_version()
        digest = _blobio.digest_of(parts, version=version)
        hexdigest = digest.hex()
        path = self._path(hexdigest)
        if self.fs.exists(path):
            on_bytes(length)
            return hexdigest, False
        with self.fs.open(path, "wb") as f:
            f.write(_blobio.header(signer.blob_tag(digest, length, version), length, version))
            for part in parts:
                view = memoryview(part).cast("B")
                for start in range(0, view.nbytes, _blobio.BLOCK):
                    chunk = view[start : start + _blobio.BLOCK]
                    f.write(chunk)
                    on_bytes(chunk.nbytes)
        return hexdigest, True

    def read_blobs(
        self, digests: Collection[str], on_bytes: Callable[[int], None]
    ) -> dict[str, tuple[bytes, memoryview, bytes, int] | Exception]:
        out: dict[str, tuple[bytes, memoryview, bytes, int] | Exception] = {}
        for digest in digests:
            try:
                out[digest] = self.read_blob(digest, on_bytes)
            except (OSError, ValueError, EOFError) as exc:
                out[digest] = exc
        return out

    def read_blob(
        self, digest: str, on_bytes: Callable[[int], None]
    ) -> tuple[bytes, memoryview, bytes, int]:
        with self.fs.open(self._path(digest), "rb") as f:
            tag, length, version = _blobio.parse_header(f.read(_blobio.HEADER))
            size = f.size - _blobio.HEADER
            if size != length:
                raise ValueError(f"blob holds {size} payload bytes, its header says {length}")
            buf = _blobio.allocate(length)
            sha = _blobio.read_hashed(f.readinto, buf, on_bytes, version=version)
        return tag, buf, sha, version

    def blobs(self) -> Iterator[tuple[str, int, float]]:
        try:
            found = self.fs.find(self._p("blobs"), detail=True)
        except FileNotFoundError:
            return
        for path, info in found.items():
            yield path.rsplit("/", 1)[-1], int(info.get("size") or 0), _mtime(info)

    def remove_blob(self, digest: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm_file(self._path(digest))

    def remove_temp(self) -> int:
        return 0  # uploads are never visible half-written: nothing to clean

    @contextlib.contextmanager
    def lock(self, exclusive: bool) -> Iterator[None]:
        yield  # see the module docstring: no locking on object stores


def _seq(manifest: bytes) -> int:
    try:
        return int(json.loads(manifest)["seq"])
    except (ValueError, KeyError, TypeError):
        return 0


def _mtime(info: Mapping[str, Any]) -> float:
    for key in ("LastModified", "mtime", "created"):
        value = info.get(key)
        if isinstance(value, datetime):
            return value.timestamp()
        if isinstance(value, int | float):
            return float(value)
    return time.time()  # unknown: treat as new, so gc's grace period spares it
