"""The worker's convenience layer: plain Python reaches files, sockets, processes via the broker.

Installed in the confined worker before agent code runs. ``open``/``io.open``/``os.open`` (and so
``pathlib`` and ``pandas.read_csv``), ``os.listdir``, ``subprocess.run``/``call``/``check_call``/
``check_output``/``Popen``/``os.system``, ``socket.create_connection``/``socket.socket.connect``,
``socket.getaddrinfo`` and ``os.environ``/``os.getenv`` turn into broker requests that the kernel
decides with the session's policy, grants, approvals and audit log. Paths inside the worker's
static trees (the Python installation, its scratch directory, its own ``/proc``) stay local.

This layer is a convenience, not a boundary: agent code can undo every patch here, and then it
meets the operating system's refusal (Landlock, seccomp), which is the boundary.
"""

from __future__ import annotations

import builtins
import errno
import io
import os
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator, MutableMapping
from typing import Any

__all__ = ["install"]

Request = Callable[..., tuple[Any, list[int]]]
"""``request(kind, **fields) -> (value, fds)``; raises what the kernel raised."""

_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


def _under(path: str, roots: tuple[str, ...]) -> bool:
    return any(path == r or path.startswith(r.rstrip("/") + "/") for r in roots)


def _mode_flags(mode: str) -> int:
    if "+" in mode:
        flags = os.O_RDWR
    elif any(c in mode for c in "wax"):
        flags = os.O_WRONLY
    else:
        flags = os.O_RDONLY
    if "w" in mode:
        flags |= os.O_CREAT | os.O_TRUNC
    if "a" in mode:
        flags |= os.O_CREAT | os.O_APPEND
    if "x" in mode:
        flags |= os.O_CREAT | os.O_EXCL
    return flags


class _Layer:
    def __init__(self, request: Request, read_roots: tuple[str, ...],
                 write_roots: tuple[str, ...]) -> None:
        self.request = request
        # /sys is never brokered: libraries probe it (cgroup CPU quotas) and an ask for that
        # would interrupt the user for nothing; Landlock answers (mostly EACCES) instead.
        self.read_roots = tuple(read_roots) + (f"/proc/{os.getpid()}", "/proc/self",
                                               "/proc/thread-self", "/dev/null", "/dev/zero",
                                               "/dev/urandom", "/sys")
        self.write_roots = tuple(write_roots) + ("/dev/null",)
        self.open = builtins.open
        self.os_open = os.open
        self.listdir = os.listdir

    def local(self, path: str, flags: int) -> bool:
        roots = self.write_roots if flags & _WRITE_FLAGS else self.read_roots
        return _under(path, roots)

    def brokered_fd(self, file: Any, flags: int, mode: int = 0o666) -> int | None:
        """A descriptor for ``file`` from the broker, or None when the path is local."""
        if isinstance(file, int):
            return None
        path = os.path.abspath(os.fsdecode(os.fspath(file)))
        if self.local(path, flags):
            return None
        _, fds = self.request("open", path=path, flags=flags, mode=mode)
        return fds[0]

    # -- files ---------------------------------------------------------------------------
    def patched_open(self, file: Any, mode: str = "r", buffering: int = -1,
                     encoding: str | None = None, errors: str | None = None,
                     newline: str | None = None, closefd: bool = True,
                     opener: Any = None) -> Any:
        if opener is None and not isinstance(file, int):
            fd = self.brokered_fd(file, _mode_flags(mode))
            if fd is not None:
                try:
                    f = self.open(fd, mode, buffering, encoding, errors, newline, True)
                except BaseException:
                    os.close(fd)
                    raise
                try:
                    f.name = os.fspath(file)  # type: ignore[misc]
                except (AttributeError, TypeError):
                    pass
                return f
        return self.open(file, mode, buffering, encoding, errors, newline, closefd, opener)

    def patched_os_open(self, path: Any, flags: int, mode: int = 0o777, *,
                        dir_fd: int | None = None) -> int:
        if dir_fd is None:
            fd = self.brokered_fd(path, flags, mode)
            if fd is not None:
                return fd
        return self.os_open(path, flags, mode, dir_fd=dir_fd)

    def patched_listdir(self, path: Any = ".") -> list[str]:
        if isinstance(path, int):
            return self.listdir(path)
        real = os.path.abspath(os.fsdecode(os.fspath(path)))
        if _under(real, self.read_roots) or _under(real, self.write_roots):
            return self.listdir(path)
        _, fds = self.request("open", path=real, flags=os.O_RDONLY | os.O_DIRECTORY, mode=0)
        try:
            names = self.listdir(fds[0])
        finally:
            os.close(fds[0])
        if isinstance(path, bytes):
            return [os.fsencode(n) for n in names]  # type: ignore[misc]
        return names

    # -- processes -----------------------------------------------------------------------
    def run(self, args: Any, *, input: Any = None, capture_output: bool = False,
            timeout: float | None = None, check: bool = False, shell: bool = False,
            cwd: Any = None, text: bool | None = None, encoding: str | None = None,
            errors: str | None = None, stdout: Any = None, stderr: Any = None,
            universal_newlines: bool | None = None, **_ignored: Any
            ) -> subprocess.CompletedProcess[Any]:
        if isinstance(args, (str, bytes, os.PathLike)):
            argv = ["/bin/sh", "-c", os.fsdecode(args)] if shell else [os.fsdecode(args)]
        else:
            argv = [os.fsdecode(a) for a in args]
            if shell:
                argv = ["/bin/sh", "-c", " ".join(argv)]
        if isinstance(input, str):
            input = input.encode(encoding or "utf-8")
        value, _ = self.request("run", argv=argv, input=input,
                                cwd=os.fsdecode(cwd) if cwd is not None else os.getcwd(),
                                timeout=timeout)
        rc, out, err = value["returncode"], value["stdout"], value["stderr"]
        as_text = bool(text or universal_newlines or encoding or errors)
        if as_text:
            out = out.decode(encoding or "utf-8", errors or "replace")
            err = err.decode(encoding or "utf-8", errors or "replace")
        keep_out = capture_output or stdout == subprocess.PIPE
        keep_err = capture_output or stderr == subprocess.PIPE
        if not keep_out and out:
            sys.stdout.write(out if as_text else out.decode("utf-8", "replace"))
        if not keep_err and err:
            target = sys.stdout if stderr == subprocess.STDOUT else sys.stderr
            target.write(err if as_text else err.decode("utf-8", "replace"))
        done = subprocess.CompletedProcess(args, rc, out if keep_out else None,
                                           err if keep_err else None)
        if check:
            done.check_returncode()
        return done

    def system(self, command: str) -> int:
        return int(self.run(command, shell=True).returncode) << 8

    # -- sockets -------------------------------------------------------------------------
    def connected_fd(self, host: str, port: int, timeout: float | None) -> int:
        _, fds = self.request("connect", host=str(host), port=int(port), timeout=timeout)
        return fds[0]


class _BrokeredPopen:
    """``subprocess.Popen`` in the worker: the kernel runs the process to completion first.

    Enough for ``communicate()``, ``wait()``, ``returncode`` and reading ``stdout``/``stderr``;
    interactive use (writing to stdin while reading) is not supported in strict mode.
    """

    _layer: _Layer

    def __init__(self, args: Any, stdin: Any = None, stdout: Any = None, stderr: Any = None,
                 shell: bool = False, cwd: Any = None, text: bool | None = None,
                 universal_newlines: bool | None = None, encoding: str | None = None,
                 errors: str | None = None, **_ignored: Any) -> None:
        self.args = args
        as_text = bool(text or universal_newlines or encoding or errors)
        done = self._layer.run(args, shell=shell, cwd=cwd, text=as_text, encoding=encoding,
                               errors=errors, stdout=stdout, stderr=stderr)
        self.returncode = done.returncode
        self.pid = -1
        self._out, self._err = done.stdout, done.stderr
        wrap = io.StringIO if as_text else io.BytesIO
        self.stdout = wrap(self._out) if stdout == subprocess.PIPE else None
        self.stderr = wrap(self._err) if stderr == subprocess.PIPE else None
        self.stdin = None

    def communicate(self, input: Any = None, timeout: float | None = None) -> tuple[Any, Any]:
        return self._out, self._err

    def wait(self, timeout: float | None = None) -> int:
        return int(self.returncode)

    def poll(self) -> int:
        return int(self.returncode)

    def kill(self) -> None:
        pass

    terminate = kill

    def __enter__(self) -> _BrokeredPopen:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


class _Environ(MutableMapping[str, str]):
    """``os.environ`` in the worker: allowed names locally, any other name asks the kernel."""

    def __init__(self, local: dict[str, str], request: Request) -> None:
        self._local = local
        self._request = request

    def __getitem__(self, name: str) -> str:
        if name in self._local:
            return self._local[name]
        value, _ = self._request("env", name=str(name))
        if value is None:
            raise KeyError(name)
        return str(value)

    def __setitem__(self, name: str, value: str) -> None:
        self._local[str(name)] = str(value)

    def __delitem__(self, name: str) -> None:
        del self._local[name]

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._local))

    def __len__(self) -> int:
        return len(self._local)

    def copy(self) -> dict[str, str]:
        return dict(self._local)

    def __repr__(self) -> str:
        return f"environ({self._local!r})"


def _socket_class(layer: _Layer) -> type:
    base = socket.socket

    class BrokeredSocket(base):  # type: ignore[valid-type, misc]
        """TCP sockets are made by the kernel on ``connect`` and passed back as descriptors."""

        def __init__(self, family: int = -1, type: int = -1, proto: int = -1,
                     fileno: int | None = None) -> None:
            fam = socket.AF_INET if family == -1 else family
            if fileno is None and fam in (socket.AF_INET, socket.AF_INET6):
                a, b = socket.socketpair()  # a placeholder descriptor until connect()
                b.close()
                fd = a.detach()
                kind = socket.SOCK_STREAM if type == -1 else type
                super().__init__(fam, kind, 0 if proto == -1 else proto, fileno=fd)
                self._cave_timeout: float | None = None
                return
            super().__init__(family, type, proto, fileno)

        def settimeout(self, value: float | None) -> None:
            self._cave_timeout = value
            super().settimeout(value)

        def connect(self, address: Any) -> None:
            if self.family in (socket.AF_INET, socket.AF_INET6):
                host, port = address[0], address[1]
                fd = layer.connected_fd(host, port, getattr(self, "_cave_timeout", None))
                timeout = self.gettimeout()
                os.dup2(fd, self.fileno())
                os.close(fd)
                super().settimeout(timeout)
                return
            super().connect(address)

        def connect_ex(self, address: Any) -> int:
            try:
                self.connect(address)
            except OSError as exc:
                return exc.errno or errno.ECONNREFUSED
            return 0

    return BrokeredSocket


_DEFAULT: Any = getattr(socket, "_GLOBAL_DEFAULT_TIMEOUT", object())


def install(request: Request, *, read_roots: tuple[str, ...], write_roots: tuple[str, ...],
            env: dict[str, str]) -> None:
    """Patch the worker's modules so plain Python goes through the broker (see module doc)."""
    layer = _Layer(request, read_roots, write_roots)
    builtins.open = layer.patched_open
    io.open = layer.patched_open
    os.open = layer.patched_os_open
    os.listdir = layer.patched_listdir  # type: ignore[assignment]
    subprocess.run = layer.run  # type: ignore[assignment]

    def call(*args: Any, **kwargs: Any) -> int:
        return int(layer.run(*args, **kwargs).returncode)

    def check_call(*args: Any, **kwargs: Any) -> int:
        return int(layer.run(*args, check=True, **kwargs).returncode)

    def check_output(*args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("stdout", subprocess.PIPE)
        return layer.run(*args, check=True, **kwargs).stdout

    subprocess.call = call
    subprocess.check_call = check_call
    subprocess.check_output = check_output
    _BrokeredPopen._layer = layer
    subprocess.Popen = _BrokeredPopen  # type: ignore[assignment, misc]
    os.system = layer.system  # type: ignore[assignment]

    real_socket = socket.socket
    sock_cls = _socket_class(layer)
    socket.socket = sock_cls  # type: ignore[misc, assignment]

    def create_connection(address: Any, timeout: Any = _DEFAULT,
                          source_address: Any = None, **_ignored: Any) -> socket.socket:
        wait = None if timeout is _DEFAULT else timeout
        fd = layer.connected_fd(address[0], address[1], wait)
        s = real_socket(fileno=fd)
        if wait is not None:
            s.settimeout(wait)
        return s

    socket.create_connection = create_connection
    real_getaddrinfo = socket.getaddrinfo

    def getaddrinfo(host: Any, port: Any, family: int = 0, type: int = 0, proto: int = 0,
                    flags: int = 0) -> list[Any]:
        """Names are resolved by the kernel at connect time; here a host stays a name."""
        try:
            return real_getaddrinfo(host, port, family, type, proto,
                                    flags | socket.AI_NUMERICHOST)
        except socket.gaierror:
            kind = type or socket.SOCK_STREAM
            return [(socket.AF_INET, kind, proto or 6, "", (host, int(port or 0)))]

    socket.getaddrinfo = getaddrinfo
    os.environ = _Environ(env, request)  # type: ignore[assignment]  # noqa: B003 - replaced on purpose
