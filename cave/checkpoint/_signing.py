"""The per-user signing secret and the HMAC-SHA256 tags on manifests and blobs.

Like Jupyter's notebook signing, trust comes from a secret only this user can read: a checkpoint
is accepted only if it was signed with it. Tags are domain-separated (a blob tag can never pass as
a manifest signature) and bound to the session id (a manifest or blob from another session of the
same user is refused).

A blob is tagged as HMAC(secret, domain | session | digest(payload) | length), not as an HMAC over
its bytes: the loader recomputes the digest of the bytes anyway (it is the blob's address: BLAKE3,
or for blob format 1 a SHA-256 construction, see `_blobio`), so one pass over the data suffices.
This is as strong as an HMAC over the bytes while the digest stays collision resistant. The domain
names the blob format, so a tag vouches for a digest under one hash function only: relabelling a
file's format version fails the tag check.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import stat
from pathlib import Path

from .._errors import ConfigError

SECRET_FILE = "checkpoint_secret"
_SECRET_BYTES = 32
_MANIFEST_DOMAIN = b"cave-checkpoint-manifest-v1\x00"
_BLOB_DOMAINS = {1: b"cave-checkpoint-blob-v1\x00", 2: b"cave-checkpoint-blob-v2\x00"}


def config_dir() -> Path:
    """Where the signing secret lives: see ``cave._env.config_dir``."""
    from .._env import config_dir as user_config_dir

    return user_config_dir()


def load_or_create_secret(directory: Path | None = None) -> bytes:
    """Read the user's checkpoint secret, creating it (mode 0600) on first use.

    Refuses a key file that group or others can read: anyone who can read it can forge checkpoints
    that this user's kernels will unpickle.
    """
    directory = directory or config_dir()
    path = directory / SECRET_FILE
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        secret = os.urandom(_SECRET_BYTES)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process created it first: use theirs
            return load_or_create_secret(directory)
        try:
            os.write(fd, secret.hex().encode() + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)
        return secret
    try:
        mode = os.fstat(fd).st_mode
        data = os.read(fd, 4096)
    finally:
        os.close(fd)
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(
            f"The checkpoint signing key {path} is readable by other users (mode "
            f"{stat.S_IMODE(mode):o}), so anyone could forge checkpoints. Run `chmod 600 {path}`."
        )
    try:
        secret = bytes.fromhex(data.decode().strip())
    except ValueError:
        secret = b""
    if len(secret) < 16:
        raise ConfigError(
            f"The checkpoint signing key {path} is not a hex key of at least 16 bytes. Restore it "
            "from a backup, or delete it to make a new one (checkpoints signed with the old key "
            "will then be refused)."
        )
    return secret


class Signer:
    """HMAC-SHA256 tags for one session under one secret."""

    def __init__(self, secret: bytes, session: bytes) -> None:
        if len(secret) < 16:
            raise ConfigError("A checkpoint secret must be at least 16 bytes; use os.urandom(32).")
        self._secret = secret
        self.session = session

    def manifest_tag(self, manifest: bytes) -> bytes:
        return hmac.new(self._secret, _MANIFEST_DOMAIN + manifest, hashlib.sha256).digest()

    def blob_tag(self, digest: bytes, length: int, version: int = 1) -> bytes:
        """The tag of a blob whose ``version`` digest (`_blobio`) is ``digest``."""
        msg = _BLOB_DOMAINS[version] + self.session + digest + length.to_bytes(8, "little")
        return hmac.new(self._secret, msg, hashlib.sha256).digest()

    def check_manifest(self, manifest: bytes, tag: bytes | None) -> bool:
        return bool(tag) and hmac.compare_digest(self.manifest_tag(manifest), tag or b"")

    def check_blob(self, digest: bytes, length: int, tag: bytes, version: int = 1) -> bool:
        return hmac.compare_digest(self.blob_tag(digest, length, version), tag)
