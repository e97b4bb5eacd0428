"""Raw CPython audit events -> the capabilities they use (the guard's translation table).

``classify(event, args)`` returns the checks one event needs (``Check``: a capability plus words
for the approver), a ``Refusal`` for events that no policy may allow from agent code (they would
let it switch the guard off or read the process's memory), or None for events that need nothing.
Pure translation: no state, no decisions. Paths are made absolute with symlinks resolved;
descriptor arguments are resolved through ``/proc/self/fd`` (Linux).
"""

from __future__ import annotations

import os
import shlex
import shutil
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ._capabilities import Capability

__all__ = ["BLOCKED_IMPORTS", "Check", "Refusal", "classify", "resolve_path", "shell_program"]


@dataclass(frozen=True)
class Check:
    """One capability an event needs."""

    capability: Capability
    summary: str
    details: dict[str, Any] = field(default_factory=dict)
    grant_as: str | None = None


@dataclass(frozen=True)
class Refusal:
    """An event agent code may never cause, whatever the policy says."""

    reason: str


Result = tuple[Check, ...] | Refusal | None

BLOCKED_IMPORTS = frozenset(
    {
        "_xxsubinterpreters",  # a subinterpreter has no audit hooks
        "_xxinterpchannels",
        "_testcapi",
        "_testinternalcapi",
        "_testmultiphase",
        "_ctypes_test",
    }
)

_MEMORY = "it gives direct access to the process's memory, including the guard's own state"
_REFUSED = {
    "sys.addaudithook": "agent code may not add audit hooks (they see Cave's own security events)",
    "sys.settrace": "agent code may not install trace functions (they see every frame's locals)",
    "sys.setprofile": "agent code may not install profile functions (they see every frame)",
    "sys._current_frames": "agent code may not read other threads' frames",
    "sys._current_exceptions": "agent code may not read other threads' exceptions",
    "gc.get_objects": "agent code may not walk the garbage collector's objects",
    "gc.get_referrers": "agent code may not walk the garbage collector's referrers",
    "gc.get_referents": "agent code may not walk the garbage collector's referents",
    "cpython.PyInterpreterState_New": "agent code may not create subinterpreters (no audit hooks)",
    "ctypes.dlopen": f"agent code may not load native libraries with ctypes: {_MEMORY}",
    "ctypes.dlsym": f"agent code may not look up native symbols with ctypes: {_MEMORY}",
    "ctypes.dlsym/handle": f"agent code may not look up native symbols with ctypes: {_MEMORY}",
    "ctypes.string_at": f"agent code may not read raw memory: {_MEMORY}",
    "ctypes.wstring_at": f"agent code may not read raw memory: {_MEMORY}",
    "ctypes.cdata": f"agent code may not map objects onto raw addresses: {_MEMORY}",
    "ctypes.cdata/buffer": f"agent code may not map objects onto raw addresses: {_MEMORY}",
    "ctypes.PyObj_FromPtr": f"agent code may not turn addresses into objects: {_MEMORY}",
    "ctypes.call_function": f"agent code may not call native functions: {_MEMORY}",
    "sqlite3.enable_load_extension": "agent code may not load SQLite extensions (native code)",
    "sqlite3.load_extension": "agent code may not load SQLite extensions (native code)",
    "os.chdir": (
        "agent code may not change the process's working directory (the user's cells share "
        "it); use absolute paths, or shell.run(argv, cwd=...)"
    ),
    "signal.pthread_kill": "agent code may not signal the kernel's threads",
    "socket.sethostname": "agent code may not change the host name",
    "resource.setrlimit": "agent code may not change the kernel's resource limits",
    "resource.prlimit": "agent code may not change resource limits",
    "os.add_dll_directory": "agent code may not change where native libraries load from",
}


# -- paths ---------------------------------------------------------------------------------
def _fspath(path: Any) -> str | None:
    if isinstance(path, str):
        return path
    if isinstance(path, (bytes, bytearray)):
        return os.fsdecode(bytes(path))
    return None


def _fd_path(fd: int) -> str | None:
    try:
        target = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return None
    return target if target.startswith("/") else None


def realpath(path: str) -> str:
    """``os.path.realpath`` for an absolute path, about twice as fast (one lstat per component).

    Every existing symlink is resolved; past the first missing component the rest is taken
    literally (it cannot contain symlinks: its parent does not exist).
    """
    pending = path.split("/")
    pending.reverse()
    out: list[str] = []
    links = 0
    missing = False
    lstat, readlink, islink = os.lstat, os.readlink, stat.S_ISLNK
    while pending:
        name = pending.pop()
        if not name or name == ".":
            continue
        if name == "..":
            if out:
                out.pop()
            continue
        if missing:
            out.append(name)
            continue
        candidate = "/" + "/".join(out) + ("/" if out else "") + name
        try:
            st = lstat(candidate)
        except OSError:
            missing = True
            out.append(name)
            continue
        if islink(st.st_mode):
            links += 1
            if links > 40:  # a loop: the literal rest; the open itself will fail with ELOOP
                return "/".join([candidate, *reversed(pending)])
            target = readlink(candidate)
            if target.startswith("/"):
                out = []
            pending.extend(reversed(target.split("/")))
        else:
            out.append(name)
    return "/" + "/".join(out)


def resolve_path(path: Any, dir_fd: Any = None, *, follow: bool = True) -> str | None:
    """Absolute, symlink-resolved path for an event's path argument (None: not a file path).

    ``follow=False`` resolves the parent directory only, for operations on the link itself
    (unlink, rename, mkdir, symlink).
    """
    if isinstance(path, int) and not isinstance(path, bool):
        return _fd_path(path)
    text = _fspath(path)
    if text is None:
        return None
    if not os.path.isabs(text):
        base = None
        if isinstance(dir_fd, int) and dir_fd >= 0:
            base = _fd_path(dir_fd)
        text = os.path.join(base or os.getcwd(), text)
    if follow:
        return realpath(text)
    head, tail = os.path.split(os.path.normpath(text))
    if tail in ("", ".", ".."):
        return realpath(text)
    return os.path.join(realpath(head), tail)


def _fs(kind: str, path: str, verb: str, **details: Any) -> Check:
    return Check(Capability(kind, path), f"{verb} {path}", {"path": path, **details})


def _paths(kind: str, verb: str, *specs: tuple[Any, Any, bool]) -> Result:
    checks = []
    for raw, dir_fd, follow in specs:
        real = resolve_path(raw, dir_fd, follow=follow)
        if real is not None:
            checks.append(_fs(kind, real, verb))
    return tuple(checks)


# -- open ----------------------------------------------------------------------------------
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


def _open(args: tuple[Any, ...]) -> Result:
    path, mode, flags = (tuple(args) + (None, None, 0))[:3]
    if isinstance(path, int) and not isinstance(path, bool):
        return None  # wrapping a descriptor the code already holds
    text = _fspath(path)
    if text is None:
        return None
    if isinstance(mode, str):
        write = any(c in mode for c in "wax+")
        read = "r" in mode or "+" in mode or not write
        fresh = "w" in mode or "x" in mode  # truncated or new: nothing to read
    else:
        flags = flags or 0
        access = flags & os.O_ACCMODE
        read = access in (os.O_RDONLY, os.O_RDWR)
        write = access in (os.O_WRONLY, os.O_RDWR) or bool(flags & _WRITE_FLAGS)
        fresh = bool(flags & os.O_TRUNC) or bool(flags & os.O_CREAT and flags & os.O_EXCL)
    real = resolve_path(text)
    if real is None:
        return None
    checks = []
    if write:
        checks.append(_fs("fs.write", real, "open for writing"))
    if read and not (write and fresh):
        checks.append(_fs("fs.read", real, "open for reading"))
    return tuple(checks)


# -- processes -----------------------------------------------------------------------------
def shell_program(program: Any, cwd: Any = None, env: Any = None) -> str:
    """Absolute path of the program a process would run (PATH search, not symlink-resolved)."""
    text = _fspath(program) or str(program)
    if "/" in text:
        base = _fspath(cwd) if cwd is not None else None
        return os.path.abspath(os.path.join(base or os.getcwd(), text))
    path = None
    if isinstance(env, dict):
        raw = env.get("PATH", env.get(b"PATH"))
        path = _fspath(raw) if raw is not None else None
    found = shutil.which(text, path=path)
    return os.path.abspath(found) if found else text


def _argv(args: Any) -> list[str]:
    if isinstance(args, (str, bytes)):
        return [_fspath(args) or str(args)]
    try:
        return [_fspath(a) or str(a) for a in args]
    except TypeError:
        return [str(args)]


def _run(program: str, argv: list[str], cwd: Any = None) -> Check:
    details: dict[str, Any] = {"argv": argv}
    if cwd is not None:
        details["cwd"] = _fspath(cwd) or str(cwd)
    return Check(Capability("shell", program), f"run {shlex.join(argv)}", details)


def _popen(args: tuple[Any, ...]) -> Result:
    executable, argv, cwd, env = (tuple(args) + (None,) * 4)[:4]
    if isinstance(argv, (str, bytes)):
        words = _argv(argv)
        text = words[0]
        try:
            words = shlex.split(text)
        except ValueError:
            words = [text]
        program = executable if executable is not None else (words[0] if words else text)
        argv_list = words
    else:
        argv_list = _argv(argv)
        program = executable if executable is not None else (argv_list[0] if argv_list else "")
    return (_run(shell_program(program, cwd, env), argv_list, cwd),)


def _system(args: tuple[Any, ...]) -> Result:
    command = _fspath(args[0]) or str(args[0])
    return (_run(shell_program("/bin/sh"), ["/bin/sh", "-c", command]),)


def _exec_like(path: Any, argv: Any) -> Result:
    return (_run(shell_program(path), _argv(argv) if argv is not None else [str(path)]),)


def _fork(_args: tuple[Any, ...]) -> Result:
    return (Check(Capability("shell", "os.fork"), "fork the kernel process", {}),)


def _putenv(args: tuple[Any, ...]) -> Result:
    name = _fspath(args[0]) or str(args[0])
    verb = "set" if len(args) > 1 else "unset"
    return (Check(Capability("env", name), f"{verb} environment variable {name}", {"name": name}),)


# -- network -------------------------------------------------------------------------------
def net_resource(host: Any, port: Any = None) -> str | None:
    text = _fspath(host)
    if text is None:
        return None
    text = text.strip().rstrip(".").lower()
    if not text:
        return None
    if ":" in text and not text.startswith("["):
        text = f"[{text}]"
    if isinstance(port, int) and not isinstance(port, bool):
        return f"{text}:{port}"
    port_text = _fspath(port)
    if port_text and port_text.isdigit():
        return f"{text}:{port_text}"
    if port_text:  # a service name like "https"
        try:
            import socket

            return f"{text}:{socket.getservbyname(port_text)}"
        except OSError:
            return text
    return text


def _address(address: Any) -> str | None:
    if isinstance(address, tuple) and address:
        return net_resource(address[0], address[1] if len(address) > 1 else None)
    text = _fspath(address)
    if text is not None:  # AF_UNIX
        if text.startswith("\0"):
            return "unix:@" + text[1:]
        return "unix:" + (resolve_path(text) or text)
    return None


def _net(resource: str | None, verb: str) -> Result:
    if resource is None:
        return None
    return (Check(Capability("net", resource), f"{verb} {resource}", {"host": resource}),)


def _sock(verb: str) -> Callable[[tuple[Any, ...]], Result]:
    return lambda args: _net(_address(args[1]) if len(args) > 1 else None, verb)


def _host_port(verb: str, host_at: int = 1, port_at: int = 2) -> Callable[..., Result]:
    def handler(args: tuple[Any, ...]) -> Result:
        host = args[host_at] if len(args) > host_at else None
        port = args[port_at] if len(args) > port_at else None
        return _net(net_resource(host, port), verb)

    return handler


def _getnameinfo(args: tuple[Any, ...]) -> Result:
    sockaddr = args[0] if args else None
    return _net(_address(sockaddr), "reverse-resolve")


# -- other ---------------------------------------------------------------------------------
def _sqlite(args: tuple[Any, ...]) -> Result:
    db = _fspath(args[0]) if args else None
    if db is None or db in ("", ":memory:") or db.startswith("file::memory:"):
        return None
    if db.startswith("file:"):
        db = db[5:].split("?", 1)[0]
        if db.startswith("//"):
            db = db[2:]
    real = resolve_path(db)
    if real is None:
        return None
    return (_fs("fs.read", real, "open database"), _fs("fs.write", real, "open database"))


def _rmtree(args: tuple[Any, ...]) -> Result:
    path = args[0] if args else None
    dir_fd = args[1] if len(args) > 1 else None
    real = resolve_path(path, dir_fd, follow=False)
    if real is None:
        return None
    return (
        Check(
            Capability("fs.delete", real),
            f"delete {real} and everything in it",
            {"path": real, "recursive": True},
            grant_as=f"fs.delete:{real}/**",
        ),
    )


def _import(args: tuple[Any, ...]) -> Result:
    module = args[0] if args else ""
    if isinstance(module, str) and module.split(".")[0] in BLOCKED_IMPORTS:
        return Refusal(f"agent code may not import {module}: it can switch the guard off")
    return None


def _p(
    kind: str, verb: str, path_at: int, fd_at: int | None, follow: bool
) -> Callable[[tuple[Any, ...]], Result]:
    """Handler for an event whose args hold one path (and maybe its dir_fd)."""

    def handler(args: tuple[Any, ...]) -> Result:
        path = args[path_at] if len(args) > path_at else None
        if path is None:
            path = "."
        dir_fd = args[fd_at] if fd_at is not None and len(args) > fd_at else None
        return _paths(kind, verb, (path, dir_fd, follow))

    return handler


def _rename(args: tuple[Any, ...]) -> Result:
    a = tuple(args) + (None, None, None, None)
    return _paths("fs.write", "move", (a[0], a[2], False), (a[1], a[3], False))


def _link(args: tuple[Any, ...]) -> Result:
    src, dst = args[0], args[1]
    src_fd = args[2] if len(args) > 2 else None
    dst_fd = args[3] if len(args) > 3 else None
    s = resolve_path(src, src_fd)
    d = resolve_path(dst, dst_fd, follow=False)
    checks = []
    if s is not None:  # a hard link gives the new name read and write access to the file
        checks += [_fs("fs.read", s, "hard-link"), _fs("fs.write", s, "hard-link")]
    if d is not None:
        checks.append(_fs("fs.write", d, "create link"))
    return tuple(checks)


_HANDLERS: dict[str, Callable[[tuple[Any, ...]], Result]] = {
    "open": _open,
    "os.listdir": _p("fs.read", "list", 0, None, True),
    "os.scandir": _p("fs.read", "list", 0, None, True),
    "os.remove": _p("fs.delete", "delete", 0, 1, False),
    "os.rmdir": _p("fs.delete", "delete directory", 0, 1, False),
    "os.rename": _rename,
    "os.mkdir": _p("fs.write", "create directory", 0, 2, False),
    "os.chmod": _p("fs.write", "change mode of", 0, 2, True),
    "os.chown": _p("fs.write", "change owner of", 0, 3, True),
    "os.chflags": _p("fs.write", "change flags of", 0, None, True),
    "os.utime": _p("fs.write", "change times of", 0, 3, True),
    "os.truncate": _p("fs.write", "truncate", 0, None, True),
    "os.setxattr": _p("fs.write", "set attributes of", 0, None, True),
    "os.removexattr": _p("fs.write", "remove attributes of", 0, None, True),
    "os.getxattr": _p("fs.read", "read attributes of", 0, None, True),
    "os.listxattr": _p("fs.read", "list attributes of", 0, None, True),
    "os.link": _link,
    "os.symlink": _p("fs.write", "create symlink", 1, 2, False),
    "shutil.rmtree": _rmtree,
    "sqlite3.connect": _sqlite,
    "subprocess.Popen": _popen,
    "os.system": _system,
    "os.exec": lambda a: _exec_like(a[0], a[1] if len(a) > 1 else None),
    "os.spawn": lambda a: _exec_like(a[1], a[2] if len(a) > 2 else None),
    "os.posix_spawn": lambda a: _exec_like(a[0], a[1] if len(a) > 1 else None),
    "os.fork": _fork,
    "os.forkpty": _fork,
    "os.putenv": _putenv,
    "os.unsetenv": _putenv,
    "socket.connect": _sock("connect to"),
    "socket.bind": _sock("listen on"),
    "socket.sendto": _sock("send to"),
    "socket.sendmsg": _sock("send to"),
    "socket.getaddrinfo": _host_port("resolve", 0, 1),
    "socket.gethostbyname": _host_port("resolve", 0, 9),
    "socket.gethostbyaddr": _host_port("reverse-resolve", 0, 9),
    "socket.getnameinfo": _getnameinfo,
    "http.client.connect": _host_port("connect to"),
    "ftplib.connect": _host_port("connect to"),
    "smtplib.connect": _host_port("connect to"),
    "poplib.connect": _host_port("connect to"),
    "imaplib.open": _host_port("connect to"),
    "nntplib.connect": _host_port("connect to"),
    "telnetlib.Telnet.open": _host_port("connect to"),
    "import": _import,
}

EVENTS = frozenset(_HANDLERS) | frozenset(_REFUSED)
"""Every event ``classify`` has something to say about."""


def classify(event: str, args: tuple[Any, ...]) -> Result:
    """The checks ``event`` needs, a ``Refusal``, or None."""
    reason = _REFUSED.get(event)
    if reason is not None:
        return Refusal(reason)
    handler = _HANDLERS.get(event)
    if handler is None:
        return None
    return handler(args)


def is_directory(path: str) -> bool:
    try:
        return stat.S_ISDIR(os.stat(path).st_mode)
    except OSError:
        return False
