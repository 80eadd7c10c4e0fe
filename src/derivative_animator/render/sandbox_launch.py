"""How a sandbox is made on this machine (the host's side): which isolation layers it allows
(`probe`), the bubblewrap command with its seccomp filter and read-only mounts, and the cgroup
capping the whole sandbox's memory and processes. `sandbox.PythonSandbox` starts the server
(`sandbox_server.py`) with them; see `sandbox.py` for the layers and what each guards."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from derivative_animator.render.sandbox_limits import SandboxLimits, clean_environment

JOB_DIR = "/job"  # the job's work dir inside the sandbox: a tmpfs
# its stdout and stderr files: a tmpfs of their own, so a full work dir loses no error
OUTPUT_DIR = "/output"
SANDBOX_UID = 65534  # "nobody" inside the sandbox's user namespace
SHM_MB = 64
FIX = (
    "apt-get install bubblewrap "
    "(and allow user namespaces: sysctl kernel.unprivileged_userns_clone=1)"
)

# Refused with EPERM inside the sandbox: nothing a render needs, everything an escape would.
DENIED_SYSCALLS = (
    "mount",
    "umount2",
    "pivot_root",
    "chroot",
    "mount_setattr",
    "move_mount",
    "open_tree",
    "fsopen",
    "fsconfig",
    "fsmount",
    "fspick",
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "kcmp",
    "bpf",
    "perf_event_open",
    "userfaultfd",
    "keyctl",
    "add_key",
    "request_key",
    "unshare",
    "setns",
    "init_module",
    "finit_module",
    "delete_module",
    "kexec_load",
    "kexec_file_load",
    "reboot",
    "swapon",
    "swapoff",
    "syslog",
    "acct",
    "quotactl",
    "open_by_handle_at",
    "name_to_handle_at",
    "iopl",
    "ioperm",
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
    "lookup_dcookie",
    "settimeofday",
    "clock_settime",
    "clock_adjtime",
    "adjtimex",
    "sethostname",
    "setdomainname",
    "vhangup",
    "personality",
    # POSIX message queues live in the sandbox's IPC namespace and outlive the job that made them;
    # nothing a render needs (SysV IPC, which libraries may use, is removed between jobs instead).
    "mq_open",
    "mq_unlink",
    "mq_timedsend",
    "mq_timedreceive",
    "mq_notify",
    "mq_getsetattr",
)
# CLONE_NEWNS, NEWCGROUP, NEWUTS, NEWIPC, NEWUSER, NEWPID, NEWNET, NEWTIME: clone may not make
# namespaces.
CLONE_NAMESPACE_FLAGS = (
    0x00020000,
    0x02000000,
    0x04000000,
    0x08000000,
    0x10000000,
    0x20000000,
    0x40000000,
    0x80,
)


# --- what this machine allows ---------------------------------------------------------


@dataclass(frozen=True)
class Isolation:
    bwrap: str | None  # the bubblewrap binary that works, None where none does
    unprivileged: bool  # a user namespace: the job is uid 65534 there
    problem: str | None  # why there is no bubblewrap, or what is weaker than it should be

    def layers(self, cgroup: Cgroup | None) -> list[str]:
        if self.bwrap is None:
            layers = ["UNSANDBOXED"]
        else:
            layers = ["namespaces", "unprivileged-user" if self.unprivileged else "no-capabilities"]
            layers += ["seccomp", "minimal-mounts", "tmpfs-workdir"]
        layers += cgroup.layers if cgroup is not None else ["rlimit-nproc"]
        return layers + ["rlimits", "process-group", "clean-env", "audit-hook"]


@cache
def probe() -> Isolation:
    """Which layers this machine allows: tries the real sandbox with `true` inside."""
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        return Isolation(None, False, f"bubblewrap is not installed; fix: {FIX}")
    seccomp_problem = _seccomp_program()[1]
    if seccomp_problem:
        return Isolation(None, False, seccomp_problem)
    for unprivileged in (True, False):
        if not unprivileged and os.geteuid() != 0:
            break
        try:
            with bwrap_command(bwrap, unprivileged, SandboxLimits(), ["true"]) as (command, fds):
                done = subprocess.run(command, capture_output=True, timeout=30, pass_fds=fds)
        except (OSError, subprocess.TimeoutExpired) as err:
            return Isolation(None, False, f"bubblewrap does not start ({err}); fix: {FIX}")
        if done.returncode == 0:
            problem = (
                None
                if unprivileged
                else (
                    "cannot drop to an unprivileged user (no user namespaces): scenes run as "
                    "root without capabilities; fix: allow user namespaces "
                    "(sysctl user.max_user_namespaces=10000)"
                )
            )
            return Isolation(bwrap, unprivileged, problem)
        reason = done.stderr.decode(errors="replace").strip().splitlines()
    return Isolation(
        None,
        False,
        "bubblewrap cannot make a sandbox here "
        f"({reason[-1] if reason else 'no reason given'}); fix: {FIX}",
    )


def isolation_layers() -> list[str]:
    """The layers a job gets on this machine (a cgroup where one can be made)."""
    cgroup = Cgroup.make(SandboxLimits())
    try:
        return probe().layers(cgroup)
    finally:
        if cgroup is not None:
            cgroup.remove()


@cache
def _seccomp_program() -> tuple[bytes | None, str | None]:
    """(BPF program, None), or (None, why not): refuses DENIED_SYSCALLS with EPERM and clone
    with namespace flags; clone3 gets ENOSYS so libc falls back to clone, whose flags it sees."""
    try:
        import errno

        import pyseccomp as seccomp
    except (ImportError, OSError) as err:  # pyseccomp loads libseccomp.so.2 at import
        return None, f"no seccomp filter ({err}); fix: apt-get install libseccomp2 and make setup"
    rules = seccomp.SyscallFilter(seccomp.ALLOW)
    for name in DENIED_SYSCALLS:
        try:
            rules.add_rule(seccomp.ERRNO(errno.EPERM), name)
        except (OSError, ValueError, RuntimeError):
            pass  # not a syscall on this architecture
    for flag in CLONE_NAMESPACE_FLAGS:
        rules.add_rule(
            seccomp.ERRNO(errno.EPERM), "clone", seccomp.Arg(0, seccomp.MASKED_EQ, flag, flag)
        )
    rules.add_rule(seccomp.ERRNO(errno.ENOSYS), "clone3")
    with tempfile.TemporaryFile() as program:
        rules.export_bpf(program)
        program.seek(0)
        return program.read(), None


def _mounts() -> list[str]:
    """Read-only binds of what a render needs, at their own paths; nothing else of the host."""
    args: list[str] = ["--ro-bind", "/usr", "/usr"]
    for top in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
        path = Path("/", top)
        if path.is_symlink():
            args += ["--symlink", os.readlink(path), str(path)]
        elif path.is_dir():
            args += ["--ro-bind", str(path), str(path)]
    shared = [
        Path("/etc", name)
        for name in (
            "fonts",
            "texmf",
            "alternatives",
            "ld.so.cache",
            "ld.so.conf",
            "ld.so.conf.d",
            "localtime",
            "mime.types",
        )
    ]
    shared += [Path("/var/lib/texmf"), Path("/var/cache/fontconfig")]
    package = _package_dir()
    for prefix in dict.fromkeys(
        [Path(sys.base_prefix).resolve(), Path(sys.prefix).resolve(), package]
    ):
        if not str(prefix).startswith("/usr/"):
            shared.append(prefix)
    for path in shared:
        if path.exists():
            args += ["--ro-bind", str(path), str(path)]
    return args


def _package_dir() -> Path:
    """This package's directory: the server imports it from there (PYTHONPATH), so the code
    in the sandbox is the code on the host, whatever the interpreter's install points at."""
    import derivative_animator

    return Path(derivative_animator.__file__).resolve().parent


def server_environment(workdir: str | Path) -> dict[str, str]:
    return {**clean_environment(workdir), "PYTHONPATH": str(_package_dir().parent)}


@contextmanager
def bwrap_command(bwrap: str, unprivileged: bool, limits: SandboxLimits, argv: list[str]):
    """(command, fds to pass) for argv in a sandbox; the seccomp program (probe() made sure
    there is one) travels in a memfd."""
    fd = os.memfd_create("derivanim-seccomp")
    os.write(fd, _seccomp_program()[0])
    os.lseek(fd, 0, os.SEEK_SET)
    fds = [fd]
    command = [bwrap, "--unshare-all"]
    if unprivileged:
        command += [
            "--unshare-user",
            "--disable-userns",
            "--uid",
            str(SANDBOX_UID),
            "--gid",
            str(SANDBOX_UID),
        ]
    command += [
        "--cap-drop",
        "ALL",
        "--die-with-parent",
        "--new-session",
        "--as-pid-1",
        "--seccomp",
        str(fd),
    ]
    # /tmp first: a venv or checkout under /tmp (CI clones there) is bound on top of it, not hidden.
    command += [
        "--size",
        str(16 << 20),
        "--tmpfs",
        "/tmp",
        *_mounts(),
        "--proc",
        "/proc",
        "--dev",
        "/dev",
        "--size",
        str(limits.disk_mb << 20),
        "--tmpfs",
        JOB_DIR,
        "--size",
        str(SHM_MB << 20),
        "--tmpfs",
        "/dev/shm",
        "--size",
        str(8 * limits.max_output_chars + (1 << 20)),
        "--tmpfs",
        OUTPUT_DIR,
        "--remount-ro",
        "/",  # bwrap's own root is a tmpfs too: only the tmpfs mounts stay writable
        "--remount-ro",
        "/dev",  # bwrap's /dev is an unlimited tmpfs: nothing of a job may stay there
        "--chdir",
        JOB_DIR,
        *argv,
    ]
    try:
        yield command, fds
    finally:
        for fd in fds:
            os.close(fd)


# --- cgroups: limits on the whole sandbox ---------------------------------------------


class Cgroup:
    """One cgroup per sandbox (v1: one per controller), holding memory and process limits."""

    def __init__(self, directories: list[Path], layers: list[str]):
        self.directories, self.layers = directories, layers

    @classmethod
    def make(cls, limits: SandboxLimits) -> Cgroup | None:
        if os.geteuid() != 0:
            return None
        name = Path("derivanim-sandbox", uuid.uuid4().hex[:12])
        memory = str(limits.memory_mb << 20)
        v1 = Path("/sys/fs/cgroup")
        settings = {
            v1 / "pids" / name: {"pids.max": str(limits.max_processes)},
            v1 / "memory" / name: {"memory.limit_in_bytes": memory},
        }
        if not all((d.parents[1] / "cgroup.procs").exists() for d in settings):
            root = v1 / "derivanim-sandbox"
            if not (v1 / "cgroup.subtree_control").exists():
                return None
            settings = {
                v1 / name: {
                    "pids.max": str(limits.max_processes),
                    "memory.max": memory,
                    "memory.swap.max": "0",
                }
            }
            try:
                root.mkdir(exist_ok=True)
                for level in (v1, root):
                    (level / "cgroup.subtree_control").write_text("+pids +memory")
            except OSError:
                return None
        made = cls([], ["cgroup-memory", "cgroup-pids"])
        try:
            for directory, values in settings.items():
                directory.mkdir(parents=True)
                made.directories.append(directory)
                for key, value in values.items():
                    if (directory / key).exists():
                        (directory / key).write_text(value)
        except OSError:
            made.remove()
            return None
        return made

    def oom_kills(self) -> int:
        """How many processes the kernel has killed over the memory limit in this cgroup."""
        for directory in self.directories:
            for name in ("memory.events", "memory.oom_control"):  # v2, v1
                try:
                    for line in (directory / name).read_text().splitlines():
                        if line.startswith("oom_kill "):
                            return int(line.split()[1])
                except (OSError, ValueError):
                    pass
        return 0

    def held(self) -> tuple[int, int]:
        """What the sandbox holds that it cannot give back, as the host sees it: bytes of
        processes' anonymous memory and tmpfs or shared memory (page cache left out: it is the
        kernel's to reclaim), and the number of processes."""
        memory = processes = 0
        for directory in self.directories:
            try:
                stat = dict(
                    line.split()
                    for line in (directory / "memory.stat").read_text().splitlines()
                    if line.count(" ") == 1
                )
                keys = ("total_rss", "total_shmem") if "total_rss" in stat else ("anon", "shmem")
                memory += sum(int(stat.get(key, 0)) for key in keys)  # v1, v2
            except (OSError, ValueError):
                pass
            try:
                processes = max(processes, int((directory / "pids.current").read_text()))
            except (OSError, ValueError):
                pass
        return memory, processes

    def remove(self) -> None:
        for directory in self.directories:
            for _ in range(100):
                try:
                    for pid in (directory / "cgroup.procs").read_text().split():
                        try:
                            os.kill(int(pid), signal.SIGKILL)
                        except (ProcessLookupError, ValueError):
                            pass
                    directory.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.05)
