import json
import os
import subprocess
import sys

import pytest

from derivative_animator import cli, environment


def run(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "derivative_animator.cli", *args],
                          capture_output=True, text=True, cwd=cwd, timeout=300)


def test_parse_json_reports_everything():
    out = run("parse", "f(x) = x e^x", "--json")
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    assert info["function"] == "x e^x" and info["level"] == 3
    assert info["derivative_latex"] and info["function_latex"] == "x e^{x}"
    assert {"product rule", "exponential rule"} <= {s["rule"] for s in info["steps"]}


@pytest.mark.parametrize("text, fragment", [
    ("", "empty"),
    ("sin(x", "bracket"),
    ("x + y", "write the function in x"),
    ("__import__('os').system('touch pwned')", "position"),
    ("1/0", "undefined"),
])
def test_parse_errors_are_one_line_with_exit_2(text, fragment, tmp_path):
    out = run("parse", text, cwd=tmp_path)
    assert out.returncode == 2
    assert out.stderr.startswith("error: ") and out.stderr.count("\n") == 1
    assert fragment in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "pwned").exists()


def test_generate_refuses_to_overwrite(tmp_path):
    target = tmp_path / "scene.py"
    assert run("generate", "x^2", "-o", str(target)).returncode == 0
    before = target.read_text()
    out = run("generate", "x^3", "-o", str(target))
    assert out.returncode == 2 and "already exists" in out.stderr
    assert target.read_text() == before


def test_generate_constant_function_is_a_clear_error(tmp_path):
    out = run("generate", "5", "-o", str(tmp_path / "s.py"))
    assert out.returncode == 2 and "constant" in out.stderr
    assert not os.listdir(tmp_path)


def test_check_missing_file():
    out = run("check", "/nonexistent/scene.py", "--function", "x^2")
    assert out.returncode == 2 and "not found" in out.stderr


@pytest.mark.skipif(bool(environment.render_problems()), reason="machine cannot render")
def test_generate_then_check_passes_all_four(tmp_path):
    scene = tmp_path / "scene.py"
    assert run("generate", "e^{-x^2}", "--style", "secant", "-o", str(scene)).returncode == 0
    out = run("check", str(scene), "--function", "e^{-x^2}", "--json", "--dry-run")
    assert out.returncode == 0, out.stdout + out.stderr
    report = json.loads(out.stdout)
    assert {k: report[k] for k in ("syntax", "structure", "executes", "math", "error")} == {
        "syntax": True, "structure": True, "executes": True, "math": True, "error": None}


def test_check_reports_wrong_derivative(tmp_path):
    scene = tmp_path / "scene.py"
    scene.write_text(cli.template_scene("x^2", "tangent").replace("df_expr = 2*x", "df_expr = x"))
    out = run("check", str(scene), "--function", "x^2", "--no-execute")
    assert out.returncode == 1 and "math       FAIL" in out.stdout
