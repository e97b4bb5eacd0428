"""`SessionStore`: save, restore, list, diff, verify and collect checkpoints of one session.

Guarantees, exactly:

* Restore verifies the manifest's HMAC, its session id and name, then every blob it names
  (size, HMAC tag, and the digest of the bytes read: BLAKE3, or SHA-256-based for blob format 1)
  before a single byte is unpickled; any mismatch refuses the whole restore with
  `CheckpointTampered` (or `CheckpointIncomplete` for missing blobs). The bytes unpickled are
  the bytes verified (read once into memory; no re-read).
* A crash at any instant of `save` leaves every earlier checkpoint intact and restorable (local
  store: blobs fsynced and renamed before the manifest's SQLite transaction commits).
* An object whose pickled form is unchanged since the newest checkpoint is not written again:
  its metadata is re-pickled and its fingerprint matched against the newest manifest. Large
  out-of-band buffers are hashed in place with xxh3, or not at all when the kernel reports their
  pages unwritten since the last hash (`_fingerprint`, `_write_tracking`).

Not guaranteed: a consistent snapshot while other threads mutate the namespace during `save`
(the kernel saves between turns); secrecy (blobs are signed, not encrypted: anyone who can read
the store can read the data); protection against someone who holds the user's secret.
"""

from __future__ import annotations

import builtins
import json
import os
import re
import threading
import time
import warnings
from collections.abc import Collection, Mapping, MutableMapping
from typing import Any

from .._errors import CheckpointError, CheckpointNotFound, CheckpointTampered
from . import _blobio, _fingerprint, _manifest, _pickling, _snapshot
from ._errors import CheckpointIncomplete, InvalidCheckpointName
from ._local import LocalBackend
from ._progress import Progress
from ._protocol import (
    CheckpointDiff,
    CheckpointInfo,
    GcReport,
    ProgressCallback,
    Restored,
    VerifyReport,
)
from ._remote import FsspecBackend
from ._signing import Signer, load_or_create_secret
from ._verify_tracking import Verifier, WriteTrackingOff, take_failure

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
REMOTE_GC_GRACE = 3600.0
"""Seconds an unreferenced blob on an object store is spared by gc (a save may be uploading it)."""


def _is_local(url: str | os.PathLike[str]) -> bool:
    return not isinstance(url, str) or "://" not in url or url.startswith("file://")


class SessionStore:
    """Checkpoints of one session, in a local directory or at an fsspec URL."""

    def __init__(
        self,
        url: str | os.PathLike[str],
        *,
        secret: bytes | None = None,
        storage_options: Mapping[str, Any] | None = None,
        verify_every: int = 1,
    ) -> None:
        """``url``: a directory (created 0700) or an fsspec URL such as ``s3://bucket/prefix``.

        ``secret``: the HMAC key; by default the user's key file (created 0600 on first use in
        ``$CAVE_CONFIG_DIR`` or ``~/.config/cave``). ``storage_options`` go to fsspec.
        ``verify_every``: after every N-th save, re-hash one buffer that write tracking vouched
        for, in the background (`_verify_tracking`); 0 never does.
        """
        self.verifier = Verifier(verify_every)
        self._backend: LocalBackend | FsspecBackend
        if _is_local(url):
            path = (
                url[len("file://") :] if isinstance(url, str) and url.startswith("file://") else url
            )
            self._backend = LocalBackend(path)
        else:
            self._backend = FsspecBackend(str(url), storage_options)
        self.url = self._backend.url
        self._signer = Signer(
            secret if secret is not None else load_or_create_secret(), self._backend.session_id()
        )
        self._lock = threading.RLock()

    def __repr__(self) -> str:
        return f"SessionStore({self.url!r})"

    # --- manifests ------------------------------------------------------------------------------

    def _verified(self, name: str, raw: bytes, sig: bytes | None) -> dict[str, Any]:
        what = f"checkpoint {name!r} in {self.url}"
        if not sig:
            raise CheckpointTampered(what, "its manifest is unsigned")
        if not self._signer.check_manifest(raw, sig):
            raise CheckpointTampered(
                what, "its manifest signature does not match (edited, or signed with another key)"
            )
        try:
            doc = _manifest.decode(raw)
        except ValueError as exc:
            raise CheckpointTampered(what, f"its signed manifest does not parse ({exc})") from None
        if doc.get("session") != self._signer.session.hex():
            raise CheckpointTampered(what, "its manifest belongs to another session")
        if doc.get("name") != name:
            raise CheckpointTampered(what, f"its manifest was signed as {doc.get('name')!r}")
        return doc

    def _manifest(self, name: str) -> dict[str, Any]:
        found = self._backend.manifest(name)
        if found is None:
            raise CheckpointNotFound(name, [n for n, _m, _s in self._backend.manifests()])
        return self._verified(name, *found)

    def _all(self) -> list[tuple[str, dict[str, Any] | None, str]]:
        """(name, verified manifest or None, problem) for every stored checkpoint, oldest first."""
        out: list[tuple[str, dict[str, Any] | None, str]] = []
        for name, raw, sig in self._backend.manifests():
            try:
                out.append((name, self._verified(name, raw, sig), ""))
            except CheckpointTampered as exc:
                out.append((name, None, exc.problem))
        return out

    def _newest(self) -> dict[str, Any] | None:
        """The newest checkpoint that verifies (normally the last one: one HMAC, not N)."""
        for name, raw, sig in reversed(self._backend.manifests()):
            try:
                return self._verified(name, raw, sig)
            except CheckpointTampered:
                continue
        return None

    # --- save -----------------------------------------------------------------------------------

    def save(
        self,
        name: str | None,
        namespace: Mapping[str, Any],
        state: Mapping[str, Any],
        *,
        progress: bool | ProgressCallback = False,
        skip: Collection[str] = (),
    ) -> CheckpointInfo:
        """Checkpoint ``namespace`` (minus dunders and ``skip``) and the JSON-able ``state``.

        ``name=None`` names it ``auto-<seq>``; an existing name is replaced. Pass the live
        namespace dict: functions defined in it are saved with a reference to it, not a copy
        of it. Unpicklable objects are left out and listed in ``unpicklable``.
        """
        if name is not None and not _NAME.fullmatch(name):
            raise InvalidCheckpointName(name)
        failure = take_failure()  # a background check failed since the last save: say so
        if failure is not None:
            warnings.warn(WriteTrackingOff(failure), stacklevel=2)
        try:
            state_json = _manifest.encode(dict(state))
        except (TypeError, ValueError) as exc:
            raise CheckpointError(
                f"The session state is not JSON-serialisable ({exc}); convert it to plain "
                "dicts, lists, strings and numbers before saving."
            ) from None
        with self._lock, self._backend.lock(exclusive=False):
            parent = self._newest()
            known: dict[str, tuple[str, int]] = {}
            if parent is not None:
                for item in (*parent["entries"], parent["state"]):
                    known[item["fp"]] = (item["blob"], int(item["size"]))
            entries, problems = _snapshot.snapshot(namespace, skip)
            state_pickled = _pickling.Pickled(state_json, [])
            todo = [(e.fp, e.pickled) for e in entries]
            todo.append((_fingerprint.fingerprint(state_pickled.parts()), state_pickled))
            to_write = [p.size for fp, p in todo if fp not in known]
            written = blobs_written = 0
            located: dict[str, tuple[str, int]] = {}
            gone = self._backend.missing_blobs({known[fp][0] for fp, _p in todo if fp in known})
            with Progress(progress, sum(to_write), "checkpoint save") as bar:
                for fp, pickled in todo:
                    if fp in located:
                        continue
                    hit = known.get(fp)
                    if hit is not None and hit[0] not in gone:
                        located[fp] = hit
                        continue
                    digest, new = self._backend.write_blob(pickled.parts(), self._signer, bar)
                    located[fp] = (digest, pickled.size)
                    if new:
                        written += pickled.size
                        blobs_written += 1
            state_fp = todo[-1][0]
            doc: dict[str, Any] = {
                "format": _manifest.FORMAT,
                "session": self._signer.session.hex(),
                "parent": parent["name"] if parent else None,
                "entries": [
                    {
                        "blob": located[e.fp][0],
                        "size": located[e.fp][1],
                        "fp": e.fp,
                        "members": [{"names": n, "type": t} for n, t in e.members],
                    }
                    for e in entries
                ],
                "state": {
                    "blob": located[state_fp][0],
                    "size": located[state_fp][1],
                    "fp": state_fp,
                },
                "unpicklable": [
                    {"name": p.name, "type": p.type, "reason": p.reason} for p in problems
                ],
                "written": written,
                "blobs_written": blobs_written,
            }
            ch = _manifest.changes(parent, doc)
            doc["changes"] = {"added": ch.added, "changed": ch.changed, "removed": ch.removed}
            doc["state_changed"] = parent is None or parent["state"]["blob"] != doc["state"]["blob"]

            def build(seq: int) -> tuple[str, bytes, bytes]:
                doc["seq"] = seq
                doc["name"] = name or f"auto-{seq}"
                doc["created"] = time.time()
                raw = _manifest.encode(doc)
                return doc["name"], raw, self._signer.manifest_tag(raw)

            self._backend.commit(build)
        self.verifier.after_save()
        return _manifest.info(doc)

    # --- load -----------------------------------------------------------------------------------

    def _read_verified(
        self, name: str, doc: dict[str, Any], bar: Progress
    ) -> dict[str, memoryview]:
        """Every blob of ``doc``, read once and verified; raises before anything is unpickled."""
        payloads: dict[str, memoryview] = {}
        missing = []
        sizes = _manifest.blob_sizes(doc)
        for digest, result in self._backend.read_blobs(list(sizes), bar).items():
            size = sizes[digest]
            what = f"blob {digest[:12]} of checkpoint {name!r} in {self.url}"
            if isinstance(result, FileNotFoundError):
                missing.append(digest)
                continue
            if isinstance(result, Exception):
                raise CheckpointTampered(what, str(result)) from None
            tag, payload, sha, version = result
            if payload.nbytes != size:
                raise CheckpointTampered(what, f"it holds {payload.nbytes} bytes, not {size}")
            if not self._signer.check_blob(bytes.fromhex(digest), size, tag, version):
                raise CheckpointTampered(what, "its HMAC tag does not match (foreign or edited)")
            if sha.hex() != digest:
                raise CheckpointTampered(
                    what, f"its content does not match its {_blobio.HASHES[version]} digest"
                )
            payloads[digest] = payload
        if missing:
            raise CheckpointIncomplete(name, missing, self.url)
        return payloads

    def load(
        self,
        name: str,
        *,
        into: MutableMapping[str, Any] | None = None,
        progress: bool | ProgressCallback = False,
    ) -> Restored:
        """Verify checkpoint ``name`` completely, then rebuild its objects into ``into``.

        Pass the live namespace as ``into`` so that restored functions see it as their globals
        (names the checkpoint refers to but skipped, such as primitives, are looked up there).
        Objects that fail to rebuild are reported in ``problems``; the rest are restored.
        """
        with self._lock:
            doc = self._manifest(name)
            total = sum(_manifest.blob_sizes(doc).values())
            with Progress(progress, total, "checkpoint restore") as bar:
                payloads = self._read_verified(name, doc, bar)
        state_inband, _ = _pickling.split(payloads[doc["state"]["blob"]])
        state = json.loads(bytes(state_inband))
        namespace: MutableMapping[str, Any] = {} if into is None else into
        used: set[str] = set()
        work = []
        for entry in doc["entries"]:
            payload = payloads[entry["blob"]]
            if entry["blob"] in used:  # equal content, distinct objects: never share memory
                payload = memoryview(bytearray(payload))
            used.add(entry["blob"])
            members = [(m["names"], m["type"]) for m in entry["members"]]
            work.append((members, payload))
        problems = _snapshot.restore(work, namespace)
        return Restored(namespace, state, problems, _manifest.info(doc))

    # --- inspection and maintenance -------------------------------------------------------------

    def list(self) -> list[CheckpointInfo]:
        """Verified checkpoints, oldest first (ones that fail verification are left out)."""
        return [_manifest.info(doc) for _n, doc, _p in self._all() if doc is not None]

    def info(self, name: str) -> CheckpointInfo:
        return _manifest.info(self._manifest(name))

    def diff(self, a: str, b: str) -> CheckpointDiff:
        da, db = self._manifest(a), self._manifest(b)
        ch = _manifest.changes(da, db)
        na, nb = _manifest.names(da), _manifest.names(db)
        unchanged = tuple(sorted(n for n in na.keys() & nb.keys() if na[n] == nb[n]))
        keys: tuple[str, ...] = ()
        if da["state"]["blob"] != db["state"]["blob"]:
            with self._lock:
                sa, sb = self._state(a, da), self._state(b, db)
            keys = tuple(sorted(k for k in sa.keys() | sb.keys() if sa.get(k) != sb.get(k)))
        return CheckpointDiff(a, b, ch, unchanged, keys)

    def _state(self, name: str, doc: dict[str, Any]) -> dict[str, Any]:
        only_state = {"entries": [], "state": doc["state"]}
        payloads = self._read_verified(name, only_state, Progress(False, 0, ""))
        return json.loads(bytes(_pickling.split(payloads[doc["state"]["blob"]])[0]))

    def remove(self, name: str) -> None:
        """Forget checkpoint ``name``; its blobs go at the next `gc()` unless others need them."""
        with self._lock:
            if not self._backend.delete(name):
                raise CheckpointNotFound(name, [n for n, _m, _s in self._backend.manifests()])

    def prune(self, keep: int, *, prefix: str = "auto-") -> builtins.list[str]:
        """Remove all but the newest ``keep`` checkpoints whose name starts with ``prefix``.

        For auto-checkpoints after every turn: named checkpoints are never touched with the
        default prefix. Returns the removed names; `gc()` then frees their blobs.
        """
        if keep < 0:
            raise ValueError("keep must be >= 0")
        with self._lock:
            names = [n for n, _m, _s in self._backend.manifests() if n.startswith(prefix)]
            doomed = names[: max(0, len(names) - keep)]
            for name in doomed:
                self._backend.delete(name)
        return doomed

    def verify(self, name: str | None = None) -> VerifyReport:
        """Check signatures and re-hash every blob of one checkpoint, or of all of them."""
        with self._lock:
            entries = self._all()
            if name is not None:
                entries = [e for e in entries if e[0] == name]
                if not entries:
                    raise CheckpointNotFound(name, [n for n, _d, _p in self._all()])
            good: dict[str, str] = {}  # digest -> "" if verified, else the problem
            checked, failed = [], []
            for cname, doc, problem in entries:
                if doc is None:
                    failed.append((cname, problem))
                    continue
                problems = []
                sizes = _manifest.blob_sizes(doc)
                todo = [d for d in sizes if d not in good]
                # Small blobs in one batch; large ones one at a time, to bound memory.
                small = [d for d in todo if sizes[d] <= 1 << 20]
                batches = [small] + [[d] for d in todo if sizes[d] > 1 << 20]
                for batch in batches:
                    for digest, result in self._backend.read_blobs(batch, lambda n: None).items():
                        good[digest] = self._check_blob(digest, sizes[digest], result)
                for digest in sizes:
                    if good[digest]:
                        problems.append(f"blob {digest[:12]}: {good[digest]}")
                if problems:
                    failed.append((cname, "; ".join(problems)))
                else:
                    checked.append(cname)
            referenced = self._referenced()
            orphans = sum(1 for d, _s, _m in self._backend.blobs() if d not in referenced)
        return VerifyReport(tuple(checked), tuple(failed), len(good), orphans)

    def _check_blob(
        self, digest: str, size: int, result: tuple[bytes, memoryview, bytes, int] | Exception
    ) -> str:
        if isinstance(result, FileNotFoundError):
            return "missing"
        if isinstance(result, Exception):
            return str(result)
        tag, payload, sha, version = result
        if payload.nbytes != size:
            return f"holds {payload.nbytes} bytes, not {size}"
        if not self._signer.check_blob(bytes.fromhex(digest), size, tag, version):
            return "HMAC tag does not match"
        if sha.hex() != digest:
            return f"content does not match its {_blobio.HASHES[version]}"
        return ""

    def _referenced(self) -> set[str]:
        """Blobs any manifest names, signed or not: gc never deletes what a manifest may need."""
        out: set[str] = set()
        for _name, raw, _sig in self._backend.manifests():
            try:
                out.update(_manifest.blob_sizes(_manifest.decode(raw)))
            except (ValueError, KeyError, TypeError):
                continue
        return out

    def gc(self, *, grace: float | None = None) -> GcReport:
        """Delete blobs no checkpoint references, and partial files of interrupted saves.

        Local stores lock out concurrent saves while collecting. Object stores cannot, so blobs
        younger than ``grace`` seconds (default `REMOTE_GC_GRACE` there, 0 locally) are spared.
        """
        local = isinstance(self._backend, LocalBackend)
        grace = grace if grace is not None else (0.0 if local else REMOTE_GC_GRACE)
        with self._lock, self._backend.lock(exclusive=True):
            referenced = self._referenced()
            removed = removed_bytes = kept = 0
            cutoff = time.time() - grace
            for digest, size, mtime in list(self._backend.blobs()):
                if digest in referenced or mtime > cutoff:
                    kept += 1
                    continue
                self._backend.remove_blob(digest)
                removed += 1
                removed_bytes += size
            temp = self._backend.remove_temp()
        return GcReport(removed, removed_bytes, kept, temp)
