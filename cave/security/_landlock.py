"""Landlock through ctypes: the filesystem, TCP and scope half of strict mode's OS confinement.

Landlock (Linux 5.13+) lets an unprivileged process give up access for itself and every thread
or child it creates afterwards: a *ruleset* names the rights it *handles*; any handled right not
granted by a rule is denied, and no later ruleset can grant it back. We handle every right the
running ABI knows, so a right the kernel can enforce is never silently left open.

Rights per ABI (kernel docs, ``Documentation/userspace-api/landlock.rst``):

    1 (5.13)  filesystem: execute, read/write files, read dirs, remove, make char/dir/reg/sock/...
    2 (5.19)  REFER: rename and link across directories (without it they are always denied)
    3 (6.2)   TRUNCATE: truncate(2), ftruncate on files opened after, O_TRUNC
    4 (6.7)   TCP bind and connect (handled with no rule = denied)
    5 (6.10)  IOCTL_DEV: ioctl on device files opened after
    6 (6.12)  scopes: abstract unix sockets and signals cannot reach outside the domain
    7 (6.15)  audit logging flags (no new rights)

What Landlock does not restrict (so seccomp or the caller must): syscalls that are not about
files/TCP/those scopes (ptrace is checked only for the domain hierarchy, not blocked outright),
connect() to *pathname* unix sockets, descriptors opened before the ruleset, mmap(PROT_EXEC) of
readable files, and other threads that already exist: ``restrict_self`` confines only the calling
thread, so the caller must be single-threaded.
"""

from __future__ import annotations

import ctypes
import os
import platform
import stat
from collections.abc import Iterable

# x86_64 and aarch64 share these numbers (they were allocated after the tables were unified).
NR_CREATE_RULESET = 444
NR_ADD_RULE = 445
NR_RESTRICT_SELF = 446

CREATE_RULESET_VERSION = 1 << 0
RULE_PATH_BENEATH = 1
RULE_NET_PORT = 2

FS_EXECUTE = 1 << 0
FS_WRITE_FILE = 1 << 1
FS_READ_FILE = 1 << 2
FS_READ_DIR = 1 << 3
FS_REMOVE_DIR = 1 << 4
FS_REMOVE_FILE = 1 << 5
FS_MAKE_CHAR = 1 << 6
FS_MAKE_DIR = 1 << 7
FS_MAKE_REG = 1 << 8
FS_MAKE_SOCK = 1 << 9
FS_MAKE_FIFO = 1 << 10
FS_MAKE_BLOCK = 1 << 11
FS_MAKE_SYM = 1 << 12
FS_REFER = 1 << 13  # ABI 2
FS_TRUNCATE = 1 << 14  # ABI 3
FS_IOCTL_DEV = 1 << 15  # ABI 5

NET_BIND_TCP = 1 << 0  # ABI 4
NET_CONNECT_TCP = 1 << 1  # ABI 4

SCOPE_ABSTRACT_UNIX_SOCKET = 1 << 0  # ABI 6
SCOPE_SIGNAL = 1 << 1  # ABI 6

#: Rights that apply to a regular file (a rule on a file may grant only these).
FILE_RIGHTS = FS_EXECUTE | FS_WRITE_FILE | FS_READ_FILE | FS_TRUNCATE | FS_IOCTL_DEV


def fs_rights(abi: int) -> int:
    """Every filesystem right the given ABI can handle."""
    rights = (1 << 13) - 1
    if abi >= 2:
        rights |= FS_REFER
    if abi >= 3:
        rights |= FS_TRUNCATE
    if abi >= 5:
        rights |= FS_IOCTL_DEV
    return rights


def net_rights(abi: int) -> int:
    return NET_BIND_TCP | NET_CONNECT_TCP if abi >= 4 else 0


def scopes(abi: int) -> int:
    return SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL if abi >= 6 else 0


class _RulesetAttr(ctypes.Structure):
    _fields_ = [
        ("handled_access_fs", ctypes.c_uint64),
        ("handled_access_net", ctypes.c_uint64),
        ("scoped", ctypes.c_uint64),
    ]


class _PathBeneathAttr(ctypes.Structure):
    _pack_ = 1  # packed in the uapi header: 12 bytes
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


_libc: ctypes.CDLL | None = None


def _syscall() -> ctypes._CFuncPtr:  # type: ignore[name-defined]
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    fn = _libc.syscall
    fn.restype = ctypes.c_long
    return fn


def _check(result: int, what: str) -> int:
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return result


def supported_machine() -> bool:
    return platform.machine() in ("x86_64", "aarch64")


def abi_version() -> tuple[int, str]:
    """The running kernel's Landlock ABI (0 = none) and, when 0, why."""
    if not supported_machine():
        return 0, f"Landlock syscall numbers are not known for {platform.machine()}"
    result = _syscall()(NR_CREATE_RULESET, None, ctypes.c_size_t(0), CREATE_RULESET_VERSION)
    if result >= 0:
        return int(result), ""
    err = ctypes.get_errno()
    if err == 38:  # ENOSYS
        return 0, "the kernel has no Landlock (built without CONFIG_SECURITY_LANDLOCK)"
    if err == 95:  # EOPNOTSUPP
        return 0, "Landlock is built in but not enabled at boot (add landlock to lsm=)"
    return 0, f"the Landlock probe failed: {os.strerror(err)}"


def restrict(
    abi: int, read_only: Iterable[str], read_write: Iterable[str], allow_exec: bool
) -> None:
    """Build a ruleset handling every right of ``abi`` and confine the calling thread with it.

    A path may be a directory (the rule covers the tree beneath it) or a single file (device
    nodes, ``/etc/ld.so.cache``): a file gets only the file rights of its list.
    Raises OSError naming the path when a rule cannot be added: a missing grant must be loud,
    because the only alternative, skipping it, would run a worker that fails strangely later.
    Must be preceded by PR_SET_NO_NEW_PRIVS (or CAP_SYS_ADMIN), else restrict_self fails.
    """
    handled_fs = fs_rights(abi)
    exec_right = FS_EXECUTE if allow_exec else 0
    ro = FS_READ_FILE | FS_READ_DIR | exec_right
    # Device nodes are never made: a root worker could otherwise mknod the disk and read it raw.
    rw = (handled_fs & ~(FS_EXECUTE | FS_MAKE_CHAR | FS_MAKE_BLOCK)) | exec_right
    attr = _RulesetAttr(handled_fs, net_rights(abi), scopes(abi))
    size = ctypes.sizeof(_RulesetAttr) if abi >= 6 else (16 if abi >= 4 else 8)
    call = _syscall()
    ruleset = _check(
        call(NR_CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(size), 0),
        "landlock_create_ruleset",
    )
    try:
        grants = [(p, ro) for p in read_only] + [(p, rw) for p in read_write]
        for path, rights in grants:
            _add_path_rule(ruleset, path, rights & handled_fs)
        _check(call(NR_RESTRICT_SELF, ruleset, 0), "landlock_restrict_self")
    finally:
        os.close(ruleset)


def _add_path_rule(ruleset: int, path: str, rights: int) -> None:
    fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    try:
        if not stat.S_ISDIR(os.fstat(fd).st_mode):
            rights &= FILE_RIGHTS
        rule = _PathBeneathAttr(rights, fd)
        _check(
            _syscall()(NR_ADD_RULE, ruleset, RULE_PATH_BENEATH, ctypes.byref(rule), 0),
            f"landlock_add_rule({path!r})",
        )
    finally:
        os.close(fd)
