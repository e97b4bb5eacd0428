"""Confinement as the OS enforces it: each action in a fresh, really confined process.

Every denied action that is safe to run unconfined has a control (CONTROLS: unconfined, it
succeeds), so those tests cannot pass because the action was impossible anyway; the others
(mount, keyctl, ptrace, exec, ...) assert seccomp's own errno.
"""

from __future__ import annotations

import errno
import os
import platform
import signal

import pytest
from confinement_fixtures import World, needs_strict, world  # noqa: F401 - fixture

pytestmark = [
    needs_strict,
    pytest.mark.skipif(platform.machine() != "x86_64", reason="helper uses x86_64 numbers"),
]

ALLOWED = [
    "read_ro", "rw_tree", "proc_self", "dev_null", "socketpair_and_pipe", "kill_self",
    "raise_self", "personality_query", "memfd_shared", "dlopen_from_scratch",
]

# action -> errno: EACCES comes from Landlock (files), EPERM from seccomp or Landlock scopes.
DENIED = {
    "write_ro": errno.EACCES,
    "create_in_ro": errno.EACCES,
    "read_outside": errno.EACCES,
    "write_outside": errno.EACCES,
    "proc_parent_mem": errno.EACCES,
    "proc_parent_environ": errno.EACCES,
    "proc_1": errno.EACCES,
    "tcp_connect": errno.EPERM,
    "af_inet_socket": errno.EPERM,
    "af_inet6_udp": errno.EPERM,
    "af_netlink": errno.EPERM,
    "unix_dgram": errno.EPERM,
    "abstract_connect": errno.EPERM,
    "abstract_bind": errno.EPERM,
    "kill_parent": errno.EPERM,
    "ptrace_parent": errno.EPERM,
    "vm_write_parent": errno.EPERM,
    "io_uring_setup": errno.EPERM,
    "bpf": errno.EPERM,
    "userfaultfd": errno.EPERM,
    "unshare_user": errno.EPERM,
    "clone_newuser": errno.EPERM,
    "mount": errno.EPERM,
    "keyctl": errno.EPERM,
    "memfd_exec": errno.EPERM,
    "execve": errno.EPERM,
    "subprocess": errno.EPERM,
    "personality_set": errno.EPERM,
    "prlimit_parent": errno.EPERM,
    "ioctl_tiocsti": errno.EPERM,
    "thread_read_outside": errno.EACCES,
    "thread_socket": errno.EPERM,
    "chmod_outside": errno.EPERM,
    "utime_outside": errno.EPERM,
    "chmod_ro_by_fd": errno.EPERM,
    "sysv_shmget": errno.EPERM,
    "truncate_ro": errno.EACCES,
    "symlink_outside": errno.EACCES,
    "fifo_in_ro": errno.EACCES,
    "link_outside_into_rw": errno.EXDEV,
    "symlink_escape": errno.EACCES,
}

# Denied actions that are safe to run unconfined in the test process's child: they succeed.
CONTROLS = ["abstract_bind", "read_outside", "write_outside", "proc_parent_environ", "proc_1",
            "tcp_connect",
            "af_inet_socket", "unix_dgram", "abstract_connect", "kill_parent", "subprocess",
            "thread_read_outside", "thread_socket", "prlimit_parent", "chmod_outside",
            "utime_outside", "chmod_ro_by_fd", "sysv_shmget", "symlink_escape"]


@pytest.mark.parametrize("action", ALLOWED)
def test_allowed_inside_the_confinement(world: World, action: str) -> None:  # noqa: F811
    result = world.run(action)
    assert result["ok"], result


@pytest.mark.parametrize("action", sorted(DENIED))
def test_denied_by_the_os(world: World, action: str) -> None:  # noqa: F811
    result = world.run(action)
    assert result["ok"] is False, result
    assert result["errno"] == DENIED[action], result
    assert result["type"] in ("PermissionError", "OSError", "SubprocessError"), result


@pytest.mark.parametrize("action", CONTROLS)
def test_control_the_same_action_unconfined_succeeds(world: World, action: str) -> None:  # noqa: F811
    result = world.run(action, spec=None)
    assert result["ok"], result


def test_process_vm_writev_leaves_the_parent_buffer_intact(world: World) -> None:  # noqa: F811
    assert world.run("vm_write_parent")["errno"] == errno.EPERM
    assert world.buffer.value == b"original"
    control = world.run("vm_write_parent", spec=None)  # proves the address is right
    assert control["ok"], control
    assert world.buffer.value == b"PWNEDnal"
    world.buffer.value = b"original"


def test_fork_works_and_the_child_inherits_the_confinement(world: World) -> None:  # noqa: F811
    assert world.run("fork_child")["value"] == "7"
    assert world.run("fork_child", spec=None)["value"] == "1"  # control: unconfined child reads


def test_no_capabilities_remain_even_as_root(world: World) -> None:  # noqa: F811
    result = world.run("capabilities")
    assert result["value"] == {"CapEff": 0, "CapPrm": 0, "CapInh": 0, "CapAmb": 0}, result
    if os.getuid() == 0:  # control: root starts with capabilities
        assert world.run("capabilities", spec=None)["value"]["CapEff"] != 0


def test_memory_limit_cannot_be_raised_again_even_as_root(world: World) -> None:  # noqa: F811
    result = world.run("raise_memory_limit", spec={**world.spec, "memory_limit": 1 << 30})
    assert (result["ok"], result["type"]) == (False, "ValueError"), result  # setrlimit: EPERM


def test_device_nodes_cannot_be_made_in_the_scratch_tree(world: World) -> None:  # noqa: F811
    result = world.run("mknod_in_rw")
    assert (result["ok"], result["errno"]) == (False, errno.EACCES), result
    if os.getuid() == 0:  # control: root can make one unconfined (and the helper removes it)
        assert world.run("mknod_in_rw", spec=None)["ok"]


def test_x32_syscalls_kill_the_process(world: World) -> None:  # noqa: F811
    result = world.run("x32_getpid")
    assert result["returncode"] == -signal.SIGSYS, result


def test_numpy_and_pandas_import_and_compute_with_default_read_only_paths(
    world: World,  # noqa: F811
) -> None:
    confined = world.run("numpy_pandas")
    assert confined["ok"], confined
    assert confined["value"] == world.run("numpy_pandas", spec=None)["value"]


def test_memory_limit_caps_allocation(world: World) -> None:  # noqa: F811
    spec = {**world.spec, "memory_limit": 512 << 20}
    assert world.run("allocate", spec=spec, allocate=1 << 20)["ok"]
    big = world.run("allocate", spec=spec, allocate=1 << 30)
    assert big["type"] == "MemoryError", big
    assert world.run("allocate", spec=None, allocate=1 << 30)["ok"]  # control


@pytest.mark.parametrize(("action", "code"), [
    ("read_outside", errno.EACCES), ("proc_parent_mem", errno.EACCES),
    ("tcp_connect", errno.EACCES), ("abstract_connect", errno.EPERM),
    ("kill_parent", errno.EPERM),
])
def test_landlock_alone_holds(world: World, action: str, code: int) -> None:  # noqa: F811
    """Without seccomp, socket() works and connect() is reached: Landlock denies it by itself."""
    result = world.run(action, layers="landlock")
    assert (result["ok"], result["errno"]) == (False, code), result


@pytest.mark.parametrize("action", ["tcp_connect", "abstract_connect", "ptrace_parent",
                                    "execve", "io_uring_setup"])
def test_seccomp_alone_holds(world: World, action: str) -> None:  # noqa: F811
    result = world.run(action, layers="seccomp")
    assert (result["ok"], result["errno"]) == (False, errno.EPERM), result


# Older kernels, emulated for real: the same kernel enforcing a ruleset built for ABI 3, 4 or 5,
# with seccomp standing in for what that ABI lacks (signal and abstract-socket scopes, TCP).
OLDER_ABI = {
    "read_outside": errno.EACCES, "write_ro": errno.EACCES, "proc_parent_mem": errno.EACCES,
    "kill_parent": errno.EPERM, "setown_parent": errno.EPERM, "abstract_connect": errno.EPERM,
    "tcp_connect": errno.EPERM, "ptrace_parent": errno.EPERM,
}


@pytest.mark.parametrize("abi", [3, 4, 5])
@pytest.mark.parametrize("action", [*sorted(OLDER_ABI), "raise_self", "rw_tree", "kill_self"])
def test_older_landlock_abi_with_seccomp_fallbacks(world: World, abi: int, action: str) -> None:  # noqa: F811
    result = world.run(action, spec={**world.spec, "landlock_abi_cap": abi})
    if action in OLDER_ABI:
        assert (result["ok"], result["errno"]) == (False, OLDER_ABI[action]), result
    else:
        assert result["ok"], result


def test_setown_to_the_parent_is_allowed_unconfined_and_by_landlock_scopes(world: World) -> None:  # noqa: F811
    """F_SETOWN itself is harmless with ABI 6 (the SIGIO would be refused by the signal scope);
    the seccomp rule exists only for older ABIs."""
    assert world.run("setown_parent", spec=None)["ok"]
    assert world.run("setown_parent")["ok"]
