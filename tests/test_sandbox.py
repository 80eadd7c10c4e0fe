"""The sandbox holds: no writes outside its dir, no fork bomb, no secrets, time and output limits."""

import os
import sys
import textwrap

import pytest

from derivative_animator.sandbox import SandboxLimits, isolation_layers, run_sandboxed


def run_python(tmp_path, source, **limits):
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    (work / "prog.py").write_text(textwrap.dedent(source))
    return run_sandboxed([sys.executable, "prog.py"], work, SandboxLimits(**limits))


def test_runs_code_in_its_directory(tmp_path):
    result = run_python(tmp_path, "open('out.txt', 'w').write('hi'); print('done')")
    assert result.ok and result.stdout.strip() == "done"
    assert (tmp_path / "work" / "out.txt").read_text() == "hi"


def test_cannot_write_outside_its_directory(tmp_path):
    victim = tmp_path / "victim.txt"
    result = run_python(tmp_path, f"""
        import os
        for path in [{str(victim)!r}, os.path.expanduser('~/../escaped.txt'), '/tmp/derivanim-escape.txt']:
            try:
                open(path, 'w').write('pwned')
                print('WROTE', path)
            except OSError as err:
                print('blocked', type(err).__name__)
    """)
    assert "WROTE" not in result.stdout
    assert not victim.exists() and not os.path.exists("/tmp/derivanim-escape.txt")


def test_timeout_kills_infinite_loop(tmp_path):
    result = run_python(tmp_path, "while True: pass", timeout_s=2)
    assert result.timed_out and not result.ok
    assert result.duration_s < 10


def test_fork_bomb_is_contained(tmp_path):
    result = run_python(tmp_path, """
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


def test_environment_is_scrubbed(tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "hunter2")
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", "hunter3")
    result = run_python(tmp_path, "import os; print(sorted(os.environ))")
    assert "AWS_SECRET_ACCESS_KEY" not in result.stdout and "MLFLOW_TRACKING_TOKEN" not in result.stdout


def test_output_is_capped(tmp_path):
    result = run_python(tmp_path, "print('x' * 1_000_000)", max_output_chars=1000)
    assert len(result.stdout) < 1100 and result.stdout.endswith("[output truncated]")


def test_memory_limit(tmp_path):
    result = run_python(tmp_path, "b = bytearray(3 * 1024**3); print('allocated')", memory_mb=512)
    assert "allocated" not in result.stdout and not result.ok


def test_reports_its_layers():
    layers = isolation_layers()
    assert "rlimits" in layers and ("pids-cgroup" in layers or "rlimit-nproc" in layers)


@pytest.mark.skipif("bubblewrap" not in isolation_layers(), reason="bubblewrap not available")
def test_no_network_under_bubblewrap(tmp_path):
    result = run_python(tmp_path, """
        import socket
        try:
            socket.create_connection(('1.1.1.1', 80), timeout=2)
            print('CONNECTED')
        except OSError as err:
            print('blocked')
    """)
    assert "CONNECTED" not in result.stdout
