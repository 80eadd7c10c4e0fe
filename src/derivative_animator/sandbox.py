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
"""

from __future__ import annotations

import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
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


def _preexec(limits: SandboxLimits, cgroup: Path | None):
    def apply() -> None:
        if cgroup is not None:
            (cgroup / "cgroup.procs").write_text(str(os.getpid()))
        else:
            resource.setrlimit(resource.RLIMIT_NPROC, (limits.max_processes + _own_process_count(),) * 2)
        memory = limits.memory_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
        cpu = int(limits.timeout_s) + 5
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 5))
        size = limits.max_file_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    return apply


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
    layers = isolation_layers()
    command = (_bwrap_prefix(workdir) if "bubblewrap" in layers else []) + list(argv)
    cgroup = _make_cgroup(limits)
    if cgroup is None and "pids-cgroup" in layers:  # could not create one: RLIMIT_NPROC applies
        layers = [layer if layer != "pids-cgroup" else "rlimit-nproc" for layer in layers]
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


def _read_capped(path: Path, limit: int) -> str:
    with open(path, "rb") as handle:
        data = handle.read(limit + 1)
    text = data[:limit].decode(errors="replace")
    return text + "\n[output truncated]" if len(data) > limit else text
