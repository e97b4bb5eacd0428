"""Run one action in a fresh process, confined or not, and print what happened as JSON.

Usage: ``python confinement_helper.py '<json>'`` with keys ``action``, ``ctx`` (paths, pids and
ports the test set up), ``spec`` (ConfinementSpec fields, or null for an unconfined control run),
``layers`` ("full" = confine_current_process, "landlock" or "seccomp" = that layer alone, to show
each one holds by itself) and ``before`` (an action to run before confining, e.g. start a thread).

The last line of stdout is ``{"ok": bool, "errno": int|null, "type": str, "value": ...}``. The
syscall numbers below are x86_64's, written independently of cave/security/_seccomp.py, so a
wrong number there shows up here as an action that succeeds.
"""

from __future__ import annotations

import ctypes
import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from typing import Any

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long


def _c(result: int, what: str) -> int:
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return result


def read(path: str) -> str:
    with open(path, "rb") as f:
        return f.read(16).decode("latin-1")


def write(path: str) -> int:
    with open(path, "w") as f:
        return f.write("written")


def rw_tree(d: str) -> str:
    write(os.path.join(d, "a"))
    os.mkdir(os.path.join(d, "sub"))
    os.rename(os.path.join(d, "a"), os.path.join(d, "sub", "b"))
    text = read(os.path.join(d, "sub", "b"))
    os.truncate(os.path.join(d, "sub", "b"), 0)
    os.remove(os.path.join(d, "sub", "b"))
    os.rmdir(os.path.join(d, "sub"))
    return text


def tcp_connect(port: int) -> str:
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.close()
    return "connected"


def abstract_connect(name: str) -> str:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect("\0" + name)
    s.close()
    return "connected"


def _abstract_bind(name: str) -> str:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind("\0" + name + "-squat")  # a name nobody holds yet
    s.close()
    return "bound"


def ptrace_seize(pid: int) -> int:
    # PTRACE_SEIZE does not stop the tracee, so a failure of this test cannot hang pytest.
    return _c(libc.ptrace(0x4206, pid, None, None), "ptrace")


def vm_write(pid: int, addr: int) -> int:
    class Iovec(ctypes.Structure):
        _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]

    data = ctypes.create_string_buffer(b"PWNED", 5)
    local = Iovec(ctypes.cast(data, ctypes.c_void_p), 5)
    remote = Iovec(addr, 5)
    return _c(libc.process_vm_writev(pid, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0),
              "process_vm_writev")


def io_uring_setup() -> int:
    params = ctypes.create_string_buffer(120)
    fd = _c(libc.syscall(425, 4, params), "io_uring_setup")
    os.close(fd)
    return fd


def memfd_exec() -> str:
    fd = os.memfd_create("payload")
    os.write(fd, b"#!/bin/sh\nexit 0\n")
    os.execve(fd, ["true"], {})  # fexecve -> execveat(fd, "", AT_EMPTY_PATH)
    return "unreachable"


def clone_newuser() -> int:
    pid = _c(libc.syscall(56, 0x10000000 | 17, None, None, None, None), "clone")  # | SIGCHLD
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    return pid


def thread_then(what: Callable[[], Any]) -> Any:
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = what()
        except BaseException as exc:  # noqa: BLE001 - reported to the parent test
            box["exc"] = exc

    t = threading.Thread(target=run)
    t.start()
    t.join()
    if "exc" in box:
        raise box["exc"]
    return box["value"]


def numpy_pandas() -> float:
    import numpy as np
    import pandas as pd

    frame = pd.DataFrame({"a": np.arange(100_000), "b": np.random.default_rng(0).random(100_000)})
    frame["c"] = frame.a * frame.b
    grouped = frame.groupby(frame.a % 7).c.sum()
    return float(grouped.sum() + np.linalg.norm(np.ones((50, 50)) @ np.ones((50, 50))))


def allocate(n: int) -> int:
    return len(bytearray(n))


def second_confine(ctx: dict[str, Any]) -> dict[str, Any]:
    """Confine again asking for more (the outside tree, exec): what the first denied stays denied,
    and what the second leaves out (the read-write tree) is now denied too."""
    from cave.security._confinement import ConfinementSpec, confine_current_process

    confine_current_process(ConfinementSpec(read_write=(ctx["outside_dir"],), allow_exec=True))
    outcome: dict[str, Any] = {}
    for name, what in (
        ("write_outside", lambda: write(os.path.join(ctx["outside_dir"], "new"))),
        ("execve", lambda: os.execv("/bin/true", ["true"])),
        ("write_rw", lambda: write(os.path.join(ctx["rw_dir"], "again"))),
    ):
        try:
            what()
            outcome[name] = "ok"
        except OSError as exc:
            outcome[name] = exc.errno
    return outcome


def actions(ctx: dict[str, Any]) -> dict[str, Callable[[], Any]]:
    ppid = os.getppid()
    return {
        "noop": lambda: None,
        "read_ro": lambda: read(ctx["ro_file"]),
        "write_ro": lambda: write(ctx["ro_file"]),
        "create_in_ro": lambda: write(os.path.join(ctx["ro_dir"], "new")),
        "read_outside": lambda: read(ctx["outside_file"]),
        "write_outside": lambda: write(os.path.join(ctx["outside_dir"], "new")),
        "rw_tree": lambda: rw_tree(ctx["rw_dir"]),
        "proc_parent_mem": lambda: read(f"/proc/{ppid}/mem"),
        "proc_parent_environ": lambda: read(f"/proc/{ppid}/environ"),
        "proc_1": lambda: os.listdir("/proc/1/"),
        "proc_self": lambda: read("/proc/self/status"),
        "dev_null": lambda: write("/dev/null"),
        "tcp_connect": lambda: tcp_connect(ctx["tcp_port"]),
        "af_inet_socket": lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM).close(),
        "af_inet6_udp": lambda: socket.socket(socket.AF_INET6, socket.SOCK_DGRAM).close(),
        "af_netlink": lambda: socket.socket(socket.AF_NETLINK, socket.SOCK_RAW).close(),
        "unix_dgram": lambda: socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM).close(),
        "abstract_connect": lambda: abstract_connect(ctx["abstract_name"]),
        "abstract_bind": lambda: _abstract_bind(ctx["abstract_name"]),
        "socketpair_and_pipe": lambda: _pair_and_pipe(),
        "kill_parent": lambda: os.kill(ppid, 0),
        "kill_self": lambda: os.kill(os.getpid(), 0),
        "raise_self": _raise_self,
        "memfd_shared": _memfd_shared,
        "capabilities": _capabilities,
        "dlopen_from_scratch": lambda: _dlopen_from_scratch(ctx["rw_dir"]),
        "raise_memory_limit": _raise_memory_limit,
        "mknod_in_rw": lambda: _mknod(ctx["rw_dir"]),
        "fork_child": lambda: _fork_child(ctx["outside_file"]),
        "truncate_ro": lambda: os.truncate(ctx["ro_file"], 0),
        "symlink_outside": lambda: os.symlink("/etc", os.path.join(ctx["outside_dir"], "l")),
        "fifo_in_ro": lambda: os.mkfifo(os.path.join(ctx["ro_dir"], "fifo")),
        "link_outside_into_rw": lambda: os.link(ctx["outside_file"],
                                                os.path.join(ctx["rw_dir"], "stolen")),
        "symlink_escape": lambda: _symlink_escape(ctx["rw_dir"], ctx["outside_file"]),
        "chmod_outside": lambda: os.chmod(ctx["outside_file"], 0o644),
        "utime_outside": lambda: os.utime(ctx["outside_file"]),
        "chmod_ro_by_fd": lambda: _fchmod(ctx["ro_file"]),
        "sysv_shmget": _sysv_shm,
        "setown_parent": lambda: _setown(ppid),
        "ptrace_parent": lambda: ptrace_seize(ppid),
        "vm_write_parent": lambda: vm_write(ppid, ctx["parent_buffer"]),
        "io_uring_setup": io_uring_setup,
        "bpf": lambda: _c(libc.syscall(321, 0, None, 0), "bpf"),
        "userfaultfd": lambda: _c(libc.syscall(323, 1), "userfaultfd"),  # USER_MODE_ONLY
        "unshare_user": lambda: _c(libc.unshare(0x10000000), "unshare"),
        "clone_newuser": clone_newuser,
        "mount": lambda: _c(libc.mount(b"none", ctx["rw_dir"].encode(), b"tmpfs", 0, None),
                            "mount"),
        "keyctl": lambda: _c(libc.syscall(250, 0, -3, 0), "keyctl"),  # GET_KEYRING_ID session
        "memfd_exec": memfd_exec,
        "execve": lambda: os.execv("/bin/true", ["true"]),
        "subprocess": lambda: subprocess.run(["/bin/true"], check=True).returncode,
        "personality_set": lambda: _c(libc.personality(0x0008), "personality"),  # PER_LINUX32
        "personality_query": lambda: _c(libc.personality(0xFFFFFFFF), "personality"),
        "prlimit_parent": lambda: _prlimit_parent(ppid),
        "ioctl_tiocsti": lambda: _c(libc.ioctl(0, 0x5412, ctypes.c_char_p(b"x")), "ioctl"),
        "x32_getpid": lambda: libc.syscall(0x40000000 | 39),
        "thread_read_outside": lambda: thread_then(lambda: read(ctx["outside_file"])),
        "thread_socket": lambda: thread_then(lambda: socket.socket().close()),
        "numpy_pandas": numpy_pandas,
        "allocate": lambda: allocate(ctx.get("allocate", 0)),
        "second_confine": lambda: second_confine(ctx),
        "start_thread": lambda: _start_sleeping_thread(),
    }


def _pair_and_pipe() -> str:
    a, b = socket.socketpair()
    a.sendall(b"ping")
    got = b.recv(4)
    r, w = os.pipe()
    os.write(w, b"pong")
    return (got + os.read(r, 4)).decode()


def _raise_self() -> int:
    import signal

    got: list[int] = []
    signal.signal(signal.SIGUSR1, lambda signum, frame: got.append(signum))
    signal.raise_signal(signal.SIGUSR1)  # tgkill(own pid, own tid)
    thread_then(lambda: os.kill(os.getpid(), signal.SIGUSR1))  # from a thread created later
    return len(got)


def _fork_child(outside_file: str) -> int:
    pid = os.fork()
    if pid == 0:
        try:  # the child inherits the confinement
            read(outside_file)
            os._exit(1)
        except PermissionError:
            os._exit(7)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def _dlopen_from_scratch(rw_dir: str) -> str:
    """Native code written into the scratch tree loads (mmap PROT_EXEC is not Landlock-checked):
    by design, since it runs under the same confinement as the Python that loaded it."""
    import math
    import shutil

    copy = os.path.join(rw_dir, "copied.so")
    shutil.copyfile(math.__file__, copy)
    ctypes.CDLL(copy)
    os.remove(copy)
    return "loaded"


def _capabilities() -> dict[str, int]:
    with open("/proc/self/status") as f:
        return {k: int(v, 16) for k, v in (line.split(":") for line in f)
                if k in ("CapEff", "CapPrm", "CapInh", "CapAmb")}


def _raise_memory_limit() -> Any:
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    return resource.getrlimit(resource.RLIMIT_AS)


def _mknod(rw_dir: str) -> str:
    import stat

    path = os.path.join(rw_dir, "null")
    os.mknod(path, 0o600 | stat.S_IFCHR, os.makedev(1, 3))  # a twin of /dev/null
    os.remove(path)
    return "made"


def _memfd_shared() -> bytes:
    """What strict mode's shared memory needs: memfd_create, ftruncate, MAP_SHARED, and a
    second mapping of the same memory seeing the first one's writes."""
    import mmap

    fd = os.memfd_create("shared")
    os.ftruncate(fd, 1 << 20)
    a, b = mmap.mmap(fd, 1 << 20), mmap.mmap(fd, 1 << 20)
    a[:5] = b"hello"
    return bytes(b[:5])


def _symlink_escape(rw_dir: str, target: str) -> str:
    link = os.path.join(rw_dir, "escape")
    if not os.path.lexists(link):
        os.symlink(target, link)  # allowed: MAKE_SYM in the read-write tree...
    try:
        return read(link)  # ...but following it reaches a file outside: denied
    finally:
        os.remove(link)


def _sysv_shm() -> int:
    shmid = _c(libc.shmget(0, 4096, 0o1600), "shmget")  # IPC_PRIVATE, IPC_CREAT | 0600
    libc.shmctl(shmid, 0, None)  # IPC_RMID: the control run leaves nothing behind
    return shmid


def _fchmod(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)  # Landlock allows the read-only open...
    os.fchmod(fd, 0o666)  # ...but not the mode change through it


def _setown(ppid: int) -> int:
    import fcntl

    r, w = os.pipe()
    return fcntl.fcntl(r, fcntl.F_SETOWN, ppid)  # SIGIO on I/O would go to the parent


def _prlimit_parent(ppid: int) -> Any:
    import resource

    return resource.prlimit(ppid, resource.RLIMIT_NOFILE)


def _start_sleeping_thread() -> None:
    threading.Thread(target=threading.Event().wait, daemon=True).start()


def confine(spec: dict[str, Any], layers: str) -> None:
    from cave.security import _confinement, _landlock, _seccomp
    from cave.security._confinement import ConfinementSpec, confine_current_process

    spec_obj = ConfinementSpec(**{k: tuple(v) if isinstance(v, list) else v
                                  for k, v in spec.items()})
    if layers == "full":
        confine_current_process(spec_obj)
        return
    _confinement._prctl(_confinement.PR_SET_NO_NEW_PRIVS, 1)
    arch = _seccomp.current_arch()
    assert arch is not None
    if layers == "landlock":
        abi, _ = _landlock.abi_version()
        _landlock.restrict(abi, list(spec_obj.read_only) + [f"/proc/{os.getpid()}"],
                           list(spec_obj.read_write), spec_obj.allow_exec)
    elif layers == "seccomp":
        _seccomp.install(arch, spec_obj.allow_exec)
    else:
        raise ValueError(layers)


def main() -> None:
    request = json.loads(sys.argv[1])
    ctx = request["ctx"]
    table = actions(ctx)
    result: dict[str, Any] = {"ok": False, "errno": None, "type": "", "value": None}
    try:
        if request.get("before"):
            table[request["before"]]()
        if request.get("spec") is not None:
            confine(request["spec"], request.get("layers", "full"))
        value = table[request["action"]]()
        result.update(ok=True, value=value if isinstance(value, dict) else repr(value))
    except BaseException as exc:  # noqa: BLE001 - the parent test decides what is expected
        result.update(type=type(exc).__name__, errno=getattr(exc, "errno", None),
                      value=str(exc)[:2000])
    sys.stdout.flush()
    print("\n" + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
