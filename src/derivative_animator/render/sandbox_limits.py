"""The limits a sandboxed job runs under and the environment it gets: the host sets them on
the sandbox server (`sandbox.py`, through `limited_command`), the server on every job it forks
(`sandbox_server.py`). Standard library only: the server imports it inside the sandbox, and the
host runs this file as a script to set the server's limits before it execs."""

from __future__ import annotations

import json
import os
import resource
import sys
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass(frozen=True)
class SandboxLimits:
    timeout_s: float = 60.0
    memory_mb: int = 4096  # the whole sandbox where a cgroup can be made, else each process
    max_processes: int = 64
    max_file_mb: int = 200
    disk_mb: int = 512  # the job's work dir (a tmpfs)
    max_output_chars: int = 20_000

    def __post_init__(self):
        if (
            self.timeout_s <= 0
            or self.memory_mb < 256
            or self.max_processes < 4
            or self.disk_mb < 16
            or self.max_file_mb < 1
        ):
            raise ValueError(
                "sandbox limits: timeout_s > 0, memory_mb >= 256, max_processes >= 4, "
                "disk_mb >= 16, max_file_mb >= 1"
            )


def apply_rlimits(limits: SandboxLimits, cpu_limit: bool = True, nproc: bool = False) -> None:
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


def limited_command(
    limits: SandboxLimits, cgroup_dirs: list[Path], nproc: bool, command: list[str]
) -> list[str]:
    """`command` run under `limits`: a fresh interpreter joins the cgroups, sets the rlimits and
    execs it. Not Popen's preexec_fn: in a host with threads, the forked child can wait forever
    on a lock or a thread-local that another thread held at the fork."""
    settings = {"limits": asdict(limits), "cgroups": [str(d) for d in cgroup_dirs], "nproc": nproc}
    # -I -S: nothing from the environment, the working directory or site-packages; stdlib only.
    return [sys.executable, "-I", "-S", str(Path(__file__)), json.dumps(settings), "--", *command]


def _exec_limited(argv: list[str]) -> None:
    settings, separator, *command = argv
    if separator != "--" or not command:
        raise SystemExit("usage: sandbox_limits.py SETTINGS -- COMMAND [ARG...]")
    settings = json.loads(settings)
    for directory in settings["cgroups"]:  # join each controller's group before anything runs
        Path(directory, "cgroup.procs").write_text(str(os.getpid()))
    apply_rlimits(SandboxLimits(**settings["limits"]), cpu_limit=False, nproc=settings["nproc"])
    os.execvp(command[0], command)


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
        "PATH": path,
        "HOME": workdir,
        "TMPDIR": workdir,
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONHASHSEED": "0",
        "MPLCONFIGDIR": f"{workdir}/.matplotlib",
        "TEXMFVAR": f"{workdir}/.texmf-var",
        "OMP_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
    }


if __name__ == "__main__":
    _exec_limited(sys.argv[1:])
