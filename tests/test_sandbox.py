"""The sandbox holds: no writes outside its dir, no fork bomb, no secrets, time and output limits.
Every guarantee is tested for both ways of running a job: a fresh process, and a child forked by
a warm sandbox server (which must also keep successive jobs apart)."""

import os
import textwrap

import pytest

from derivative_animator.sandbox import PythonSandbox, SandboxLimits, isolation_layers

needs_bwrap = pytest.mark.skipif("bubblewrap" not in isolation_layers(), reason="bubblewrap not available")


@pytest.fixture(params=["fresh", pytest.param("warm", marks=needs_bwrap)])
def run_python(request):
    """run_python(source, **limits) -> (result, {name: text} of the files the job left)."""

    def run(source, **limits):
        with PythonSandbox(SandboxLimits(**limits), warm=request.param == "warm") as box, box.job() as work:
            (work / "prog.py").write_text(textwrap.dedent(source))
            result = box.run(["prog.py"], work)
            left = {p.name: p.read_text() for p in work.iterdir() if p.is_file() and not p.name.startswith(".")}
        return result, left

    return run


def run_jobs(box, *sources):
    results = []
    for source in sources:
        with box.job() as work:
            (work / "prog.py").write_text(textwrap.dedent(source))
            results.append(box.run(["prog.py"], work))
    return results


def test_runs_code_in_its_directory(run_python):
    result, left = run_python("open('out.txt', 'w').write('hi'); print('done')")
    assert result.ok and result.stdout.strip() == "done"
    assert left["out.txt"] == "hi"


def test_cannot_write_outside_its_directory(run_python, tmp_path):
    victim = tmp_path / "victim.txt"
    result, _ = run_python(f"""
        import os
        for path in [{str(victim)!r}, os.path.expanduser('~/../escaped.txt'), '/tmp/derivanim-escape.txt']:
            try:
                open(path, 'w').write('pwned')
                print('WROTE', path)
            except OSError as err:
                print('blocked', type(err).__name__)
    """)
    assert result.stdout.count("blocked") == 3 and "WROTE" not in result.stdout
    assert not victim.exists() and not os.path.exists("/tmp/derivanim-escape.txt")


def test_timeout_kills_infinite_loop(run_python):
    result, _ = run_python("while True: pass", timeout_s=2)
    assert result.timed_out and not result.ok
    assert result.duration_s < 10


def test_fork_bomb_is_contained(run_python):
    result, _ = run_python("""
        import os, time
        children = 0
        try:
            for _ in range(10000):
                if os.fork() == 0:
                    time.sleep(30)
                    os._exit(0)
                children += 1
        except OSError:
            pass
        print(children)
    """, max_processes=32, timeout_s=20)
    assert result.returncode == 0, result.stderr
    assert int(result.stdout.split()[-1]) < 40  # stopped near the limit, host unharmed


def test_environment_is_scrubbed(run_python, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "hunter2")
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", "hunter3")
    result, _ = run_python("import os; print(sorted(os.environ))")
    assert "PATH" in result.stdout
    assert "AWS_SECRET_ACCESS_KEY" not in result.stdout and "MLFLOW_TRACKING_TOKEN" not in result.stdout


def test_output_is_capped(run_python):
    result, _ = run_python("print('x' * 1_000_000)", max_output_chars=1000)
    assert len(result.stdout) < 1100 and result.stdout.endswith("[output truncated]")


def test_memory_limit(run_python):
    result, _ = run_python("b = bytearray(3 * 1024**3); print('allocated')", memory_mb=512)
    assert "allocated" not in result.stdout and not result.ok


def test_reports_its_layers():
    layers = isolation_layers()
    assert "rlimits" in layers and ("pids-cgroup" in layers or "rlimit-nproc" in layers)


@needs_bwrap
def test_no_network_under_bubblewrap(run_python):
    result, _ = run_python("""
        import socket
        try:
            socket.create_connection(('1.1.1.1', 80), timeout=2)
            print('CONNECTED')
        except OSError as err:
            print('blocked')
    """)
    assert "CONNECTED" not in result.stdout and "blocked" in result.stdout


@needs_bwrap
def test_a_warm_job_sees_the_preloaded_imports_and_nothing_of_the_job_before():
    leave_traces = """
        import os, sys, time
        print("preloaded" if "fractions" in sys.modules else "not preloaded")
        open("left.txt", "w").write("x")
        open("/dev/shm/left", "w").write("x")
        if os.fork() == 0:  # a daemon that leaves the job's process group
            os.setsid()
            if os.fork() == 0:
                time.sleep(60)
            os._exit(0)
        time.sleep(0.2)
    """
    look_for_traces = """
        import os
        mine = {1, os.getpid(), os.getppid()}
        print("files", sorted(f for f in os.listdir(".") + os.listdir("/dev/shm") if not f.startswith(".")))
        print("others", [p for p in os.listdir("/proc") if p.isdigit() and int(p) not in mine])
    """
    with PythonSandbox(SandboxLimits(timeout_s=20), preload=("fractions",)) as box:
        assert box.warm
        first, second = run_jobs(box, leave_traces, look_for_traces)
    assert first.ok and first.stdout.strip() == "preloaded", first.stderr
    assert "warm-server" in first.isolation
    assert second.ok and second.stdout.split("\n")[:2] == ["files ['prog.py']", "others []"], second.stdout


@needs_bwrap
def test_a_warm_sandbox_outlives_failing_jobs_and_restarts_a_killed_server():
    with PythonSandbox(SandboxLimits(timeout_s=3)) as box:
        raised, exited, looped, killer, after = run_jobs(
            box,
            "raise ValueError('boom')",
            "import sys; sys.exit(3)",
            "while True: pass",
            "import os, signal; os.kill(os.getppid(), signal.SIGKILL)",
            "import sys; print('still here', sys.argv)",
        )
    assert raised.returncode == 1 and "ValueError: boom" in raised.stderr
    assert exited.returncode == 3 and not exited.timed_out
    assert looped.timed_out and looped.returncode is None
    assert not killer.ok and "sandbox server died" in killer.stderr
    assert after.ok and after.stdout.strip() == "still here ['prog.py']"


@needs_bwrap
def test_a_warm_job_cannot_plant_a_fifo_for_the_host_to_block_on():
    with PythonSandbox(SandboxLimits(timeout_s=10)) as box:
        (planted,) = run_jobs(box, "import os; os.remove('.stdout'); os.mkfifo('.stdout')")
    assert planted.ok and planted.stdout == ""


def test_the_server_refuses_to_run_outside_its_own_pid_namespace():
    import subprocess
    import sys

    started = subprocess.run([sys.executable, "-m", "derivative_animator.sandbox", "--serve"],
                             input="", capture_output=True, text=True, timeout=60)
    assert started.returncode != 0 and "own PID namespace" in started.stderr
