"""The sandbox server: what runs inside the sandbox as its PID 1, forking a child per job.

`sandbox.PythonSandbox` starts it as PID 1 of a bubblewrap sandbox (`sandbox_launch.py`):

    python -m derivative_animator.render.sandbox_server --serve JOB_DIR OUTPUT_DIR
        [--unsafe] [PRELOAD ...]

It imports the PRELOAD modules once, then reads one JSON job a line from stdin, forks a child
that becomes `python ARGS` in JOB_DIR, and answers one JSON line and the asked files' bytes on
stdout; between jobs it leaves nothing of the job behind (see `sandbox.py`). It imports only
the standard library, `sandbox_limits` and the caps of `untrusted`: what the sandbox holds."""

from __future__ import annotations

import base64
import json
import os
import signal
import stat
import sys
import time
from pathlib import Path

from derivative_animator.render.sandbox_limits import (
    SandboxLimits,
    apply_rlimits,
    clean_environment,
)
from derivative_animator.render.untrusted import MAX_FILE_BYTES, MAX_REPLY_FILES_BYTES, size_text

CLEANUP_SECONDS = 5.0  # between jobs: every other process gone within it, or the server restarts


def serve(root: Path, output: Path, preload: list[str], unsafe: bool) -> None:
    """Read one JSON job a line from stdin, fork a child for it, answer one JSON line and
    the files' bytes; between jobs, leave nothing of the job behind, or exit so the host
    starts a fresh server."""
    import ctypes
    import importlib

    # Not dumpable, first: a job (same user) cannot ptrace it, read its memory or open its fds.
    ctypes.CDLL(None).prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE
    if not unsafe and os.getpid() != 1:
        sys.exit(
            "sandbox --serve runs only as PID 1 of its own PID namespace (bwrap --as-pid-1): "
            "it kills every other process it can see"
        )
    replies = os.fdopen(os.dup(1), "wb")
    quiet = os.open(os.devnull, os.O_RDWR)
    os.dup2(quiet, 1)  # whatever a library prints must not mix with the replies
    for name in preload:
        importlib.import_module(name)
    job_signals = (
        _ignore_signals()
    )  # a job's SIGINT to PID 1 is Python's KeyboardInterrupt otherwise
    tmp_baseline = (
        frozenset() if unsafe else _tree(Path("/tmp"))
    )  # the mount points bound under /tmp
    for line in sys.stdin:
        request = json.loads(line)
        limits = SandboxLimits(**request["limits"])
        empty_dir(root)
        empty_dir(output)
        for name, data in request.pop("files").items():
            (root / _plain_name(name)).write_bytes(base64.b64decode(data))
        del line  # the request's files are not the idle server's to keep (the host measures it)
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
        reply = {
            "returncode": None if timed_out else status,
            "timed_out": timed_out,
            "duration_s": time.perf_counter() - start,
            "stdout": _read_text(output / "stdout", limits.max_output_chars),
            "stderr": _read_text(output / "stderr", limits.max_output_chars),
            "files": {},
            "refused": {},
            "restart": None,
        }
        contents, total = [], 0
        for name, cap in request["collect"].items():
            data = _read_file(root / _plain_name(name), min(cap, MAX_FILE_BYTES))
            if data is None:
                continue
            if isinstance(data, int) or total + len(data) > MAX_REPLY_FILES_BYTES:
                size = data if isinstance(data, int) else len(data)
                reply["refused"][name] = (
                    f"{size_text(size)}, over its {size_text(min(cap, MAX_FILE_BYTES))} cap"
                    if isinstance(data, int)
                    else "over the reply's cap on all files"
                )
                continue
            reply["files"][name] = len(data)
            contents.append(data)
            total += len(data)
        survived += empty_dir(root) + empty_dir(output)
        if not unsafe:
            survived += (
                empty_dir(Path("/tmp"), keep=tmp_baseline)
                + empty_dir(Path("/dev/shm"))
                + _remove_sysv_ipc()
            )
        if survived:
            reply["restart"] = (
                f"{len(survived)} things outlived the job's cleanup: {'; '.join(survived[:3])}"[
                    :500
                ]
            )
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
    python_starts_with = {
        signal.SIGINT: signal.default_int_handler,
        signal.SIGPIPE: signal.SIG_IGN,
        signal.SIGXFSZ: signal.SIG_IGN,
    }
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


def _run_job(
    args: list[str],
    workdir: Path,
    output: Path,
    limits: SandboxLimits,
    quiet: int,
    job_signals: dict[int, object],
) -> None:
    """In the forked child: become `python ARGS` run in workdir, and exit."""
    import runpy
    import traceback

    code = 1
    try:
        for (
            number,
            handler,
        ) in job_signals.items():  # the server's ignored signals are the job's again
            signal.signal(number, handler if handler is not None else signal.SIG_DFL)
        os.setsid()
        apply_rlimits(limits)
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
            if (
                entry.is_dir(follow_symlinks=False)
                and entry.stat(follow_symlinks=False).st_dev == device
            ):
                stack.append(path)
    return frozenset(found)


def empty_dir(root: Path, keep: frozenset[str] = frozenset()) -> list[str]:
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
        return (
            f"{root}/{'/'.join(path[:3])}{'/...' if len(path) > 3 else ''}"
            f"{'/' if path else ''}{name}"
        )

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
                        os.chmod(
                            name, 0o700, dir_fd=fd
                        )  # a directory (no process is left to swap it)
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
    remove = {
        "shm": lambda ident: libc.shmctl(ident, ipc_rmid, None),
        "sem": lambda ident: libc.semctl(ident, 0, ipc_rmid),
        "msg": lambda ident: libc.msgctl(ident, ipc_rmid, None),
    }
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
        serve(
            Path(sys.argv[2]),
            Path(sys.argv[3]),
            [name for name in rest if name != "--unsafe"],
            unsafe,
        )
