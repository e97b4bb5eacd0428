"""The confinement API: the probe, the refusal, the spec, and the seccomp program's shape.

The OS-level behaviour of a confined process is in test_confinement_os.py; here are the parts
that decide whether and how to confine, including on machines that cannot.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import subprocess
import sys

import pytest
from confinement_fixtures import REPO, World, needs_strict, world  # noqa: F401 - fixture

from cave import CaveError, StrictModeUnavailable
from cave.security import _seccomp
from cave.security._confinement import (
    SIMULATE_ENV,
    ConfinementSpec,
    default_read_only_paths,
    strict_support,
)


def _landlock_abi_independently() -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    return max(0, int(libc.syscall(444, None, 0, 1)))  # landlock_create_ruleset(VERSION)


def test_probe_matches_the_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(SIMULATE_ENV, raising=False)
    support = strict_support()
    assert support.kernel_release == platform.release()
    if platform.machine() in ("x86_64", "aarch64"):
        assert support.landlock_abi == _landlock_abi_independently()
    if platform.release().startswith("6.18"):  # the machines this project runs on
        assert (support.available, support.landlock_abi, support.seccomp) == (True, 7, True)
        assert "available" in support.describe() and "ABI 7" in support.describe()
    assert support.available == (not support.reasons)


def test_simulated_unsupported_reports_the_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SIMULATE_ENV, "Landlock disabled at boot (lsm= lacks landlock)")
    support = strict_support()
    assert not support.available
    assert support.reasons == ("simulated: Landlock disabled at boot (lsm= lacks landlock)",)
    text = support.describe()
    assert "NOT available" in text and "lsm= lacks landlock" in text
    monkeypatch.delenv(SIMULATE_ENV)
    assert strict_support().reasons != support.reasons


def _python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO), **env}, stdin=subprocess.DEVNULL,
    )


_REFUSED_THEN_UNCONFINED = """
import ctypes, sys
from cave import StrictModeUnavailable
from cave.security._confinement import ConfinementSpec, confine_current_process
try:
    confine_current_process(ConfinementSpec(read_only=tuple(sys.argv[1:]) or ("/nonexistent",)))
except StrictModeUnavailable as exc:
    print("REFUSED:", exc)
libc = ctypes.CDLL(None)
print("NO_NEW_PRIVS:", libc.prctl(39, 0, 0, 0, 0))  # PR_GET_NO_NEW_PRIVS
print("READ:", open("/etc/hostname").read() != "")
"""


def test_unsupported_machine_refuses_and_confines_nothing() -> None:
    proc = _python(_REFUSED_THEN_UNCONFINED, **{SIMULATE_ENV: "no Landlock in this test"})
    assert "REFUSED: Strict mode's OS confinement cannot be enforced" in proc.stdout, proc
    assert "simulated: no Landlock in this test" in proc.stdout
    assert "guard mode" in proc.stdout  # the message names the way out
    assert "NO_NEW_PRIVS: 0" in proc.stdout and "READ: True" in proc.stdout


@needs_strict
def test_a_missing_path_refuses_before_anything_irreversible() -> None:
    proc = _python(_REFUSED_THEN_UNCONFINED)
    assert "REFUSED" in proc.stdout and "/nonexistent" in proc.stdout, proc
    assert "NO_NEW_PRIVS: 0" in proc.stdout and "READ: True" in proc.stdout


def test_genuinely_absent_landlock_raises() -> None:
    if _landlock_abi_independently() > 0:
        pytest.skip("Landlock is present on this machine; the refusal is covered by simulation")
    proc = _python(_REFUSED_THEN_UNCONFINED)
    assert "REFUSED" in proc.stdout and "Landlock" in proc.stdout


@needs_strict
def test_a_threaded_process_is_refused(world: World) -> None:  # noqa: F811
    result = world.run("read_outside", before="start_thread")
    assert result["type"] == "StrictModeUnavailable", result
    assert "threads" in result["value"]


@needs_strict
def test_a_second_confinement_only_tightens(world: World) -> None:  # noqa: F811
    result = world.run("second_confine")
    assert result["ok"], result
    assert result["value"] == {"write_outside": errno.EACCES, "execve": errno.EPERM,
                               "write_rw": errno.EACCES}


def test_spec_validates_and_copies() -> None:
    with pytest.raises(ValueError, match="absolute"):
        ConfinementSpec(read_only=("relative/path",))
    with pytest.raises(ValueError, match="positive"):
        ConfinementSpec(memory_limit=0)
    with pytest.raises(ValueError, match="below the minimum"):
        ConfinementSpec(landlock_abi_cap=2)
    base = ConfinementSpec.NOTHING
    spec = base.with_read_only("/a").with_read_write("/b").with_exec().with_memory_limit(1 << 30)
    assert (spec.read_only, spec.read_write, spec.allow_exec, spec.memory_limit) == (
        ("/a",), ("/b",), True, 1 << 30)
    assert base == ConfinementSpec()
    assert ConfinementSpec.python_worker("/tmp").read_only == default_read_only_paths()
    assert issubclass(StrictModeUnavailable, CaveError)
    assert "reason one" in str(StrictModeUnavailable(["reason one"]))


def test_default_read_only_paths_cover_python_but_not_the_current_directory() -> None:
    paths = default_read_only_paths()
    assert all(os.path.isabs(p) and os.path.exists(p) for p in paths)
    assert os.getcwd() not in paths
    real_prefix = os.path.realpath(sys.prefix)
    assert any(real_prefix == p or real_prefix.startswith(p + "/") for p in paths)
    for p in paths:  # no path nested in another
        assert not any(p != q and p.startswith(q.rstrip("/") + "/") for q in paths)


# A classic-BPF interpreter, just enough for seccomp filters: checks decisions on both arches,
# including aarch64, which this machine cannot run.
def _run_filter(prog: list[tuple[int, int, int, int]], arch: int, nr: int,
                args: tuple[int, ...] = ()) -> int:
    words = [nr, arch, 0, 0]
    for a in (*args, *[0] * (6 - len(args))):
        words += [a & 0xFFFFFFFF, a >> 32]
    acc, pc = 0, 0
    while True:
        code, jt, jf, k = prog[pc]
        if code == 0x20:
            acc = words[k // 4]
        elif code == 0x54:
            acc &= k
        elif code == 0x06:
            return k
        else:
            cond = {0x15: acc == k, 0x35: acc >= k, 0x45: bool(acc & k)}[code]
            pc += jt if cond else jf
        pc += 1


ALLOW, EPERM, KILL = 0x7FFF0000, 0x00050001, 0x80000000


@pytest.mark.parametrize("arch_name", ["x86_64", "aarch64"])
def test_seccomp_program_decisions(arch_name: str) -> None:
    arch = _seccomp.ARCHES[arch_name]
    prog = _seccomp.build_filter(arch, allow_exec=False)
    assert len(prog) < 4096 and len(_seccomp.packed(prog)) == 8 * len(prog)

    def decide(call: str, *args: int) -> int:
        nr = arch.nr(call)
        assert nr is not None
        return _run_filter(prog, arch.audit, nr, args)

    assert _run_filter(prog, 0x40000003, 0) == KILL  # i386 audit arch
    assert decide("socket", 1, 1) == ALLOW and decide("socket", 1, 5 | 0x80000) == ALLOW
    assert decide("socket", 2, 1) == EPERM and decide("socket", 1, 2) == EPERM
    assert decide("socketpair", 1, 1 | 0x800) == ALLOW and decide("socketpair", 10, 1) == EPERM
    assert decide("clone", 0x003D0F00) == ALLOW  # glibc's thread flags
    assert decide("clone", 0x10000000 | 17) == EPERM
    assert decide("clone3") == 0x00050000 | errno.ENOSYS
    assert decide("personality", 0xFFFFFFFF) == ALLOW and decide("personality", 8) == EPERM
    assert decide("prlimit64", 0) == ALLOW and decide("prlimit64", 1234) == EPERM
    assert decide("prlimit64", 1 << 32) == EPERM  # the high word counts too
    assert decide("setpriority", 0, 0, 5) == ALLOW and decide("setpriority", 2, 0, 5) == EPERM
    assert decide("sendto", 3, 0, 0, 0, 0) == ALLOW and decide("sendto", 3, 0, 0, 0, 99) == EPERM
    assert decide("ioctl", 0, 0x5412) == EPERM and decide("ioctl", 0, 0x5401) == ALLOW
    for call in ("execve", "execveat", *_seccomp.DENIED):
        if arch.nr(call) is not None:
            assert decide(call) == EPERM, call
    assert _run_filter(prog, arch.audit, 39 if arch_name == "x86_64" else 172) == ALLOW  # getpid
    with_exec = _seccomp.build_filter(arch, allow_exec=True)
    assert _run_filter(with_exec, arch.audit, arch.nr("execve") or 0) == ALLOW
    if arch_name == "x86_64":
        assert _run_filter(prog, arch.audit, 0x40000000 | 39) == KILL


@pytest.mark.parametrize("arch_name", ["x86_64", "aarch64"])
def test_seccomp_signal_fallback_decisions(arch_name: str) -> None:
    arch = _seccomp.ARCHES[arch_name]
    prog = _seccomp.build_filter(arch, allow_exec=False, own_pid=4242)
    without = _seccomp.build_filter(arch, allow_exec=False)

    def decide(p: list[tuple[int, int, int, int]], call: str, *args: int) -> int:
        nr = arch.nr(call)
        assert nr is not None
        return _run_filter(p, arch.audit, nr, args)

    for call in ("kill", "tgkill", "rt_sigqueueinfo", "rt_tgsigqueueinfo"):
        assert decide(prog, call, 4242, 10) == ALLOW
        assert decide(prog, call, 1, 10) == EPERM and decide(prog, call, 0, 10) == EPERM
        assert decide(without, call, 1, 10) == ALLOW  # Landlock's scope decides instead
    assert decide(prog, "kill", 0xFFFFFFFF, 9) == EPERM  # kill(-1): every process of the user
    assert decide(prog, "tkill", 4242, 10) == EPERM
    assert decide(prog, "pidfd_send_signal", 3, 10) == EPERM
    assert decide(prog, "fcntl", 3, 8, 1) == EPERM and decide(prog, "fcntl", 3, 1) == ALLOW
    assert decide(prog, "ioctl", 3, 0x8901) == EPERM
    assert decide(without, "ioctl", 3, 0x8901) == ALLOW
