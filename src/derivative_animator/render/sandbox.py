"""Run untrusted generated code where it cannot hurt the host or fake its own result.

Every job runs inside a sandbox server (`python -m derivative_animator.render.sandbox --serve`)
that forks a child per job. The server lives in one bubblewrap sandbox with these layers
(`probe()` says which this machine allows, and every result lists those in force):
- namespaces: its own user, mount, PID, IPC, UTS, cgroup and network namespaces;
- unprivileged-user: uid/gid 65534 inside its user namespace, every capability dropped,
  no further user namespaces (where the kernel refuses user namespaces, root keeps its uid
  but still loses every capability: "no-capabilities", which `make doctor` warns about);
- seccomp: a filter refusing mount, ptrace, bpf, keyctl, namespaces, kernel modules and the
  like (libseccomp through pyseccomp);
- minimal-mounts: only the interpreter, its packages, this package, fonts and TeX, read-only;
  no host /tmp, /root, /home or project dir; the job's work dir is a size-limited tmpfs;
- cgroup-memory and cgroup-pids: the whole sandbox's memory (tmpfs included) and processes,
  where a cgroup can be made (root; v1 or v2), else rlimit-nproc;
- rlimits, a process group and session per job, a scrubbed environment, output caps, and
  inside the renderer a Python audit hook (render_runner): defence in depth.

Files travel in the request and back in the reply; the host never shares a directory with
a job. The server is the sandbox's PID 1 and not dumpable, so a job can neither signal it,
read its memory nor open its reply pipe: what it reports (exit status, time, files) is the
server's observation, not the job's claim; it ignores every catchable signal (a job gets
Python's handlers back). Between jobs it kills every other process in the PID namespace
(kill(-1) until none is left), empties the work dir, /tmp and /dev/shm (iteratively, by file
descriptor, however deep), removes SysV IPC objects, and where anything survives that it
says so in its reply and exits: the host starts a fresh server for the next job. /dev is
read-only and POSIX message queues are refused, so nothing stays there. `warm=True` keeps
one server (its preloaded imports: Manim and sympy, ~2 s of every render) for many jobs;
`warm=False` starts one per job.

The reply is a JSON line, then the asked files' bytes, each within the cap asked for it:
the host reads it into a growing buffer, refuses one over its caps, and says what went
wrong in `SandboxResult.failure` (timed out, killed by the seccomp filter, over memory, the
server died or hung) rather than leaving it to the job's output. What the host then does
with the files is bounded by `render.untrusted`.

Where bubblewrap cannot run, rendering is refused (`SandboxUnavailable`) unless the caller
opts in to running generated code without isolation (`allow_unsandboxed`, surfaced as
`--unsafe-no-sandbox` and `eval.render.unsafe_no_sandbox`).
"""

from __future__ import annotations

import base64
import json
import os
import queue
import resource
import select
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from functools import cache
from pathlib import Path

from derivative_animator.errors import MachineProblem, one_line
from derivative_animator.render.untrusted import (
    HOST_SECONDS,
    MAX_FILE_BYTES,
    MAX_HEADER_BYTES,
    MAX_REPLY_FILES_BYTES,
    size_text,
)

JOB_DIR = "/job"  # the job's work dir inside the sandbox: a tmpfs
OUTPUT_DIR = "/output"  # its stdout and stderr files: a tmpfs of their own, so a full work dir loses no error
SANDBOX_UID = 65534  # "nobody" inside the sandbox's user namespace
SHM_MB = 64
CLEANUP_SECONDS = 5.0  # between jobs: every other process gone within it, or the server restarts
FIX = "apt-get install bubblewrap (and allow user namespaces: sysctl kernel.unprivileged_userns_clone=1)"
UNSAFE_HINT = "--unsafe-no-sandbox (eval.render.unsafe_no_sandbox=true) runs it without isolation"

# Refused with EPERM inside the sandbox: nothing a render needs, everything an escape would.
DENIED_SYSCALLS = (
    "mount", "umount2", "pivot_root", "chroot", "mount_setattr", "move_mount", "open_tree", "fsopen",
    "fsconfig", "fsmount", "fspick", "ptrace", "process_vm_readv", "process_vm_writev", "kcmp", "bpf",
    "perf_event_open", "userfaultfd", "keyctl", "add_key", "request_key", "unshare", "setns",
    "init_module", "finit_module", "delete_module", "kexec_load", "kexec_file_load", "reboot",
    "swapon", "swapoff", "syslog", "acct", "quotactl", "open_by_handle_at", "name_to_handle_at",
    "iopl", "ioperm", "io_uring_setup", "io_uring_enter", "io_uring_register", "lookup_dcookie",
    "settimeofday", "clock_settime", "clock_adjtime", "adjtimex", "sethostname", "setdomainname",
    "vhangup", "personality",
    # POSIX message queues live in the sandbox's IPC namespace and outlive the job that made them;
    # nothing a render needs (SysV IPC, which libraries may use, is removed between jobs instead).
    "mq_open", "mq_unlink", "mq_timedsend", "mq_timedreceive", "mq_notify", "mq_getsetattr",
)
# CLONE_NEWNS, NEWCGROUP, NEWUTS, NEWIPC, NEWUSER, NEWPID, NEWNET, NEWTIME: clone may not make namespaces.
CLONE_NAMESPACE_FLAGS = (0x00020000, 0x02000000, 0x04000000, 0x08000000, 0x10000000, 0x20000000, 0x40000000, 0x80)


@dataclass(frozen=True)
class SandboxLimits:
    timeout_s: float = 60.0
    memory_mb: int = 4096  # the whole sandbox where a cgroup can be made, else each process
    max_processes: int = 64
    max_file_mb: int = 200
    disk_mb: int = 512  # the job's work dir (a tmpfs)
    max_output_chars: int = 20_000

    def __post_init__(self):
        if (self.timeout_s <= 0 or self.memory_mb < 256 or self.max_processes < 4
                or self.disk_mb < 16 or self.max_file_mb < 1):
            raise ValueError("sandbox limits: timeout_s > 0, memory_mb >= 256, max_processes >= 4, "
                             "disk_mb >= 16, max_file_mb >= 1")


@dataclass
class SandboxResult:
    returncode: int | None
    stdout: str
    stderr: str
    timed_out: bool
    duration_s: float
    isolation: list[str] = field(default_factory=list)
    files: dict[str, bytes] = field(default_factory=dict)  # what the job left under the asked names
    refused: dict[str, str] = field(default_factory=dict)  # asked files not sent back, and why (over a cap)
    # What went wrong as the server or the host saw it (not the job's output): "timed out after
    # 60 s", "killed by the seccomp filter", "the sandbox server died", ...; None when it exited.
    failure: str | None = None
    restart: str | None = None  # why the server was replaced after this job (something outlived it)

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out


class SandboxUnavailable(MachineProblem):
    """Isolation cannot be set up here and the caller did not opt in to running without it."""


# --- what this machine allows ---------------------------------------------------------

@dataclass(frozen=True)
class Isolation:
    bwrap: str | None  # the bubblewrap binary that works, None where none does
    unprivileged: bool  # a user namespace: the job is uid 65534 there
    problem: str | None  # why there is no bubblewrap, or what is weaker than it should be

    def layers(self, cgroup: _Cgroup | None) -> list[str]:
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
            with _bwrap_command(bwrap, unprivileged, SandboxLimits(), ["true"]) as (command, fds):
                done = subprocess.run(command, capture_output=True, timeout=30, pass_fds=fds)
        except (OSError, subprocess.TimeoutExpired) as err:
            return Isolation(None, False, f"bubblewrap does not start ({err}); fix: {FIX}")
        if done.returncode == 0:
            problem = None if unprivileged else (
                "cannot drop to an unprivileged user (no user namespaces): scenes run as root without "
                "capabilities; fix: allow user namespaces (sysctl user.max_user_namespaces=10000)")
            return Isolation(bwrap, unprivileged, problem)
        reason = done.stderr.decode(errors="replace").strip().splitlines()
    return Isolation(None, False,
                     f"bubblewrap cannot make a sandbox here ({reason[-1] if reason else 'no reason given'}); fix: {FIX}")


def isolation_layers() -> list[str]:
    """The layers a job gets on this machine (a cgroup where one can be made)."""
    cgroup = _Cgroup.make(SandboxLimits())
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
        rules.add_rule(seccomp.ERRNO(errno.EPERM), "clone", seccomp.Arg(0, seccomp.MASKED_EQ, flag, flag))
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
    shared = [Path("/etc", name) for name in ("fonts", "texmf", "alternatives", "ld.so.cache", "ld.so.conf",
                                               "ld.so.conf.d", "localtime", "mime.types")]
    shared += [Path("/var/lib/texmf"), Path("/var/cache/fontconfig")]
    package = _package_dir()
    for prefix in dict.fromkeys([Path(sys.base_prefix).resolve(), Path(sys.prefix).resolve(), package]):
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


def _server_environment(workdir: str | Path) -> dict[str, str]:
    return {**clean_environment(workdir), "PYTHONPATH": str(_package_dir().parent)}


@contextmanager
def _bwrap_command(bwrap: str, unprivileged: bool, limits: SandboxLimits, argv: list[str]):
    """(command, fds to pass) for argv in a sandbox; the seccomp program (probe() made sure
    there is one) travels in a memfd."""
    fd = os.memfd_create("derivanim-seccomp")
    os.write(fd, _seccomp_program()[0])
    os.lseek(fd, 0, os.SEEK_SET)
    fds = [fd]
    command = [bwrap, "--unshare-all"]
    if unprivileged:
        command += ["--unshare-user", "--disable-userns", "--uid", str(SANDBOX_UID), "--gid", str(SANDBOX_UID)]
    command += ["--cap-drop", "ALL", "--die-with-parent", "--new-session", "--as-pid-1", "--seccomp", str(fd)]
    # /tmp first: a venv or checkout under /tmp (CI clones there) is bound on top of it, not hidden.
    command += ["--size", str(16 << 20), "--tmpfs", "/tmp", *_mounts(),
        "--proc", "/proc", "--dev", "/dev",
        "--size", str(limits.disk_mb << 20), "--tmpfs", JOB_DIR,
        "--size", str(SHM_MB << 20), "--tmpfs", "/dev/shm",
        "--size", str(8 * limits.max_output_chars + (1 << 20)), "--tmpfs", OUTPUT_DIR,
        "--remount-ro", "/",  # bwrap's own root is a tmpfs too: only the tmpfs mounts stay writable
        "--remount-ro", "/dev",  # bwrap's /dev is an unlimited tmpfs: nothing of a job may stay there
        "--chdir", JOB_DIR, *argv,
    ]
    try:
        yield command, fds
    finally:
        for fd in fds:
            os.close(fd)


# --- cgroups: limits on the whole sandbox ---------------------------------------------

class _Cgroup:
    """One cgroup per sandbox (v1: one per controller), holding memory and process limits."""

    def __init__(self, directories: list[Path], layers: list[str]):
        self.directories, self.layers = directories, layers

    @classmethod
    def make(cls, limits: SandboxLimits) -> _Cgroup | None:
        if os.geteuid() != 0:
            return None
        name = Path("derivanim-sandbox", uuid.uuid4().hex[:12])
        memory = str(limits.memory_mb << 20)
        v1 = Path("/sys/fs/cgroup")
        settings = {v1 / "pids" / name: {"pids.max": str(limits.max_processes)},
                    v1 / "memory" / name: {"memory.limit_in_bytes": memory}}
        if not all((d.parents[1] / "cgroup.procs").exists() for d in settings):
            root = v1 / "derivanim-sandbox"
            if not (v1 / "cgroup.subtree_control").exists():
                return None
            settings = {v1 / name: {"pids.max": str(limits.max_processes), "memory.max": memory,
                                    "memory.swap.max": "0"}}
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

    def enter(self) -> None:
        """In the child before exec: join every controller's group."""
        for directory in self.directories:
            (directory / "cgroup.procs").write_text(str(os.getpid()))

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


def _apply_rlimits(limits: SandboxLimits, cpu_limit: bool = True, nproc: bool = False) -> None:
    memory = limits.memory_mb << 20
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    if cpu_limit:  # CPU seconds add up over a process's life: never on a server, on each job
        cpu = int(limits.timeout_s) + 5
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 5))
    size = limits.max_file_mb << 20
    resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if nproc:  # counts all of this user's processes: leave room for those running
        count = _own_process_count()
        resource.setrlimit(resource.RLIMIT_NPROC, (limits.max_processes + count,) * 2)


def _own_process_count() -> int:
    uid, count = os.getuid(), 0
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                count += entry.stat().st_uid == uid
            except OSError:
                pass
    return count


def clean_environment(workdir: str | Path) -> dict[str, str]:
    """Only what Python, Manim and LaTeX need; nothing secret comes through."""
    path = os.pathsep.join([str(Path(sys.executable).parent), "/usr/local/bin", "/usr/bin", "/bin"])
    workdir = str(workdir)
    return {
        "PATH": path, "HOME": workdir, "TMPDIR": workdir, "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8",
        "PYTHONDONTWRITEBYTECODE": "1", "PYTHONHASHSEED": "0",
        "MPLCONFIGDIR": f"{workdir}/.matplotlib", "TEXMFVAR": f"{workdir}/.texmf-var",
        "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
    }


# --- the host side -----------------------------------------------------------------------

class PythonSandbox:
    """Runs `python ARGS` jobs (a script or `-m module`) one at a time, each in an empty
    work dir holding the files it was given; `run` returns the files asked for.

    warm=True keeps one server and its `preload`ed imports for every job; warm=False starts
    a server (no preload) per job. allow_unsandboxed=True runs jobs without bubblewrap where
    it cannot run (UNSANDBOXED in the layers); otherwise that raises SandboxUnavailable."""

    def __init__(self, limits: SandboxLimits = SandboxLimits(), preload: tuple[str, ...] = (),
                 warm: bool = True, allow_unsandboxed: bool = False):
        self.limits, self.preload, self.warm = limits, tuple(preload), warm
        self.isolation = probe()
        if self.isolation.bwrap is None and not allow_unsandboxed:
            raise SandboxUnavailable(f"generated code cannot be run safely: {self.isolation.problem}; "
                                     f"or {UNSAFE_HINT}")
        self._server: subprocess.Popen | None = None
        self._cgroup: _Cgroup | None = None
        self._host_dir: Path | None = None  # UNSANDBOXED only: the job dir on the host
        self.layers: list[str] = self.isolation.layers(None)

    def run(self, args: list[str], files: dict[str, bytes | str] | None = None,
            collect: tuple[str, ...] | dict[str, int] = ()) -> SandboxResult:
        """Run `python ARGS` in a fresh work dir holding `files`; the result carries the
        files named in `collect` that the job left there (regular files only), each at most
        its cap in bytes (a dict) or MAX_FILE_BYTES (a tuple of names); one over its cap is
        in `refused`, with why."""
        if self._server is None or self._server.poll() is not None:
            self._start()
        caps = dict(collect) if isinstance(collect, dict) else dict.fromkeys(collect, MAX_FILE_BYTES)
        caps = {name: min(int(cap), MAX_FILE_BYTES) for name, cap in caps.items()}
        request = {"args": list(args), "limits": asdict(self.limits), "collect": caps,
                   "files": {name: base64.b64encode(data.encode() if isinstance(data, str) else data).decode()
                             for name, data in (files or {}).items()}}
        start = time.perf_counter()
        oom_before = self._cgroup.oom_kills() if self._cgroup is not None else 0
        layers = list(self.layers)
        try:
            self._server.stdin.write((json.dumps(request) + "\n").encode())
            self._server.stdin.flush()
            # The server enforces the time limit; this deadline only catches a server that hangs.
            header, collected = _read_reply(self._server.stdout.fileno(), self.limits, caps,
                                            time.monotonic() + self.limits.timeout_s + 60)
        except (OSError, _ReplyProblem) as problem:  # nothing of this server survives into the next job
            failure = self._what_happened(problem, oom_before, time.perf_counter() - start)
            self._stop()
            return SandboxResult(returncode=None, stdout="", stderr=f"sandbox: {failure}",
                                 timed_out=getattr(problem, "hung", False), failure=failure,
                                 duration_s=time.perf_counter() - start, isolation=layers)
        returncode = header["returncode"]
        failure = None
        if header["timed_out"]:
            failure = f"timed out after {self.limits.timeout_s:g} s"
        elif returncode is not None and returncode < 0:
            failure = self._killed_by(-returncode, oom_before)
        if header["restart"] or not self.warm:
            self._stop()
        return SandboxResult(
            returncode=returncode, stdout=header["stdout"], stderr=header["stderr"],
            timed_out=header["timed_out"], duration_s=header["duration_s"], isolation=layers,
            files=collected, refused=header["refused"], failure=failure, restart=header["restart"],
        )

    def _killed_by(self, number: int, oom_before: int) -> str:
        """What a signal that ended the job means here."""
        if number == signal.SIGSYS:
            return "killed by the seccomp filter (SIGSYS: a system call of another architecture or ABI)"
        if number == signal.SIGKILL and self._cgroup is not None and self._cgroup.oom_kills() > oom_before:
            return f"killed over the memory limit ({self.limits.memory_mb} MB for the whole sandbox)"
        if number == signal.SIGXCPU:
            return f"killed over the CPU time limit ({int(self.limits.timeout_s) + 5} s)"
        if number == signal.SIGXFSZ:
            return f"killed over the file size limit ({self.limits.max_file_mb} MB)"
        try:
            name = signal.Signals(number).name
        except ValueError:
            name = f"signal {number}"
        return f"killed by {name}" + (" (it crashed)" if number in (signal.SIGSEGV, signal.SIGBUS, signal.SIGABRT,
                                                                  signal.SIGILL, signal.SIGFPE) else "")

    def _what_happened(self, problem: Exception, oom_before: int, seconds: float) -> str:
        """Why no reply came: the server died (over memory?), hung, or sent what the host refuses."""
        if getattr(problem, "hung", False):
            return (f"the sandbox server did not answer within {self.limits.timeout_s + 60:g} s "
                    f"(the job's limit is {self.limits.timeout_s:g} s)")
        if isinstance(problem, _ReplyProblem) and not problem.died:
            return f"the sandbox's reply was refused: {problem}"
        try:
            code = self._server.wait(timeout=5)
        except subprocess.TimeoutExpired:
            code = None
        over_memory = self._cgroup is not None and self._cgroup.oom_kills() > oom_before
        self._server_log.seek(0)
        log = self._server_log.read()[-2000:].decode(errors="replace").strip().splitlines()
        why = (f"killed over the memory limit ({self.limits.memory_mb} MB for the whole sandbox)" if over_memory
               else f"exit status {code}" if code is not None and code >= 0
               else f"killed by signal {-code}" if code is not None else "no exit status")
        return (f"the sandbox server died after {seconds:.1f} s ({why})"
                + (f": {log[-1][:200]}" if log and not over_memory else ""))

    def close(self) -> None:
        self._stop()

    def __enter__(self) -> PythonSandbox:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _start(self) -> None:
        self._cgroup = _Cgroup.make(self.limits)
        self.layers = self.isolation.layers(self._cgroup) + (["warm-server"] if self.warm else [])
        self._server_log = tempfile.TemporaryFile()  # noqa: SIM115 - why a server died; closed in _stop
        preload = list(self.preload) if self.warm else []
        cgroup, limits = self._cgroup, self.limits

        def enter_limits() -> None:  # in the child, before bwrap runs
            if cgroup is not None:
                cgroup.enter()
            _apply_rlimits(limits, cpu_limit=False, nproc=cgroup is None)

        if self.isolation.bwrap is None:
            self._host_dir = Path(tempfile.mkdtemp(prefix="derivanim-unsafe-"))
            for name in ("job", "output"):
                (self._host_dir / name).mkdir()
            argv = [sys.executable, "-m", "derivative_animator.render.sandbox", "--serve", str(self._host_dir / "job"),
                    str(self._host_dir / "output"), "--unsafe", *preload]
            self._server = subprocess.Popen(
                argv, cwd=self._host_dir, env=_server_environment(self._host_dir), stdin=subprocess.PIPE,
                stdout=subprocess.PIPE, stderr=self._server_log, start_new_session=True,
                preexec_fn=enter_limits, close_fds=True)
            return
        argv = [sys.executable, "-m", "derivative_animator.render.sandbox", "--serve", JOB_DIR, OUTPUT_DIR, *preload]
        with _bwrap_command(self.isolation.bwrap, self.isolation.unprivileged, limits, argv) as (command, fds):
            self._server = subprocess.Popen(
                command, env=_server_environment(JOB_DIR), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=self._server_log, start_new_session=True, preexec_fn=enter_limits,
                close_fds=True, pass_fds=fds)

    def _stop(self) -> None:
        if self._server is not None:
            try:
                os.killpg(self._server.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            self._server.wait()
            for pipe in (self._server.stdin, self._server.stdout):
                pipe.close()
            self._server = None
            self._server_log.close()
        if self._cgroup is not None:
            self._cgroup.remove()
            self._cgroup = None
        if self._host_dir is not None:
            _empty(self._host_dir)
            shutil.rmtree(self._host_dir, ignore_errors=True)
            self._host_dir = None


class SandboxPool:
    """N sandboxes for N threads: `with pool.take() as box:` lends one for a job."""

    def __init__(self, size: int, limits: SandboxLimits = SandboxLimits(), preload: tuple[str, ...] = (),
                 warm: bool = True, allow_unsandboxed: bool = False):
        self._boxes = [PythonSandbox(limits, preload, warm, allow_unsandboxed) for _ in range(size)]
        self._idle: queue.SimpleQueue[PythonSandbox] = queue.SimpleQueue()
        for box in self._boxes:
            self._idle.put(box)

    @contextmanager
    def take(self) -> Iterator[PythonSandbox]:
        box = self._idle.get()
        try:
            yield box
        finally:
            self._idle.put(box)

    def close(self) -> None:
        for box in self._boxes:
            box.close()


class _ReplyProblem(Exception):
    """No usable reply: the server died (end of file), hung (no answer in time), or sent one
    the host refuses (over a cap, malformed)."""

    def __init__(self, message: str, died: bool = False, hung: bool = False):
        super().__init__(message)
        self.died, self.hung = died, hung


def _fill(fd: int, buffer: bytearray, deadline: float) -> None:
    """Append what the pipe holds (up to 1 MB) to buffer: amortized linear in the reply's size."""
    remaining = deadline - time.monotonic()
    if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
        raise _ReplyProblem("no answer in time", hung=True)
    chunk = os.read(fd, 1 << 20)
    if not chunk:
        raise _ReplyProblem("the server closed its reply pipe", died=True)
    buffer += chunk


REPLY_KEYS = {"returncode": (int, type(None)), "timed_out": (bool,), "duration_s": (int, float), "stdout": (str,),
              "stderr": (str,), "files": (dict,), "refused": (dict,), "restart": (str, type(None))}


def _read_reply(fd: int, limits: SandboxLimits, caps: dict[str, int], deadline: float,
                ) -> tuple[dict, dict[str, bytes]]:
    """The server's reply: a JSON line (its size capped by the output caps) naming each file's
    length, then the files' bytes, each within the cap asked for it. Raises _ReplyProblem."""
    header_cap = MAX_HEADER_BYTES + 24 * (limits.max_output_chars + 200)  # two outputs, 12 bytes a char escaped
    buffer, scanned = bytearray(), 0
    while (newline := buffer.find(b"\n", scanned)) < 0:
        scanned = len(buffer)
        if scanned > header_cap:
            raise _ReplyProblem(f"its first line is over {size_text(header_cap)}")
        _fill(fd, buffer, deadline)
    try:
        header = json.loads(buffer[:newline])
        if not isinstance(header, dict) or any(not isinstance(header.get(key), kinds)
                                               for key, kinds in REPLY_KEYS.items()):
            raise ValueError("a field is missing or of the wrong type")
        sizes = header["files"]
        if any(name not in caps or not isinstance(n, int) or not 0 <= n <= caps[name] for name, n in sizes.items()):
            raise ValueError("a file that was not asked for, or over its cap")
        header["refused"] = {str(name)[:100]: str(why)[:200] for name, why in header["refused"].items()}
    except ValueError as err:  # json's errors are ValueErrors
        raise _ReplyProblem(f"malformed ({one_line(err)})") from None
    total = sum(sizes.values())
    if total > MAX_REPLY_FILES_BYTES:
        raise _ReplyProblem(f"its files are {size_text(total)}, over {size_text(MAX_REPLY_FILES_BYTES)}")
    needed = newline + 1 + total
    files_deadline = max(deadline, time.monotonic() + HOST_SECONDS)
    while len(buffer) < needed:
        _fill(fd, buffer, files_deadline)
    files, at = {}, newline + 1
    for name, n in sizes.items():
        files[name] = bytes(buffer[at:at + n])
        at += n
    return header, files


# --- the server, inside the sandbox ---------------------------------------------------------

def _serve(root: Path, output: Path, preload: list[str], unsafe: bool) -> None:
    """Read one JSON job a line from stdin, fork a child for it, answer one JSON line and
    the files' bytes; between jobs, leave nothing of the job behind, or exit so the host
    starts a fresh server."""
    import ctypes
    import importlib

    # Not dumpable, first: a job (same user) cannot ptrace it, read its memory or open its fds.
    ctypes.CDLL(None).prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE
    if not unsafe and os.getpid() != 1:
        sys.exit("sandbox --serve runs only as PID 1 of its own PID namespace (bwrap --as-pid-1): "
                 "it kills every other process it can see")
    replies = os.fdopen(os.dup(1), "wb")
    quiet = os.open(os.devnull, os.O_RDWR)
    os.dup2(quiet, 1)  # whatever a library prints must not mix with the replies
    for name in preload:
        importlib.import_module(name)
    job_signals = _ignore_signals()  # a job's SIGINT to PID 1 is Python's KeyboardInterrupt otherwise
    tmp_baseline = frozenset() if unsafe else _tree(Path("/tmp"))  # the mount points bound under /tmp
    for line in sys.stdin:
        request = json.loads(line)
        limits = SandboxLimits(**request["limits"])
        _empty(root)
        _empty(output)
        for name, data in request["files"].items():
            (root / _plain_name(name)).write_bytes(base64.b64decode(data))
        start = time.perf_counter()
        child = os.fork()
        if child == 0:
            _run_job(request["args"], root, output, limits, quiet, job_signals)
        timed_out, status = False, None
        deadline = time.monotonic() + limits.timeout_s
        while status is None:
            done, code = os.waitpid(child, os.WNOHANG)
            if done:
                status = os.waitstatus_to_exitcode(code)
            elif time.monotonic() > deadline:
                timed_out = True
                break
            else:
                time.sleep(0.01)
        if unsafe:
            _kill_group(child)
            survived = []
        else:
            survived = _kill_all_but_me()
        reply = {"returncode": None if timed_out else status, "timed_out": timed_out,
                 "duration_s": time.perf_counter() - start,
                 "stdout": _read_text(output / "stdout", limits.max_output_chars),
                 "stderr": _read_text(output / "stderr", limits.max_output_chars),
                 "files": {}, "refused": {}, "restart": None}
        contents, total = [], 0
        for name, cap in request["collect"].items():
            data = _read_file(root / _plain_name(name), min(cap, MAX_FILE_BYTES))
            if data is None:
                continue
            if isinstance(data, int) or total + len(data) > MAX_REPLY_FILES_BYTES:
                size = data if isinstance(data, int) else len(data)
                reply["refused"][name] = (f"{size_text(size)}, over its {size_text(min(cap, MAX_FILE_BYTES))} cap"
                                          if isinstance(data, int) else "over the reply's cap on all files")
                continue
            reply["files"][name] = len(data)
            contents.append(data)
            total += len(data)
        survived += _empty(root) + _empty(output)
        if not unsafe:
            survived += _empty(Path("/tmp"), keep=tmp_baseline) + _empty(Path("/dev/shm")) + _remove_sysv_ipc()
        if survived:
            reply["restart"] = f"{len(survived)} things outlived the job's cleanup: {'; '.join(survived[:3])}"[:500]
        replies.write(json.dumps(reply).encode() + b"\n")
        for data in contents:
            replies.write(data)
        replies.flush()
        if survived:  # the host starts a fresh server for the next job
            return


def _ignore_signals() -> dict[int, object]:
    """Ignore every catchable signal in the server but SIGCHLD (its children's exit status);
    returns the handlers a job gets back: a fresh Python's, whatever the server inherited (a
    server started from a background shell inherits SIGINT ignored)."""
    python_starts_with = {signal.SIGINT: signal.default_int_handler, signal.SIGPIPE: signal.SIG_IGN,
                          signal.SIGXFSZ: signal.SIG_IGN}
    handlers = {}
    for number in signal.valid_signals():
        if number in (signal.SIGKILL, signal.SIGSTOP, signal.SIGCHLD):
            continue
        try:
            signal.signal(number, signal.SIG_IGN)
            handlers[number] = python_starts_with.get(number, signal.SIG_DFL)
        except (OSError, ValueError, TypeError):  # glibc's own real-time signals
            handlers.pop(number, None)
    return handlers


def _plain_name(name: str) -> str:
    if not name or "/" in name or name in (".", ".."):
        raise ValueError(f"sandbox file names are plain names, not {name!r}")
    return name


def _run_job(args: list[str], workdir: Path, output: Path, limits: SandboxLimits, quiet: int,
             job_signals: dict[int, object]) -> None:
    """In the forked child: become `python ARGS` run in workdir, and exit."""
    import runpy
    import traceback

    code = 1
    try:
        for number, handler in job_signals.items():  # the server's ignored signals are the job's again
            signal.signal(number, handler if handler is not None else signal.SIG_DFL)
        os.setsid()
        _apply_rlimits(limits)
        os.chdir(workdir)
        os.environ.clear()
        os.environ.update(clean_environment(workdir))
        for fd, name in ((1, "stdout"), (2, "stderr")):
            os.dup2(os.open(output / name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), fd)
        os.dup2(quiet, 0)
        os.closerange(3, 65536)  # the server's pipes are out of the job's reach
        sys.path[0] = str(workdir)
        if args[0] == "-m":
            sys.argv = [args[1], *args[2:]]
            runpy.run_module(args[1], run_name="__main__", alter_sys=True)
        else:
            sys.argv = list(args)
            runpy.run_path(args[0], run_name="__main__")
        code = 0
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
        if not isinstance(exit_.code, int | None):
            print(exit_.code, file=sys.stderr)
    except BaseException:  # noqa: BLE001 - the job's own failure: reported like python's
        traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # noqa: BLE001
                pass
        os._exit(code)


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass


def _kill_all_but_me(within_s: float = CLEANUP_SECONDS) -> list[str]:
    """Kill every other process of the sandbox's PID namespace (the server is its PID 1:
    kill(-1) reaches all of them at once, and a fork racing it fails) and reap them. Returns
    what is still alive after within_s: the server must not serve another job then."""
    me = os.getpid()
    deadline = time.monotonic() + within_s
    while True:
        try:
            os.kill(-1, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            while os.waitpid(-1, os.WNOHANG)[0]:
                pass
        except ChildProcessError:
            pass
        others = [p for p in os.listdir("/proc") if p.isdigit() and int(p) != me]
        if not others:
            return []
        if time.monotonic() > deadline:
            return [f"{len(others)} processes survived SIGKILL for {within_s:g} s"]
        time.sleep(0.005)


_DIRECTORY = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW


def _tree(root: Path) -> frozenset[str]:
    """Every path under root (relative, '/'-joined) on its filesystem, and the mount points
    met there: what the server found before any job, to keep."""
    found: set[str] = set()
    stack = [""]
    device = root.stat().st_dev
    while stack:
        relative = stack.pop()
        for entry in os.scandir(root / relative if relative else root):
            path = f"{relative}/{entry.name}" if relative else entry.name
            found.add(path)
            if entry.is_dir(follow_symlinks=False) and entry.stat(follow_symlinks=False).st_dev == device:
                stack.append(path)
    return frozenset(found)


def _empty(root: Path, keep: frozenset[str] = frozenset()) -> list[str]:
    """Remove everything under root but the paths in keep (relative to root), whatever modes
    a job gave its files and however deep it nested them: iterative, by file descriptor (no
    path grows with the depth, one directory open at a time), never into another filesystem.
    Returns what could not be removed: empty when root is as it should be."""
    left: list[str] = []
    try:
        fd = os.open(root, _DIRECTORY)
    except OSError as err:
        return [f"{root}: {err.strerror}"]
    device = os.fstat(fd).st_dev
    keep_depth = max((path.count("/") + 1 for path in keep), default=0)
    path: list[str] = []  # names from root down to the directory fd is open on

    def kept(name: str) -> bool:
        return len(path) < keep_depth and "/".join([*path, name]) in keep

    def where(name: str) -> str:
        return f"{root}/{'/'.join(path[:3])}{'/...' if len(path) > 3 else ''}{'/' if path else ''}{name}"

    try:
        try:
            os.fchmod(fd, stat.S_IMODE(os.fstat(fd).st_mode) | 0o700)
            todo = [os.listdir(fd)]
        except OSError as err:
            return [f"{root}: {err.strerror}"]
        while True:
            if todo[-1]:
                name = todo[-1].pop()
                try:
                    info = os.stat(name, dir_fd=fd, follow_symlinks=False)
                    if stat.S_ISDIR(info.st_mode):
                        if info.st_dev != device:  # a mount point: one of keep, or out of reach
                            if not kept(name):
                                left.append(f"{where(name)}: a mount")
                            continue
                        os.chmod(name, 0o700, dir_fd=fd)  # a directory (no process is left to swap it)
                        child = os.open(name, _DIRECTORY, dir_fd=fd)
                        entries = os.listdir(child)
                        os.close(fd)
                        fd = child
                        path.append(name)
                        todo.append(entries)
                    elif not kept(name):
                        os.unlink(name, dir_fd=fd)
                except OSError as err:
                    left.append(f"{where(name)}: {err.strerror}")
                continue
            todo.pop()
            if not path:
                return left
            name = path.pop()
            parent = os.open("..", _DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = parent
            if not kept(name):
                try:
                    os.rmdir(name, dir_fd=fd)
                except OSError as err:
                    left.append(f"{where(name)}: {err.strerror}")
    finally:
        os.close(fd)


def _remove_sysv_ipc() -> list[str]:
    """Remove every SysV shared-memory segment, semaphore set and message queue of the
    sandbox's IPC namespace (a job's outlive it); returns those that stay."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    ipc_rmid = 0
    remove = {"shm": lambda ident: libc.shmctl(ident, ipc_rmid, None),
              "sem": lambda ident: libc.semctl(ident, 0, ipc_rmid),
              "msg": lambda ident: libc.msgctl(ident, ipc_rmid, None)}
    left = []
    for kind, rmid in remove.items():
        for _ in range(2):  # remove, then look again
            try:
                rows = Path(f"/proc/sysvipc/{kind}").read_text().splitlines()[1:]
            except OSError as err:
                return [f"/proc/sysvipc/{kind}: {err.strerror}"]
            identifiers = [int(row.split()[1]) for row in rows if len(row.split()) > 1]
            for ident in identifiers:
                rmid(ident)
        if identifiers:
            left.append(f"{len(identifiers)} SysV {kind} objects")
    return left


def _read_file(path: Path, limit: int) -> bytes | int | None:
    """A collected file: whole; its size when that is over limit bytes (it is not read);
    None when it is not a regular file."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            return None
        if info.st_size > limit:
            return info.st_size
        data = handle.read(limit + 1)
    return len(data) if len(data) > limit else data


def _read_text(path: Path, limit: int) -> str:
    """An output file as text; over limit characters, its start and its end (where a
    traceback's last line is), with what was cut between them."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return ""
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return ""
        head = handle.read(4 * limit).decode(errors="replace")
        if len(head) <= limit:
            return head
        size = handle.seek(0, os.SEEK_END)
        handle.seek(max(0, size - 2 * limit))
        tail = handle.read().decode(errors="replace")
    half = limit // 2
    return f"{head[:half]}\n[output truncated: {size:,} bytes in all]\n{tail[-half:]}"


if __name__ == "__main__":
    if sys.argv[1:2] == ["--serve"]:
        rest = sys.argv[4:]
        unsafe = "--unsafe" in rest
        _serve(Path(sys.argv[2]), Path(sys.argv[3]), [name for name in rest if name != "--unsafe"], unsafe)
