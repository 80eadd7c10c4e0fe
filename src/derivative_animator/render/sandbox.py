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
server's observation, not the job's claim. Between jobs it kills every other process in the
PID namespace and empties the work dir and /dev/shm. `warm=True` keeps one server (its
preloaded imports: Manim and sympy, ~2 s of every render) for many jobs; `warm=False`
starts one per job.

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

from derivative_animator.errors import MachineProblem

JOB_DIR = "/job"  # the job's work dir inside the sandbox: a tmpfs
OUTPUT_DIR = "/output"  # its stdout and stderr files: a tmpfs of their own, so a full work dir loses no error
SANDBOX_UID = 65534  # "nobody" inside the sandbox's user namespace
SHM_MB = 64
MAX_COLLECT_MB = 64  # the most a job may send back in one file
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
            collect: tuple[str, ...] = ()) -> SandboxResult:
        """Run `python ARGS` in a fresh work dir holding `files`; the result carries the
        files named in `collect` that the job left there (regular files only)."""
        if self._server is None or self._server.poll() is not None:
            self._start()
        request = {"args": list(args), "limits": asdict(self.limits), "collect": list(collect),
                   "files": {name: base64.b64encode(data.encode() if isinstance(data, str) else data).decode()
                             for name, data in (files or {}).items()}}
        start = time.perf_counter()
        try:
            self._server.stdin.write((json.dumps(request) + "\n").encode())
            self._server.stdin.flush()
            # The server enforces the time limit; this deadline only catches a server that hangs.
            reply = _read_line(self._server.stdout, self.limits.timeout_s + 60)
        except OSError:
            reply = None
        layers = list(self.layers)
        if reply is None:  # the server died or hung: nothing of it survives into the next job
            exit_code = self._server.poll()
            self._server_log.seek(0)
            log = self._server_log.read()[-2000:].decode(errors="replace")
            self._stop()
            return SandboxResult(
                returncode=exit_code, stdout="", timed_out=exit_code is None,
                stderr=f"{log}\nsandbox: the sandbox server {'hung' if exit_code is None else 'died'}",
                duration_s=time.perf_counter() - start, isolation=layers)
        if not self.warm:
            self._stop()
        outcome = json.loads(reply)
        return SandboxResult(
            returncode=outcome["returncode"], stdout=outcome["stdout"], stderr=outcome["stderr"],
            timed_out=outcome["timed_out"], duration_s=outcome["duration_s"], isolation=layers,
            files={name: base64.b64decode(data) for name, data in outcome["files"].items()},
        )

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


def _read_line(pipe, timeout_s: float) -> bytes | None:
    """One line from the pipe within timeout_s; None on end of file or timeout."""
    fd, data = pipe.fileno(), b""
    deadline = time.monotonic() + timeout_s
    while not data.endswith(b"\n"):
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
            return None
        chunk = os.read(fd, 1 << 20)
        if not chunk:
            return None
        data += chunk
    return data


# --- the server, inside the sandbox ---------------------------------------------------------

def _serve(root: Path, output: Path, preload: list[str], unsafe: bool) -> None:
    """Read one JSON job a line from stdin, fork a child for it, answer one JSON line."""
    import ctypes
    import importlib

    # Not dumpable, first: a job (same user) cannot ptrace it, read its memory or open its fds.
    ctypes.CDLL(None).prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE
    if not unsafe and os.getpid() != 1:
        sys.exit("sandbox --serve runs only as PID 1 of its own PID namespace (bwrap --as-pid-1): "
                 "it kills every other process it can see")
    replies = os.fdopen(os.dup(1), "w")
    quiet = os.open(os.devnull, os.O_RDWR)
    os.dup2(quiet, 1)  # whatever a library prints must not mix with the replies
    for name in preload:
        importlib.import_module(name)
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
            _run_job(request["args"], root, output, limits, quiet)
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
        else:
            _kill_all_but_me()
        reply = {"returncode": None if timed_out else status, "timed_out": timed_out,
                 "duration_s": time.perf_counter() - start,
                 "stdout": _read_text(output / "stdout", limits.max_output_chars),
                 "stderr": _read_text(output / "stderr", limits.max_output_chars),
                 "files": {}}
        for name in request["collect"]:
            data = _read_file(root / _plain_name(name), MAX_COLLECT_MB << 20)
            if data is not None:
                reply["files"][name] = base64.b64encode(data).decode()
        _empty(root)
        _empty(output)
        replies.write(json.dumps(reply) + "\n")
        replies.flush()


def _plain_name(name: str) -> str:
    if not name or "/" in name or name in (".", ".."):
        raise ValueError(f"sandbox file names are plain names, not {name!r}")
    return name


def _run_job(args: list[str], workdir: Path, output: Path, limits: SandboxLimits, quiet: int) -> None:
    """In the forked child: become `python ARGS` run in workdir, and exit."""
    import runpy
    import traceback

    code = 1
    try:
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


def _kill_all_but_me() -> None:
    """Kill every other process of the sandbox's PID namespace (the server is its PID 1)."""
    me = os.getpid()
    for _ in range(500):
        others = [int(p) for p in os.listdir("/proc") if p.isdigit() and int(p) != me]
        if not others:
            break
        for pid in others:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            while os.waitpid(-1, os.WNOHANG)[0]:
                pass
        except ChildProcessError:
            pass
        time.sleep(0.01)
    _empty(Path("/dev/shm"))  # the sandbox's own tmpfs


def _empty(root: Path) -> None:
    """Remove everything under root, whatever modes a job gave its files."""
    def remove(path: Path) -> None:
        if path.is_dir() and not path.is_symlink():
            path.chmod(0o700)
            for child in path.iterdir():
                remove(child)
            path.rmdir()
        else:
            path.unlink(missing_ok=True)

    for entry in root.iterdir():
        try:
            remove(entry)
        except OSError:
            pass  # a file the job made unremovable: harmless, the job's run is over


def _read_regular(path: Path, limit: int) -> bytes | None:
    """Up to limit + 1 bytes of a regular file the job left; None for anything else (a job
    could leave a symlink to a file it cannot read, or a FIFO that blocks)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as handle:
        return handle.read(limit + 1) if stat.S_ISREG(os.fstat(fd).st_mode) else None


def _read_file(path: Path, limit: int) -> bytes | None:
    """A collected file: whole, or None when it is over limit bytes or not a regular file."""
    data = _read_regular(path, limit)
    return data if data is not None and len(data) <= limit else None


def _read_text(path: Path, limit: int) -> str:
    """An output file as text, truncated to limit characters."""
    text = (_read_regular(path, 4 * limit) or b"").decode(errors="replace")
    return text[:limit] + "\n[output truncated]" if len(text) > limit else text


if __name__ == "__main__":
    if sys.argv[1:2] == ["--serve"]:
        rest = sys.argv[4:]
        unsafe = "--unsafe" in rest
        _serve(Path(sys.argv[2]), Path(sys.argv[3]), [name for name in rest if name != "--unsafe"], unsafe)
