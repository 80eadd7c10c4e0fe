"""Run untrusted generated code where it cannot hurt the host or fake its own result.

Every job runs inside a sandbox server (`sandbox_server.py`, started as `python -m
derivative_animator.render.sandbox_server --serve`) that forks a child per job. The server lives
in one bubblewrap sandbox (made by `sandbox_launch.py`) with these layers (`sandbox_launch.probe()`
says which this machine allows, and every result lists those in force):
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
read-only and POSIX message queues are refused, so nothing stays there. The host checks
independently: where the sandbox has a cgroup, it measures what the idle server holds after
an empty first job (processes; anonymous and tmpfs memory), and replaces the server after any
job that leaves more (`IDLE_MARGIN_MB`). `warm=True` keeps
one server (its preloaded imports: Manim and sympy, ~2 s of every render) for many jobs;
`warm=False` starts one per job.

The reply is a JSON line, then the asked files' bytes, each within the cap asked for it:
the host reads it into a growing buffer, refuses one over its caps, and says what went
wrong in `SandboxResult.failure` (timed out, killed by the seccomp filter, over memory, the
server died or hung) rather than leaving it to the job's output. What the host then does
with the files is bounded by `render.untrusted`.

This module is the host's side: `PythonSandbox` (and `SandboxPool`) start the server, send it
jobs and read its replies; the limits both sides apply are in `sandbox_limits.py`.

Where bubblewrap cannot run, rendering is refused (`SandboxUnavailable`) unless the caller
opts in to running generated code without isolation (`allow_unsandboxed`, surfaced as
`--unsafe-no-sandbox` and `eval.render.unsafe_no_sandbox`).
"""

from __future__ import annotations

import base64
import json
import os
import queue
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

from derivative_animator.errors import MachineProblem, one_line
from derivative_animator.render import sandbox_server
from derivative_animator.render.sandbox_launch import (
    JOB_DIR,
    OUTPUT_DIR,
    Cgroup,
    bwrap_command,
    probe,
    server_environment,
)
from derivative_animator.render.sandbox_limits import SandboxLimits, limited_command
from derivative_animator.render.untrusted import (
    HOST_SECONDS,
    MAX_FILE_BYTES,
    MAX_HEADER_BYTES,
    MAX_REPLY_FILES_BYTES,
    size_text,
)

IDLE_MARGIN_MB = 32  # above the idle server's memory after a job: restart (renders vary < 1 MB)
UNSAFE_HINT = "--unsafe-no-sandbox (eval.render.unsafe_no_sandbox=true) runs it without isolation"


@dataclass
class SandboxResult:
    returncode: int | None
    stdout: str
    stderr: str
    timed_out: bool
    duration_s: float
    isolation: list[str] = field(default_factory=list)
    files: dict[str, bytes] = field(default_factory=dict)  # what the job left under the asked names
    refused: dict[str, str] = field(
        default_factory=dict
    )  # asked files not sent back, and why (over a cap)
    # What went wrong as the server or the host saw it (not the job's output): "timed out after
    # 60 s", "killed by the seccomp filter", "the sandbox server died", ...; None when it exited.
    failure: str | None = None
    restart: str | None = None  # why the server was replaced after this job (something outlived it)

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out


class SandboxUnavailable(MachineProblem):
    """Isolation cannot be set up here and the caller did not opt in to running without it."""


class PythonSandbox:
    """Runs `python ARGS` jobs (a script or `-m module`) one at a time, each in an empty
    work dir holding the files it was given; `run` returns the files asked for.

    warm=True keeps one server and its `preload`ed imports for every job; warm=False starts
    a server (no preload) per job. allow_unsandboxed=True runs jobs without bubblewrap where
    it cannot run (UNSANDBOXED in the layers); otherwise that raises SandboxUnavailable."""

    def __init__(
        self,
        limits: SandboxLimits = SandboxLimits(),
        preload: tuple[str, ...] = (),
        warm: bool = True,
        allow_unsandboxed: bool = False,
    ):
        self.limits, self.preload, self.warm = limits, tuple(preload), warm
        self.isolation = probe()
        if self.isolation.bwrap is None and not allow_unsandboxed:
            raise SandboxUnavailable(
                f"generated code cannot be run safely: {self.isolation.problem}; or {UNSAFE_HINT}"
            )
        self._server: subprocess.Popen | None = None
        self._cgroup: Cgroup | None = None
        self._idle_held: tuple[int, int] | None = None  # (bytes, processes) the idle server holds
        self._host_dir: Path | None = None  # UNSANDBOXED only: the job dir on the host
        self.layers: list[str] = self.isolation.layers(None)

    def run(
        self,
        args: list[str],
        files: dict[str, bytes | str] | None = None,
        collect: tuple[str, ...] | dict[str, int] = (),
    ) -> SandboxResult:
        """Run `python ARGS` in a fresh work dir holding `files`; the result carries the
        files named in `collect` that the job left there (regular files only), each at most
        its cap in bytes (a dict) or MAX_FILE_BYTES (a tuple of names); one over its cap is
        in `refused`, with why."""
        if self._server is None or self._server.poll() is not None:
            self._start()
            self._measure_idle()
        caps = (
            dict(collect) if isinstance(collect, dict) else dict.fromkeys(collect, MAX_FILE_BYTES)
        )
        caps = {name: min(int(cap), MAX_FILE_BYTES) for name, cap in caps.items()}
        request = {
            "args": list(args),
            "limits": asdict(self.limits),
            "collect": caps,
            "files": {
                name: base64.b64encode(data.encode() if isinstance(data, str) else data).decode()
                for name, data in (files or {}).items()
            },
        }
        start = time.perf_counter()
        oom_before = self._cgroup.oom_kills() if self._cgroup is not None else 0
        layers = list(self.layers)
        try:
            self._server.stdin.write((json.dumps(request) + "\n").encode())
            self._server.stdin.flush()
            # The server enforces the time limit; this deadline only catches a server that hangs.
            header, collected = _read_reply(
                self._server.stdout.fileno(),
                self.limits,
                caps,
                time.monotonic() + self.limits.timeout_s + 60,
            )
        except (
            OSError,
            _ReplyProblem,
        ) as problem:  # nothing of this server survives into the next job
            failure = self._what_happened(problem, oom_before, time.perf_counter() - start)
            self._stop()
            return SandboxResult(
                returncode=None,
                stdout="",
                stderr=f"sandbox: {failure}",
                timed_out=getattr(problem, "hung", False),
                failure=failure,
                duration_s=time.perf_counter() - start,
                isolation=layers,
            )
        returncode = header["returncode"]
        failure = None
        if header["timed_out"]:
            failure = f"timed out after {self.limits.timeout_s:g} s"
        elif returncode is not None and returncode < 0:
            failure = self._killed_by(-returncode, oom_before)
        restart = header["restart"] or self._held_beyond_idle()
        if restart or not self.warm:
            self._stop()
        return SandboxResult(
            returncode=returncode,
            stdout=header["stdout"],
            stderr=header["stderr"],
            timed_out=header["timed_out"],
            duration_s=header["duration_s"],
            isolation=layers,
            files=collected,
            refused=header["refused"],
            failure=failure,
            restart=restart,
        )

    def _measure_idle(self) -> None:
        """What a warm server holds when idle, measured by the host after an empty job (run as
        any job; the server is up, so `run` starts none)."""
        self._idle_held = None
        if not self.warm or self._cgroup is None:
            return
        empty = self.run(["idle.py"], files={"idle.py": ""})
        if empty.ok and empty.restart is None and self._server is not None:
            self._idle_held = self._cgroup.held()

    def _held_beyond_idle(self) -> str | None:
        """Why the server must not serve another job: the host sees more processes or memory
        in the sandbox's cgroup after this job than when the server was idle."""
        if not self.warm or self._idle_held is None or self._cgroup is None:
            return None
        (memory, processes), (idle_memory, idle_processes) = self._cgroup.held(), self._idle_held
        if processes > idle_processes:
            return f"{processes - idle_processes} processes outlived the job (the host's count)"
        if memory > idle_memory + (IDLE_MARGIN_MB << 20):
            return (
                f"the sandbox held {(memory - idle_memory) >> 20} MB more than when idle "
                "after the job (the host's measure)"
            )
        return None

    def _killed_by(self, number: int, oom_before: int) -> str:
        """What a signal that ended the job means here."""
        if number == signal.SIGSYS:
            return (
                "killed by the seccomp filter (SIGSYS: a system call of another architecture or "
                "ABI)"
            )
        if (
            number == signal.SIGKILL
            and self._cgroup is not None
            and self._cgroup.oom_kills() > oom_before
        ):
            return (
                f"killed over the memory limit ({self.limits.memory_mb} MB for the whole sandbox)"
            )
        if number == signal.SIGXCPU:
            return f"killed over the CPU time limit ({int(self.limits.timeout_s) + 5} s)"
        if number == signal.SIGXFSZ:
            return f"killed over the file size limit ({self.limits.max_file_mb} MB)"
        try:
            name = signal.Signals(number).name
        except ValueError:
            name = f"signal {number}"
        return f"killed by {name}" + (
            " (it crashed)"
            if number
            in (signal.SIGSEGV, signal.SIGBUS, signal.SIGABRT, signal.SIGILL, signal.SIGFPE)
            else ""
        )

    def _what_happened(self, problem: Exception, oom_before: int, seconds: float) -> str:
        """Why no reply came: the server died (over memory?), hung, or sent what the host
        refuses."""
        if getattr(problem, "hung", False):
            return (
                f"the sandbox server did not answer within {self.limits.timeout_s + 60:g} s "
                f"(the job's limit is {self.limits.timeout_s:g} s)"
            )
        if isinstance(problem, _ReplyProblem) and not problem.died:
            return f"the sandbox's reply was refused: {problem}"
        try:
            code = self._server.wait(timeout=5)
        except subprocess.TimeoutExpired:
            code = None
        over_memory = self._cgroup is not None and self._cgroup.oom_kills() > oom_before
        self._server_log.seek(0)
        log = self._server_log.read()[-2000:].decode(errors="replace").strip().splitlines()
        why = (
            f"killed over the memory limit ({self.limits.memory_mb} MB for the whole sandbox)"
            if over_memory
            else f"exit status {code}"
            if code is not None and code >= 0
            else f"killed by signal {-code}"
            if code is not None
            else "no exit status"
        )
        return f"the sandbox server died after {seconds:.1f} s ({why})" + (
            f": {log[-1][:200]}" if log and not over_memory else ""
        )

    def close(self) -> None:
        self._stop()

    def __enter__(self) -> PythonSandbox:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _start(self) -> None:
        self._cgroup = Cgroup.make(self.limits)
        self.layers = self.isolation.layers(self._cgroup) + (["warm-server"] if self.warm else [])
        self._server_log = tempfile.TemporaryFile()  # noqa: SIM115 - why a server died; closed in _stop
        preload = list(self.preload) if self.warm else []
        cgroup, limits = self._cgroup, self.limits

        def limited(command: list[str]) -> list[str]:
            cgroup_dirs = cgroup.directories if cgroup is not None else []
            return limited_command(limits, cgroup_dirs, cgroup is None, command)

        if self.isolation.bwrap is None:
            self._host_dir = Path(tempfile.mkdtemp(prefix="derivanim-unsafe-"))
            for name in ("job", "output"):
                (self._host_dir / name).mkdir()
            argv = [
                sys.executable,
                "-m",
                sandbox_server.__name__,
                "--serve",
                str(self._host_dir / "job"),
                str(self._host_dir / "output"),
                "--unsafe",
                *preload,
            ]
            self._server = subprocess.Popen(
                limited(argv),
                cwd=self._host_dir,
                env=server_environment(self._host_dir),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=self._server_log,
                start_new_session=True,
                close_fds=True,
            )
            return
        argv = [
            sys.executable,
            "-m",
            sandbox_server.__name__,
            "--serve",
            JOB_DIR,
            OUTPUT_DIR,
            *preload,
        ]
        with bwrap_command(self.isolation.bwrap, self.isolation.unprivileged, limits, argv) as (
            command,
            fds,
        ):
            self._server = subprocess.Popen(
                limited(command),
                env=server_environment(JOB_DIR),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=self._server_log,
                start_new_session=True,
                close_fds=True,
                pass_fds=fds,
            )

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
            sandbox_server.empty_dir(self._host_dir)
            shutil.rmtree(self._host_dir, ignore_errors=True)
            self._host_dir = None


class SandboxPool:
    """N sandboxes for N threads: `with pool.take() as box:` lends one for a job."""

    def __init__(
        self,
        size: int,
        limits: SandboxLimits = SandboxLimits(),
        preload: tuple[str, ...] = (),
        warm: bool = True,
        allow_unsandboxed: bool = False,
    ):
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


REPLY_KEYS = {
    "returncode": (int, type(None)),
    "timed_out": (bool,),
    "duration_s": (int, float),
    "stdout": (str,),
    "stderr": (str,),
    "files": (dict,),
    "refused": (dict,),
    "restart": (str, type(None)),
}


def _read_reply(
    fd: int,
    limits: SandboxLimits,
    caps: dict[str, int],
    deadline: float,
) -> tuple[dict, dict[str, bytes]]:
    """The server's reply: a JSON line (its size capped by the output caps) naming each file's
    length, then the files' bytes, each within the cap asked for it. Raises _ReplyProblem."""
    header_cap = MAX_HEADER_BYTES + 24 * (
        limits.max_output_chars + 200
    )  # two outputs, 12 bytes a char escaped
    buffer, scanned = bytearray(), 0
    while (newline := buffer.find(b"\n", scanned)) < 0:
        scanned = len(buffer)
        if scanned > header_cap:
            raise _ReplyProblem(f"its first line is over {size_text(header_cap)}")
        _fill(fd, buffer, deadline)
    try:
        header = json.loads(buffer[:newline])
        if not isinstance(header, dict) or any(
            not isinstance(header.get(key), kinds) for key, kinds in REPLY_KEYS.items()
        ):
            raise ValueError("a field is missing or of the wrong type")
        sizes = header["files"]
        if any(
            name not in caps or not isinstance(n, int) or not 0 <= n <= caps[name]
            for name, n in sizes.items()
        ):
            raise ValueError("a file that was not asked for, or over its cap")
        header["refused"] = {
            str(name)[:100]: str(why)[:200] for name, why in header["refused"].items()
        }
    except ValueError as err:  # json's errors are ValueErrors
        raise _ReplyProblem(f"malformed ({one_line(err)})") from None
    total = sum(sizes.values())
    if total > MAX_REPLY_FILES_BYTES:
        raise _ReplyProblem(
            f"its files are {size_text(total)}, over {size_text(MAX_REPLY_FILES_BYTES)}"
        )
    needed = newline + 1 + total
    files_deadline = max(deadline, time.monotonic() + HOST_SECONDS)
    while len(buffer) < needed:
        _fill(fd, buffer, files_deadline)
    files, at = {}, newline + 1
    for name, n in sizes.items():
        files[name] = bytes(buffer[at : at + n])
        at += n
    return header, files
