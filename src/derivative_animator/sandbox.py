"""Run untrusted generated code in a subprocess that cannot hurt the host.

Layers, each used when the machine offers it (`isolation_layers()` says which):
- bubblewrap: the whole filesystem read-only except the run's own temp dir, no network,
  its own PID namespace (every process dies with the sandbox);
- a pids cgroup (as root, where root ignores RLIMIT_NPROC) or RLIMIT_NPROC: fork bombs;
- rlimits: address space (memory), CPU seconds, file size (caps output), no core dumps;
- a fresh process group killed on timeout, a scrubbed environment (no inherited
  secrets), stdout/stderr captured to files and truncated;
- inside the runner, a Python audit hook refusing writes outside the temp dir, sockets
  and unexpected subprocesses (a second line of defence where bubblewrap is missing).

`run_sandboxed` starts a fresh process per program. `PythonSandbox(warm=True)` runs many
`python ARGS` jobs for the cost of one interpreter start: a server inside one bubblewrap
sandbox imports the heavy libraries once (Manim and sympy: ~2 s of every render) and forks
a child per job, which gets its own work dir, rlimits, time limit and process group. Between
jobs the server kills every other process in the sandbox's PID namespace and the host wipes
the sandbox's only writable dir, so a job sees nothing of the one before it.
"""

from __future__ import annotations

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


@dataclass(frozen=True)
class SandboxLimits:
    timeout_s: float = 60.0
    memory_mb: int = 4096
    max_processes: int = 64
    max_file_mb: int = 200
    max_output_chars: int = 20_000

    def __post_init__(self):
        if self.timeout_s <= 0 or self.memory_mb < 256 or self.max_processes < 4:
            raise ValueError("sandbox limits: timeout_s > 0, memory_mb >= 256, max_processes >= 4")


@dataclass
class SandboxResult:
    returncode: int | None
    stdout: str
    stderr: str
    timed_out: bool
    duration_s: float
    isolation: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out


@cache
def _bwrap_works() -> bool:
    bwrap = shutil.which("bwrap")
    if not bwrap:
        return False
    probe = subprocess.run(
        [bwrap, "--ro-bind", "/", "/", "--dev", "/dev", "--unshare-all", "--die-with-parent", "true"],
        capture_output=True, timeout=20,
    )
    return probe.returncode == 0


def _pids_cgroup_root() -> Path | None:
    """Where this process may create a pids cgroup (root only; v1, or v2 with pids on)."""
    if os.geteuid() != 0:
        return None
    v1 = Path("/sys/fs/cgroup/pids")
    if (v1 / "cgroup.procs").exists() and os.access(v1, os.W_OK):
        return v1
    v2 = Path("/sys/fs/cgroup")
    control = v2 / "cgroup.subtree_control"
    if control.exists() and "pids" in control.read_text().split() and os.access(v2, os.W_OK):
        return v2
    return None


def isolation_layers() -> list[str]:
    layers = ["rlimits", "process-group", "clean-env", "audit-hook"]
    if _bwrap_works():
        layers.insert(0, "bubblewrap")
    layers.append("pids-cgroup" if _pids_cgroup_root() else "rlimit-nproc")
    return layers


def _layers_in_force(cgroup: Path | None) -> list[str]:
    """isolation_layers(), saying rlimit-nproc where no pids cgroup could be made."""
    return [layer if layer != "pids-cgroup" or cgroup is not None else "rlimit-nproc"
            for layer in isolation_layers()]


def clean_environment(workdir: Path) -> dict[str, str]:
    """Only what Python, Manim and LaTeX need; nothing secret comes through."""
    path = os.pathsep.join([str(Path(sys.executable).parent), "/usr/local/bin", "/usr/bin", "/bin"])
    return {
        "PATH": path,
        "HOME": str(workdir),
        "TMPDIR": str(workdir),
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONHASHSEED": "0",
        "MPLCONFIGDIR": str(workdir / ".matplotlib"),
        "TEXMFVAR": str(workdir / ".texmf-var"),
        "OMP_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
    }


def _make_cgroup(limits: SandboxLimits) -> Path | None:
    root = _pids_cgroup_root()
    if root is None:
        return None
    group = root / "derivanim-sandbox" / uuid.uuid4().hex[:12]
    try:
        group.mkdir(parents=True)
        (group / "pids.max").write_text(str(limits.max_processes))
        return group
    except OSError:
        return None


def _remove_cgroup(group: Path | None) -> None:
    if group is None:
        return
    for _ in range(50):
        try:
            pids = (group / "cgroup.procs").read_text().split()
        except OSError:
            return
        for pid in pids:
            try:
                os.kill(int(pid), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass
        try:
            group.rmdir()
            return
        except OSError:
            time.sleep(0.05)


def _preexec(limits: SandboxLimits, cgroup: Path | None, cpu_limit: bool = True):
    def apply() -> None:
        if cgroup is not None:
            (cgroup / "cgroup.procs").write_text(str(os.getpid()))
        else:
            resource.setrlimit(resource.RLIMIT_NPROC, (limits.max_processes + _own_process_count(),) * 2)
        _apply_rlimits(limits, cpu_limit)

    return apply


def _apply_rlimits(limits: SandboxLimits, cpu_limit: bool = True) -> None:
    memory = limits.memory_mb * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    if cpu_limit:  # CPU seconds add up over a process's life: never on a warm server, on each job
        cpu = int(limits.timeout_s) + 5
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 5))
    size = limits.max_file_mb * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def _own_process_count() -> int:
    # RLIMIT_NPROC counts all of this user's processes, so leave room for the ones running.
    uid = os.getuid()
    count = 0
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if entry.stat().st_uid == uid:
                    count += 1
            except OSError:
                pass
    return count


def _bwrap_prefix(workdir: Path) -> list[str]:
    return [
        "bwrap", "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc",
        "--tmpfs", "/dev/shm", "--bind", str(workdir), str(workdir),
        "--unshare-all", "--die-with-parent", "--new-session", "--chdir", str(workdir),
    ]


def run_sandboxed(argv: list[str], workdir: Path, limits: SandboxLimits = SandboxLimits()) -> SandboxResult:
    """Run argv with cwd=workdir (the only writable place) under every layer available."""
    workdir = Path(workdir).resolve()
    cgroup = _make_cgroup(limits)
    layers = _layers_in_force(cgroup)
    command = (_bwrap_prefix(workdir) if "bubblewrap" in layers else []) + list(argv)
    with tempfile.TemporaryDirectory(prefix="derivanim-out-") as capture:
        out_path, err_path = Path(capture, "stdout"), Path(capture, "stderr")
        start = time.perf_counter()
        timed_out = False
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            process = subprocess.Popen(
                command, cwd=workdir, env=clean_environment(workdir), stdin=subprocess.DEVNULL,
                stdout=out, stderr=err, start_new_session=True,
                preexec_fn=_preexec(limits, cgroup), close_fds=True,
            )
            try:
                process.wait(timeout=limits.timeout_s)
            except subprocess.TimeoutExpired:
                timed_out = True
            finally:
                _kill_group(process)
                _remove_cgroup(cgroup)
        duration = time.perf_counter() - start
        return SandboxResult(
            returncode=None if timed_out else process.returncode,
            stdout=_read_capped(out_path, limits.max_output_chars),
            stderr=_read_capped(err_path, limits.max_output_chars),
            timed_out=timed_out,
            duration_s=duration,
            isolation=layers,
        )


def _kill_group(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    process.wait()


# --- many Python jobs, one sandbox --------------------------------------------------------

class PythonSandbox:
    """Runs `python ARGS` jobs (a script or `-m module`) one at a time, each in its own work dir.

    warm=True where bubblewrap works: a server in one long-lived bubblewrap sandbox imports
    `preload` once and forks a child per job (see the module docstring). Otherwise, or with
    warm=False, every job is a fresh process under `run_sandboxed`."""

    def __init__(self, limits: SandboxLimits = SandboxLimits(), preload: tuple[str, ...] = (), warm: bool = True):
        self.limits, self.preload = limits, tuple(preload)
        self.warm = warm and _bwrap_works()
        self._server: subprocess.Popen | None = None
        self._cgroup: Path | None = None
        self._root: Path | None = None  # the warm sandbox's only writable dir, each job's work dir
        if self.warm:
            self._root = Path(tempfile.mkdtemp(prefix="derivanim-warm-")).resolve()
            self._start()

    @contextmanager
    def job(self) -> Iterator[Path]:
        """An empty work dir for the next `run`, emptied or removed afterwards. A warm
        sandbox's is always its one writable dir: nothing a job leaves outlives it."""
        if not self.warm:
            with tempfile.TemporaryDirectory(prefix="derivanim-job-") as work:
                yield Path(work).resolve()
            return
        _empty(self._root)
        try:
            yield self._root
        finally:
            _empty(self._root)

    def run(self, args: list[str], workdir: Path) -> SandboxResult:
        if not self.warm:
            return run_sandboxed([sys.executable, *args], workdir, self.limits)
        if self._server is None or self._server.poll() is not None:
            self._start()
        request = {"args": list(args), "workdir": str(workdir), "limits": asdict(self.limits)}
        start = time.perf_counter()
        try:
            self._server.stdin.write((json.dumps(request) + "\n").encode())
            self._server.stdin.flush()
            # The server enforces the time limit; this deadline only catches a server that hangs.
            reply = _read_line(self._server.stdout, self.limits.timeout_s + 60)
        except OSError:
            reply = None
        layers = self._layers
        if reply is None:  # the server died or hung: nothing of it survives into the next job
            exit_code = self._server.poll()
            self._server_log.seek(0)
            log = self._server_log.read()[-2000:].decode(errors="replace")
            self._stop()
            return SandboxResult(
                returncode=exit_code, stdout="", timed_out=exit_code is None,
                stderr=f"{log}\nsandbox: the sandbox server {'hung' if exit_code is None else 'died'}",
                duration_s=time.perf_counter() - start, isolation=layers)
        outcome = json.loads(reply)
        return SandboxResult(
            returncode=outcome["returncode"],
            stdout=_read_capped(workdir / ".stdout", self.limits.max_output_chars),
            stderr=_read_capped(workdir / ".stderr", self.limits.max_output_chars),
            timed_out=outcome["timed_out"], duration_s=outcome["duration_s"], isolation=layers,
        )

    def close(self) -> None:
        self._stop()
        if self._root is not None:
            shutil.rmtree(self._root, ignore_errors=True)
            self._root = None

    def __enter__(self) -> PythonSandbox:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _start(self) -> None:
        self._cgroup = _make_cgroup(self.limits)
        self._layers = _layers_in_force(self._cgroup) + ["warm-server"]
        self._server_log = tempfile.TemporaryFile()  # noqa: SIM115 - outside the sandbox: why a server died; closed in _stop
        command = _bwrap_prefix(self._root) + [
            sys.executable, "-m", "derivative_animator.sandbox", "--serve", *self.preload]
        self._server = subprocess.Popen(
            command, cwd=self._root, env=clean_environment(self._root), stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=self._server_log, start_new_session=True,
            preexec_fn=_preexec(self.limits, self._cgroup, cpu_limit=False), close_fds=True,
        )

    def _stop(self) -> None:
        if self._server is not None:
            _kill_group(self._server)
            for pipe in (self._server.stdin, self._server.stdout):
                pipe.close()
            self._server = None
            self._server_log.close()
        _remove_cgroup(self._cgroup)
        self._cgroup = None


class SandboxPool:
    """N sandboxes for N threads: `with pool.take() as box:` lends one for a job."""

    def __init__(self, size: int, limits: SandboxLimits = SandboxLimits(), preload: tuple[str, ...] = (),
                 warm: bool = True):
        self._boxes = [PythonSandbox(limits, preload, warm) for _ in range(size)]
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


def _read_capped(path: Path, limit: int) -> str:
    """An output file, truncated to limit characters; read only if it is still a regular file
    (a warm job could swap its own for a symlink to a host file or a FIFO that blocks)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return ""
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return ""
        data = handle.read(limit + 1)
    text = data[:limit].decode(errors="replace")
    return text + "\n[output truncated]" if len(data) > limit else text


def _read_line(pipe, timeout_s: float) -> bytes | None:
    """One line from the pipe within timeout_s; None on end of file or timeout."""
    fd, data = pipe.fileno(), b""
    deadline = time.monotonic() + timeout_s
    while not data.endswith(b"\n"):
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
            return None
        chunk = os.read(fd, 65536)
        if not chunk:
            return None
        data += chunk
    return data


# --- the server, inside the sandbox ---------------------------------------------------------

def _serve(preload: list[str]) -> None:
    """Read one JSON job a line from stdin, fork a child for it, answer one JSON line."""
    import ctypes
    import importlib

    if os.getppid() != 1:
        sys.exit("sandbox --serve runs only as the child of bubblewrap's init in its own PID "
                 "namespace: it kills every other process it can see")
    replies = os.fdopen(os.dup(1), "w")
    quiet = os.open(os.devnull, os.O_RDWR)
    os.dup2(quiet, 1)  # whatever a library prints must not mix with the replies
    for name in preload:
        importlib.import_module(name)
    # Not dumpable: a job's processes (same user) cannot ptrace or read this server's memory.
    ctypes.CDLL(None).prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE
    for line in sys.stdin:
        request = json.loads(line)
        limits = SandboxLimits(**request["limits"])
        start = time.perf_counter()
        child = os.fork()
        if child == 0:
            _run_job(request["args"], Path(request["workdir"]), limits, quiet)
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
        _kill_all_but_me()
        replies.write(json.dumps({"returncode": None if timed_out else status, "timed_out": timed_out,
                                  "duration_s": time.perf_counter() - start}) + "\n")
        replies.flush()


def _run_job(args: list[str], workdir: Path, limits: SandboxLimits, quiet: int) -> None:
    """In the forked child: become `python ARGS` run in workdir, and exit."""
    import runpy
    import traceback

    code = 1
    try:
        os.setsid()
        _apply_rlimits(limits)
        os.chdir(workdir)
        os.environ.update(clean_environment(workdir))
        for fd, name in ((1, ".stdout"), (2, ".stderr")):
            os.dup2(os.open(workdir / name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), fd)
        os.dup2(quiet, 0)
        os.closerange(3, 65536)
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


def _kill_all_but_me() -> None:
    """Kill every process of the sandbox's PID namespace but its init (1) and this server."""
    me = os.getpid()
    for _ in range(500):
        others = [int(p) for p in os.listdir("/proc") if p.isdigit() and int(p) not in (1, me)]
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


if __name__ == "__main__":
    if sys.argv[1:2] == ["--serve"]:
        _serve(sys.argv[2:])
