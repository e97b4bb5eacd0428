"""OS confinement for strict mode's worker: Landlock, seccomp, no capabilities, RLIMIT_AS.

``confine_current_process(spec)`` is called once, early, in a freshly spawned worker (after it
closed every inherited descriptor but its broker channel, before any agent code runs, while it has
one thread). From then on the process and everything it starts can:

* read (and map) files only under ``spec.read_only`` and ``spec.read_write``, its own
  ``/proc/<pid>``, and ``/dev/{zero,urandom,random}``; write only under ``spec.read_write`` and
  ``/dev/null``; execute nothing unless ``spec.allow_exec`` (Landlock, every FS right of the ABI);
* create no socket but AF_UNIX stream/seqpacket ones, connect() or bind() nothing, reach no TCP
  port, abstract unix socket or process (signals) outside its own domain (seccomp + Landlock);
* not ptrace, read or write other processes' memory, take their descriptors, change their
  limits, priority or affinity, create namespaces, mount, use io_uring, bpf, userfaultfd,
  perf_event_open, the keyring, kernel modules, kexec, personality changes, System V IPC or
  message queues, nor change any file's mode, owner, times or xattrs (seccomp, EPERM);
* hold no capability, even as root, and never regain one through setuid binaries or file
  capabilities (capset to empty sets, then PR_SET_NO_NEW_PRIVS).

Nothing here can be undone: a later call only adds restrictions (Landlock domains and seccomp
filters stack; a lowered hard RLIMIT_AS cannot be raised). If any part cannot be enforced the call
raises ``StrictModeUnavailable`` before the first irreversible step where it can tell in advance,
and otherwise at the step that failed; a worker that gets the error must exit, never run agent code.

How the worker should call it (each point is a test in tests/security/test_confinement_*.py):

1. Start it with ``python -I`` (no PYTHONPATH, no user site: every ``sys.path`` directory is
   granted whole), ``close_fds=True`` and only the broker socket in ``pass_fds``. The broker
   socketpair must be SOCK_STREAM or SOCK_SEQPACKET: on an inherited datagram socket,
   ``sendmsg`` could name any pathname socket, which neither layer can see.
2. Confine before anything starts a thread: importing numpy starts OpenBLAS's threads, so
   import numpy/pandas *after* confining (imports work then; the trees are readable).
3. After confining: memfd_create/ftruncate/mmap(MAP_SHARED) work, for descriptors the worker
   makes and for ones it receives; so do AF_UNIX stream socketpairs, pipes, threads and fork.
   ``connect()``, ``bind()``, new non-unix sockets, exec and ``chmod`` do not; the broker does
   those it allows.

Not enforced here: CPU time, memory beyond RLIMIT_AS, disk space under ``read_write``, side
channels, what already-open descriptors allow, and anything the broker hands over. Tried and
rejected: forking the kernel and confining the child (the child would hold a copy of the kernel's
memory: the provider key, the user's variables); a Landlock-only sandbox (no control of ptrace,
sockets or namespaces); libseccomp through ctypes (a dependency that is not always installed, for
a 200-instruction program we can assemble and test ourselves).
"""

from __future__ import annotations

import ctypes
import functools
import os
import platform
import resource
import sys
import sysconfig
from dataclasses import dataclass, field, replace
from typing import ClassVar

from .._errors import StrictModeUnavailable
from . import _landlock, _seccomp

#: Landlock ABI strict mode needs: 3 (Linux 6.2) is the first to handle truncation; without it a
#: read-only file could be emptied. Below ABI 6 (Linux 6.12), which scopes signals and abstract
#: unix sockets, seccomp stands in: signals only to the worker's own pid, and no connect() at all.
#: Below ABI 4 (no TCP rules) seccomp's socket() and connect() rules keep TCP closed.
MIN_LANDLOCK_ABI = 3
SCOPED_ABI = 6

SIMULATE_ENV = "CAVE_STRICT_SIMULATE_UNSUPPORTED"

PR_SET_NO_NEW_PRIVS = 38
PR_GET_NO_NEW_PRIVS = 39

_DEVICES_READ = ("/dev/zero", "/dev/urandom", "/dev/random")
_DEVICES_READ_WRITE = ("/dev/null",)


@dataclass(frozen=True)
class ConfinementSpec:
    """What a confined process may still touch. Everything not named here is denied by the OS."""

    read_only: tuple[str, ...] = ()
    """Absolute paths (trees or single files) readable and mappable, dirs listable, not writable."""

    read_write: tuple[str, ...] = ()
    """Absolute paths readable and writable: create, remove, rename, truncate (a scratch dir)."""

    allow_exec: bool = False
    """Let execve/execveat run files under the granted trees (seccomp and Landlock EXECUTE)."""

    memory_limit: int | None = None
    """RLIMIT_AS in bytes (soft and hard: the worker cannot raise it again); None = unchanged."""

    own_proc: bool = True
    """Grant read access to this process's own ``/proc/<pid>`` (threads, status, maps, fds)."""

    landlock_abi_cap: int | None = None
    """Use at most this Landlock ABI, as an older kernel would (tests of the fallbacks)."""

    NOTHING: ClassVar[ConfinementSpec]
    """No file at all beyond the devices: for processes that already imported what they need."""

    def __post_init__(self) -> None:
        for path in (*self.read_only, *self.read_write):
            if not isinstance(path, str) or not os.path.isabs(path):
                raise ValueError(
                    f"ConfinementSpec paths must be absolute strings, got {path!r}: "
                    "pass os.path.abspath(path)"
                )
        if self.landlock_abi_cap is not None and self.landlock_abi_cap < MIN_LANDLOCK_ABI:
            raise ValueError(
                f"landlock_abi_cap {self.landlock_abi_cap} is below the minimum strict mode can "
                f"enforce ({MIN_LANDLOCK_ABI})"
            )
        if self.memory_limit is not None and self.memory_limit <= 0:
            raise ValueError(f"memory_limit must be a positive byte count, got {self.memory_limit}")

    @classmethod
    def python_worker(cls, *read_write: str) -> ConfinementSpec:
        """What a Python worker needs to import and run numpy/pandas, plus scratch trees."""
        return cls(read_only=default_read_only_paths(), read_write=tuple(read_write))

    def with_read_only(self, *paths: str) -> ConfinementSpec:
        return replace(self, read_only=self.read_only + tuple(paths))

    def with_read_write(self, *paths: str) -> ConfinementSpec:
        return replace(self, read_write=self.read_write + tuple(paths))

    def with_exec(self, allow: bool = True) -> ConfinementSpec:
        return replace(self, allow_exec=allow)

    def with_memory_limit(self, limit: int | None) -> ConfinementSpec:
        return replace(self, memory_limit=limit)


ConfinementSpec.NOTHING = ConfinementSpec()


@dataclass(frozen=True)
class StrictSupport:
    """What this machine can enforce, from a probe that changes nothing."""

    available: bool
    landlock_abi: int
    """0 = no Landlock."""
    seccomp: bool
    kernel_release: str
    reasons: tuple[str, ...] = field(default=())
    """Why strict mode cannot be enforced here, each naming the fix; empty when available."""

    def describe(self) -> str:
        head = f"Linux {self.kernel_release}, Landlock ABI {self.landlock_abi}, " + (
            "seccomp filters" if self.seccomp else "no seccomp filters"
        )
        if not self.available:
            lines = [f"strict mode: NOT available on this machine ({head})"]
            lines += [f"  * {r}" for r in self.reasons]
            return "\n".join(lines)
        if self.landlock_abi >= SCOPED_ABI:
            scoped = "Landlock (TCP rules; signal and abstract-socket scopes)"
        else:
            scoped = f"seccomp, standing in for Landlock ABI {SCOPED_ABI} (signals only to itself)"
        return "\n".join([
            f"strict mode: available ({head})",
            "  enforced by the OS on the agent's worker process:",
            "    files: Landlock (read: Python and its libraries; write: the worker's scratch dir)",
            f"    TCP, abstract unix sockets, signals: {scoped}",
            "    syscalls: seccomp (no new sockets, ptrace, namespaces, mounts, exec, io_uring...)",
            "    privileges: no capabilities, no_new_privs",
        ])


def strict_support() -> StrictSupport:
    """Probe Landlock and seccomp (cached); ``CAVE_STRICT_SIMULATE_UNSUPPORTED=<reason>`` makes
    it report unavailable with that reason, so tests can exercise the refusal on any machine."""
    real = _probe()
    simulated = os.environ.get(SIMULATE_ENV)
    if simulated:
        return replace(real, available=False, reasons=(f"simulated: {simulated}",))
    return real


@functools.cache
def _probe() -> StrictSupport:
    release = platform.release()
    if sys.platform != "linux":
        return StrictSupport(False, 0, False, release, (
            f"strict mode needs Linux (Landlock and seccomp); this is {sys.platform}. "
            "Run the kernel on Linux 6.12+ (a VM or container host), or use guard mode.",
        ))
    reasons: list[str] = []
    arch = _seccomp.current_arch()
    if arch is None:
        reasons.append(
            f"strict mode supports x86_64 and aarch64, not {platform.machine()}: run on one of "
            "those, or use guard mode"
        )
    abi, why = _landlock.abi_version()
    if abi == 0:
        reasons.append(
            f"Landlock is unavailable: {why}. Fix: Linux 6.2+ (6.12+ best) with Landlock enabled "
            "(CONFIG_SECURITY_LANDLOCK=y and landlock in the lsm= boot parameter)"
        )
    elif abi < MIN_LANDLOCK_ABI:
        reasons.append(
            f"Landlock ABI {abi} does not control truncation, so read-only files could be "
            f"emptied; strict mode needs ABI {MIN_LANDLOCK_ABI}: upgrade to Linux 6.2 or later "
            "(6.12+ for Landlock's own signal and socket scopes)"
        )
    seccomp_ok = False
    if arch is not None:
        seccomp_ok, why = _seccomp.filter_available(arch)
        if not seccomp_ok:
            reasons.append(f"{why}. Fix: a kernel built with CONFIG_SECCOMP_FILTER=y")
    return StrictSupport(not reasons, abi, seccomp_ok, release, tuple(reasons))


def default_read_only_paths() -> tuple[str, ...]:
    """What a Python worker needs to import the stdlib, site-packages (numpy, pandas, ...), Cave,
    and load their shared libraries: Python's prefixes and ``sys.path`` directories (never the
    current directory or ``''``, which is usually the user's project), the dynamic loader's
    directories and cache, time zones, and the CPU topology that BLAS libraries read.

    Every ``sys.path`` directory is granted whole, so call this in a worker started with
    ``python -I`` (no PYTHONPATH, no user site): a directory that an editable install or
    PYTHONPATH puts on the path is otherwise readable with everything in it."""
    candidates: list[str] = [
        sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix,
        os.path.dirname(os.path.dirname(os.path.abspath(__file__))),  # the cave package
    ]
    for key in ("stdlib", "platstdlib", "purelib", "platlib", "include"):
        path = sysconfig.get_paths().get(key)
        if path:
            candidates.append(path)
    cwd = os.getcwd()
    candidates += [p for p in sys.path if p and os.path.abspath(p) != cwd]
    candidates += [
        "/lib", "/lib64", "/usr/lib", "/usr/lib64", "/usr/local/lib", "/usr/share/zoneinfo",
        "/etc/ld.so.cache", "/etc/localtime", "/sys/devices/system/cpu",
    ]
    seen: list[str] = []
    for path in candidates:
        real = os.path.realpath(path)
        if os.path.exists(real) and real not in seen:
            seen.append(real)
    # Drop paths already inside another one: fewer rules, same access.
    seen.sort()
    kept: list[str] = []
    for path in seen:
        if not any(path == k or path.startswith(k.rstrip("/") + "/") for k in kept):
            kept.append(path)
    return tuple(kept)


def confine_current_process(spec: ConfinementSpec) -> None:
    """Confine this process for good (see the module docstring for exactly what is enforced).

    Raises ``StrictModeUnavailable`` if any part cannot be enforced; never confines partly and
    carries on. A caller that gets the error after confinement began must exit.
    """
    support = strict_support()
    if not support.available:
        raise StrictModeUnavailable(support.reasons)
    arch = _seccomp.current_arch()
    assert arch is not None  # available implies a known arch
    threads = _thread_count()
    if threads != 1:
        counted = f"has {threads} threads" if threads > 0 else "cannot count its threads"
        raise StrictModeUnavailable((
            f"this process {counted}, and Landlock confines only the calling one: call "
            "confine_current_process before starting threads (or importing libraries that "
            "start them, such as numpy with OpenBLAS)",
        ))
    read_only = [os.path.realpath(p) for p in spec.read_only]
    read_write = [os.path.realpath(p) for p in spec.read_write]
    missing = [p for p in (*read_only, *read_write) if not os.path.exists(p)]
    if missing:
        raise StrictModeUnavailable((
            f"paths to grant do not exist: {', '.join(missing)}. Create them first or drop "
            "them from the ConfinementSpec",
        ))
    read_only += [d for d in _DEVICES_READ if os.path.exists(d)]
    read_write += [d for d in _DEVICES_READ_WRITE if os.path.exists(d)]
    if spec.own_proc:
        read_only.append(f"/proc/{os.getpid()}")
        _pin_own_proc()
    abi = support.landlock_abi
    if spec.landlock_abi_cap is not None:
        abi = min(abi, spec.landlock_abi_cap)
    # Without Landlock's signal scope, seccomp lets signals reach only this process.
    own_pid = os.getpid() if abi < SCOPED_ABI else None
    _seccomp.build_filter(arch, spec.allow_exec, own_pid)  # fails here, before the irreversible

    # From here on every step is irreversible: failures raise and the caller must exit.
    step = "RLIMIT_AS"
    try:
        if spec.memory_limit is not None:
            _, hard = resource.getrlimit(resource.RLIMIT_AS)
            limit = spec.memory_limit
            if hard != resource.RLIM_INFINITY:
                limit = min(limit, hard)  # only tighten: a second call cannot raise it
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        step = "dropping capabilities"
        _drop_capabilities()
        step = "PR_SET_NO_NEW_PRIVS"
        _prctl(PR_SET_NO_NEW_PRIVS, 1)
        step = "Landlock"
        _landlock.restrict(abi, read_only, read_write, spec.allow_exec)
        step = "seccomp"
        _seccomp.install(arch, spec.allow_exec, own_pid)
    except (OSError, ValueError) as exc:
        raise StrictModeUnavailable((
            f"confinement failed at {step}: {exc}. The process is partly confined and must "
            "exit without running agent code",
        )) from exc


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


def _drop_capabilities() -> None:
    """Empty the effective, permitted and inheritable sets (ambient follows): a worker running as
    root keeps uid 0's file ownership but no privilege (no CAP_SYS_RESOURCE to raise RLIMIT_AS
    again, no CAP_DAC_OVERRIDE, CAP_SYS_ADMIN, ...), and with no_new_privs exec cannot restore it.
    """
    header = _CapHeader(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this thread
    data = (_CapData * 2)()
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.capset(ctypes.byref(header), data) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"capset: {os.strerror(err)}")


_PINNED: dict[int, int] = {}  # pid -> descriptor (a forked child confining again pins its own)


def _pin_own_proc() -> None:
    """Keep ``/proc/<pid>`` open for the process's life.

    A Landlock rule names an inode, and procfs makes a new inode for ``/proc/<pid>`` whenever its
    dentry was reclaimed (memory pressure, ``drop_caches``): the rule would then silently stop
    matching and the worker would lose its own ``/proc`` (failing closed). An open descriptor pins
    the dentry, so every later lookup meets the inode the rule names. (Not exercised by a test:
    forcing dentry reclaim means dropping the whole machine's caches.)
    """
    pid = os.getpid()
    if pid not in _PINNED:
        _PINNED[pid] = os.open(f"/proc/{pid}", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)


def _thread_count() -> int:
    try:
        return len(os.listdir(f"/proc/{os.getpid()}/task"))
    except OSError:
        return -1


def _prctl(option: int, arg: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(option, ctypes.c_ulong(arg), ctypes.c_ulong(0), ctypes.c_ulong(0),
                  ctypes.c_ulong(0)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl({option}): {os.strerror(err)}")
