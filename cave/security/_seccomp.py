"""A seccomp-BPF filter, hand-assembled: the syscalls Landlock does not cover, denied.

The filter is classic BPF over ``struct seccomp_data`` (``nr`` at offset 0, ``arch`` at 4, the six
arguments as 64-bit little-endian words from 16). Its shape:

    load arch;  not ours -> KILL (an i386 ``int 0x80`` or foreign-ABI call would use other numbers)
    load nr;    x86_64: nr >= 0x40000000 (x32 ABI) -> KILL
    one compare per syscall with arguments to check -> its block
    one compare per syscall denied outright -> ERRNO(EPERM); anything else -> ALLOW
    blocks: argument checks that end in the shared exits ALLOW or ERRNO(EPERM)

Denials return EPERM, so Python raises ``PermissionError`` and the model reads a clear traceback;
only calls no honest program makes (wrong arch, x32) kill the process. ``clone3`` gets ENOSYS
because its flags sit behind a pointer BPF cannot read: libc then falls back to ``clone``, whose
flags we can check. Syscalls not listed are allowed and, since their answer does not depend on
their arguments, the kernel's seccomp action cache (5.11+) allows them without running the filter.

Not covered here (see docs/security.md): anything whose danger is behind a pointer (``sendmsg``
addresses, ``clone3`` arguments), and resource exhaustion. The aarch64 table follows the generic
syscall table; it is built and checked for shape in tests but only run on x86_64 here.
"""

from __future__ import annotations

import ctypes
import os
import platform
import struct
from collections.abc import Iterator
from dataclasses import dataclass

AUDIT_ARCH_X86_64 = 0xC000003E
AUDIT_ARCH_AARCH64 = 0xC00000B7

RET_KILL_PROCESS = 0x80000000
RET_ERRNO = 0x00050000
RET_ALLOW = 0x7FFF0000

EPERM = 1
ENOSYS = 38

AF_UNIX = 1
SOCK_STREAM = 1
SOCK_SEQPACKET = 5
SOCK_TYPE_MASK = 0xF
# CLONE_NEWNS | NEWCGROUP | NEWUTS | NEWIPC | NEWUSER | NEWPID | NEWNET (CLONE_NEWTIME, 0x80, is
# only meaningful to clone3/unshare: in clone() that bit is part of the exit signal).
CLONE_NEW_MASK = 0x7E020000
TIOCSTI = 0x5412  # push bytes into a terminal's input: a classic sandbox escape
TIOCLINUX = 0x541C
PERSONALITY_QUERY = 0xFFFFFFFF
F_SETOWN = 8
F_SETOWN_EX = 15
FIOSETOWN = 0x8901
SIOCSPGRP = 0x8902
PRIO_PROCESS = 0
IOPRIO_WHO_PROCESS = 1

# BPF opcodes (linux/bpf_common.h).
_LD_W_ABS = 0x20
_JEQ_K = 0x15
_JGE_K = 0x35
_JSET_K = 0x45
_AND_K = 0x54
_RET_K = 0x06
_LD_ABS_NR = 0
_LD_ABS_ARCH = 4


def _arg_lo(i: int) -> int:
    return 16 + 8 * i


def _arg_hi(i: int) -> int:
    return 16 + 8 * i + 4


# Syscall numbers: (x86_64, aarch64); None where the arch has no such call.
_NR: dict[str, tuple[int | None, int | None]] = {
    "socket": (41, 198), "socketpair": (53, 199), "connect": (42, 203), "sendto": (44, 206),
    "bind": (49, 200),
    "ptrace": (101, 117), "process_vm_readv": (310, 270), "process_vm_writev": (311, 271),
    "io_uring_setup": (425, 425), "io_uring_enter": (426, 426), "io_uring_register": (427, 427),
    "bpf": (321, 280), "userfaultfd": (323, 282), "perf_event_open": (298, 241),
    "unshare": (272, 97), "setns": (308, 268), "clone": (56, 220), "clone3": (435, 435),
    "mount": (165, 40), "umount2": (166, 39), "pivot_root": (155, 41), "chroot": (161, 51),
    "open_tree": (428, 428), "move_mount": (429, 429), "fsopen": (430, 430),
    "fsconfig": (431, 431), "fsmount": (432, 432), "fspick": (433, 433),
    "mount_setattr": (442, 442), "keyctl": (250, 219), "add_key": (248, 217),
    "request_key": (249, 218), "init_module": (175, 105), "finit_module": (313, 273),
    "delete_module": (176, 106), "kexec_load": (246, 104), "kexec_file_load": (320, 294),
    "personality": (135, 92), "execve": (59, 221), "execveat": (322, 281),
    "ioctl": (16, 29), "prlimit64": (302, 261), "setpriority": (141, 140),
    "ioprio_set": (251, 30), "sched_setaffinity": (203, 122), "sched_setparam": (142, 118),
    "sched_setscheduler": (144, 119), "move_pages": (279, 239), "migrate_pages": (256, 238),
    "pidfd_getfd": (438, 438), "process_madvise": (440, 440), "kcmp": (312, 272),
    "get_robust_list": (274, 100), "open_by_handle_at": (304, 265),
    "name_to_handle_at": (303, 264), "fanotify_init": (300, 262), "acct": (163, 89),
    "swapon": (167, 224), "swapoff": (168, 225), "reboot": (169, 142), "quotactl": (179, 60),
    "quotactl_fd": (443, 443), "settimeofday": (164, 170), "clock_settime": (227, 112),
    "adjtimex": (159, 171), "clock_adjtime": (305, 266), "sethostname": (170, 161),
    "setdomainname": (171, 162), "lookup_dcookie": (212, 18), "iopl": (172, None),
    "ioperm": (173, None), "modify_ldt": (154, None), "uselib": (134, None),
    "seccomp": (317, 277), "kill": (62, 129), "tkill": (200, 130), "tgkill": (234, 131),
    "rt_sigqueueinfo": (129, 138), "rt_tgsigqueueinfo": (297, 240),
    "pidfd_send_signal": (424, 424), "fcntl": (72, 25),
    "chmod": (90, None), "fchmod": (91, 52), "fchmodat": (268, 53), "fchmodat2": (452, 452),
    "chown": (92, None), "fchown": (93, 55), "lchown": (94, None), "fchownat": (260, 54),
    "setxattr": (188, 5), "lsetxattr": (189, 6), "fsetxattr": (190, 7),
    "removexattr": (197, 14), "lremovexattr": (198, 15), "fremovexattr": (199, 16),
    "setxattrat": (463, 463), "removexattrat": (466, 466),
    "utime": (132, None), "utimes": (235, None), "futimesat": (261, None),
    "utimensat": (280, 88), "sched_setattr": (314, 274), "syslog": (103, 116),
    "mq_open": (240, 180), "mq_unlink": (241, 181),
    "shmget": (29, 194), "shmat": (30, 196), "shmctl": (31, 195), "shmdt": (67, 197),
    "semget": (64, 190), "semop": (65, 193), "semctl": (66, 191), "semtimedop": (220, 192),
    "msgget": (68, 186), "msgsnd": (69, 189), "msgrcv": (70, 188), "msgctl": (71, 187),
}

#: Denied outright with EPERM, and why (the "why" is what docs/security.md lists).
DENIED: dict[str, str] = {
    "ptrace": "read/write another process's memory and registers (the kernel's)",
    "process_vm_readv": "read another process's memory",
    "process_vm_writev": "write another process's memory",
    "pidfd_getfd": "steal a descriptor from another process",
    "process_madvise": "act on another process's memory",
    "kcmp": "probe another process's descriptors and memory layout",
    "get_robust_list": "leak another process's address-space layout",
    "io_uring_setup": "io_uring performs file and socket operations seccomp cannot see",
    "io_uring_enter": "io_uring (see io_uring_setup)",
    "io_uring_register": "io_uring (see io_uring_setup)",
    "bpf": "kernel attack surface; no use to agent code",
    "userfaultfd": "a standard kernel-exploit primitive",
    "perf_event_open": "kernel attack surface and side channels",
    "unshare": "new namespaces (a user namespace would grant capabilities inside it)",
    "setns": "entering other namespaces",
    "mount": "mounts", "umount2": "mounts", "pivot_root": "mounts", "chroot": "mounts",
    "open_tree": "mounts", "move_mount": "mounts", "fsopen": "mounts", "fsconfig": "mounts",
    "fsmount": "mounts", "fspick": "mounts", "mount_setattr": "mounts",
    "keyctl": "the kernel keyring can hold the user's credentials",
    "add_key": "kernel keyring", "request_key": "kernel keyring",
    "init_module": "kernel modules", "finit_module": "kernel modules",
    "delete_module": "kernel modules", "kexec_load": "kexec", "kexec_file_load": "kexec",
    "open_by_handle_at": "opens files by handle, around path-based rules",
    "name_to_handle_at": "pairs with open_by_handle_at",
    "fanotify_init": "watch other processes' file access",
    "acct": "privileged", "swapon": "privileged", "swapoff": "privileged", "reboot": "privileged",
    "quotactl": "privileged", "quotactl_fd": "privileged", "settimeofday": "privileged",
    "clock_settime": "privileged", "adjtimex": "privileged", "clock_adjtime": "privileged",
    "sethostname": "privileged", "setdomainname": "privileged", "lookup_dcookie": "privileged",
    "iopl": "port I/O", "ioperm": "port I/O", "modify_ldt": "old kernel attack surface",
    "uselib": "obsolete loader call",
    # Landlock does not control file metadata: without these the worker could chmod, chown,
    # re-time or tag any file of the user's, e.g. make ~/.ssh/id_rsa world-readable.
    **{call: "file metadata, which Landlock does not control" for call in (
        "chmod", "fchmod", "fchmodat", "fchmodat2", "chown", "fchown", "lchown", "fchownat",
        "setxattr", "lsetxattr", "fsetxattr", "removexattr", "lremovexattr", "fremovexattr",
        "setxattrat", "removexattrat", "utime", "utimes", "futimesat",
    )},
    # System V IPC and POSIX message queues are not files: Landlock cannot see them, and the
    # user's other processes (an X server's shared memory, say) would be reachable.
    **{call: "System V IPC / message queues, outside Landlock's view" for call in (
        "shmget", "shmat", "shmctl", "shmdt", "semget", "semop", "semctl", "semtimedop",
        "msgget", "msgsnd", "msgrcv", "msgctl", "mq_open", "mq_unlink",
    )},
    "syslog": "the kernel log (addresses, other users' activity) when dmesg_restrict is 0",
    "bind": "the worker serves no one: an abstract unix name it bound first would receive the "
    "connections of whatever program expects that name (an X server's, say); Landlock's scope "
    "covers connecting out, not being connected to",
    "connect": "the worker's sockets arrive connected (broker, socketpair); connect() would reach "
    "pathname unix sockets, which Landlock ABI <= 7 does not restrict",
}

EXEC_CALLS = ("execve", "execveat")


@dataclass(frozen=True)
class Arch:
    name: str
    audit: int
    seccomp_nr: int

    def nr(self, call: str) -> int | None:
        pair = _NR[call]
        return pair[0] if self.name == "x86_64" else pair[1]


ARCHES = {
    "x86_64": Arch("x86_64", AUDIT_ARCH_X86_64, 317),
    "aarch64": Arch("aarch64", AUDIT_ARCH_AARCH64, 277),
}


def current_arch() -> Arch | None:
    return ARCHES.get(platform.machine())


# A tiny assembler: instructions with symbolic jump targets, resolved to 8-bit offsets.
_Ins = tuple  # ("ld", off) | ("j", op, k, true_label, false_label) | ("ret", k) | ("label", name)


def _deny_unless_zero(call_args: tuple[int, ...]) -> Iterator[_Ins]:
    """Allow only when each listed 64-bit argument is 0 (pid 0 = the caller itself)."""
    for i in call_args:
        for off in (_arg_lo(i), _arg_hi(i)):
            yield ("ld", off)
            yield ("j", _JEQ_K, 0, None, "deny")
    yield ("ret", RET_ALLOW)


def _signal_blocks(own_pid: int) -> list[tuple[str, list[_Ins]]]:
    """Signals only to ``own_pid``: the fallback for Landlock ABI < 6, which has no signal scope.

    ``kill``/``tgkill``/``rt_*sigqueueinfo`` must name ``own_pid`` (not 0 or -1: those reach the
    process group or every process of the user); ``tkill`` and ``pidfd_send_signal`` are denied,
    and so is pointing SIGIO/SIGURG at another process (``F_SETOWN``, ``FIOSETOWN``).
    """
    only_self = [("ld", _arg_lo(0)), ("j", _JEQ_K, own_pid, "allow", "deny")]
    blocks: list[tuple[str, list[_Ins]]] = [
        (call, list(only_self))
        for call in ("kill", "tgkill", "rt_sigqueueinfo", "rt_tgsigqueueinfo")
    ]
    blocks += [("tkill", [("ret", RET_ERRNO | EPERM)]),
               ("pidfd_send_signal", [("ret", RET_ERRNO | EPERM)])]
    blocks.append(("fcntl", [
        ("ld", _arg_lo(1)), ("j", _JEQ_K, F_SETOWN, "deny", None),
        ("j", _JEQ_K, F_SETOWN_EX, "deny", "allow"),
    ]))
    return blocks


def _blocks(arch: Arch, allow_exec: bool, own_pid: int | None) -> list[tuple[str, list[_Ins]]]:
    """(syscall, instructions) for every syscall that needs its own block."""
    blocks: list[tuple[str, list[_Ins]]] = []

    def unix_stream_only(type_arg: int) -> list[_Ins]:
        return [
            ("ld", _arg_lo(0)),
            ("j", _JEQ_K, AF_UNIX, None, "deny"),
            ("ld", _arg_lo(type_arg)),
            ("alu_and", SOCK_TYPE_MASK),
            ("j", _JEQ_K, SOCK_STREAM, "allow", None),
            ("j", _JEQ_K, SOCK_SEQPACKET, "allow", "deny"),
        ]

    blocks.append(("socket", unix_stream_only(1)))
    blocks.append(("socketpair", unix_stream_only(1)))
    # sendto with a destination address reaches unconnected sockets by name.
    blocks.append(("sendto", list(_deny_unless_zero((4,)))))
    blocks.append(("clone", [("ld", _arg_lo(0)), ("j", _JSET_K, CLONE_NEW_MASK, "deny", "allow")]))
    blocks.append(("clone3", [("ret", RET_ERRNO | ENOSYS)]))
    # utimensat with a path re-times any file (metadata, see DENIED); with a NULL path it is
    # futimens on a descriptor the worker opened under Landlock's rules.
    blocks.append(("utimensat", list(_deny_unless_zero((1,)))))
    blocks.append(("personality", [
        ("ld", _arg_lo(0)), ("j", _JEQ_K, PERSONALITY_QUERY, "allow", "deny"),
    ]))
    ioctl: list[_Ins] = [("ld", _arg_lo(1)), ("j", _JEQ_K, TIOCSTI, "deny", None)]
    if own_pid is not None:
        ioctl += [("j", _JEQ_K, FIOSETOWN, "deny", None), ("j", _JEQ_K, SIOCSPGRP, "deny", None)]
    blocks.append(("ioctl", [*ioctl, ("j", _JEQ_K, TIOCLINUX, "deny", "allow")]))
    # Calls that take a pid: only 0 (the caller) is allowed, so the kernel's limits, priority,
    # CPU affinity and memory placement are out of reach.
    for call in ("prlimit64", "sched_setaffinity", "sched_setparam", "sched_setscheduler",
                 "sched_setattr", "move_pages", "migrate_pages"):
        blocks.append((call, list(_deny_unless_zero((0,)))))
    # setpriority/ioprio_set(which, who): "who 0" means the caller only for PROCESS.
    for call, which in (("setpriority", PRIO_PROCESS), ("ioprio_set", IOPRIO_WHO_PROCESS)):
        blocks.append((call, [
            ("ld", _arg_lo(0)), ("j", _JEQ_K, which, None, "deny"),
            *_deny_unless_zero((1,)),
        ]))
    if not allow_exec:
        for call in EXEC_CALLS:
            blocks.append((call, [("ret", RET_ERRNO | EPERM)]))
    if own_pid is not None:
        blocks += _signal_blocks(own_pid)
    return [(c, b) for c, b in blocks if arch.nr(c) is not None]


def build_filter(
    arch: Arch, allow_exec: bool, own_pid: int | None = None
) -> list[tuple[int, int, int, int]]:
    """The program as (code, jt, jf, k) tuples; pure, so tests can inspect it on any machine.

    ``own_pid`` adds the signal rules that stand in for Landlock's signal scope (ABI < 6).
    """
    # Jumps reach at most 255 instructions ahead, and only forward: kills sit inline in the
    # header, the dispatch chain has its own deny exit, the blocks share the exits at the end.
    prog: list[_Ins] = [
        ("ld", _LD_ABS_ARCH),
        ("j", _JEQ_K, arch.audit, "arch_ok", None),
        ("ret", RET_KILL_PROCESS),
        ("label", "arch_ok"),
        ("ld", _LD_ABS_NR),
    ]
    if arch.name == "x86_64":
        prog += [("j", _JGE_K, 0x40000000, None, "nr_ok"), ("ret", RET_KILL_PROCESS),
                 ("label", "nr_ok")]
    blocks = _blocks(arch, allow_exec, own_pid)
    for i, (call, _) in enumerate(blocks):
        prog.append(("j", _JEQ_K, arch.nr(call), f"block{i}", None))
    for call in DENIED:
        nr = arch.nr(call)
        if nr is not None:
            prog.append(("j", _JEQ_K, nr, "denied", None))
    prog += [("ret", RET_ALLOW), ("label", "denied"), ("ret", RET_ERRNO | EPERM)]
    for i, (_, body) in enumerate(blocks):
        prog.append(("label", f"block{i}"))
        prog += body
    prog += [("label", "allow"), ("ret", RET_ALLOW)]
    prog += [("label", "deny"), ("ret", RET_ERRNO | EPERM)]
    return _assemble(prog)


def _assemble(prog: list[_Ins]) -> list[tuple[int, int, int, int]]:
    labels: dict[str, int] = {}
    pc = 0
    for ins in prog:
        if ins[0] == "label":
            labels[ins[1]] = pc
        else:
            pc += 1
    out: list[tuple[int, int, int, int]] = []
    for ins in prog:
        kind = ins[0]
        if kind == "label":
            continue
        here = len(out)
        if kind == "ld":
            out.append((_LD_W_ABS, 0, 0, ins[1]))
        elif kind == "alu_and":
            out.append((_AND_K, 0, 0, ins[1]))
        elif kind == "ret":
            out.append((_RET_K, 0, 0, ins[1]))
        else:
            _, op, k, t, f = ins
            out.append((op, _offset(labels, t, here), _offset(labels, f, here), k))
    return out


def _offset(labels: dict[str, int], label: str | None, here: int) -> int:
    if label is None:
        return 0
    jump = labels[label] - here - 1
    if not 0 <= jump <= 255:
        raise ValueError(f"seccomp filter jump to {label} out of range ({jump}); reorder blocks")
    return jump


class _SockFilter(ctypes.Structure):
    _fields_ = [
        ("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8),
        ("k", ctypes.c_uint32),
    ]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(_SockFilter))]


SECCOMP_SET_MODE_FILTER = 1
SECCOMP_GET_ACTION_AVAIL = 2
SECCOMP_FILTER_FLAG_TSYNC = 1


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def filter_available(arch: Arch) -> tuple[bool, str]:
    """Whether seccomp filters with KILL_PROCESS work here, and if not, why."""
    action = ctypes.c_uint32(RET_KILL_PROCESS)
    syscall = _libc().syscall
    syscall.restype = ctypes.c_long
    if syscall(arch.seccomp_nr, SECCOMP_GET_ACTION_AVAIL, 0, ctypes.byref(action)) == 0:
        return True, ""
    err = ctypes.get_errno()
    if err == ENOSYS:
        return False, "the kernel has no seccomp (built without CONFIG_SECCOMP_FILTER)"
    return False, f"seccomp filters are not available: {os.strerror(err)}"


def install(arch: Arch, allow_exec: bool, own_pid: int | None = None) -> None:
    """Install the filter on every thread of the process (TSYNC); needs no_new_privs first."""
    prog = build_filter(arch, allow_exec, own_pid)
    array = (_SockFilter * len(prog))(*[_SockFilter(*ins) for ins in prog])
    fprog = _SockFprog(len(prog), array)
    syscall = _libc().syscall
    syscall.restype = ctypes.c_long
    result = syscall(arch.seccomp_nr, SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_TSYNC,
                     ctypes.byref(fprog))
    if result != 0:
        err = ctypes.get_errno()
        detail = os.strerror(err) if result < 0 else f"thread {result} could not be synchronised"
        raise OSError(err, f"seccomp(SET_MODE_FILTER): {detail}")


def packed(prog: list[tuple[int, int, int, int]]) -> bytes:
    """The program as the kernel reads it (8 bytes per instruction), for tests and digests."""
    return b"".join(struct.pack("<HBBI", *ins) for ins in prog)
