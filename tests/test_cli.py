import json
import os
import subprocess
import sys

import pytest

from derivative_animator import cli
from derivative_animator.data import oracle
from derivative_animator.math.header import MATH_HEADER_END


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


@pytest.mark.needs_render
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
    scene.write_text(oracle.template_scene("x^2", "tangent").replace("f'(x) = 2x", "f'(x) = x"))
    out = run("check", str(scene), "--function", "x^2", "--no-execute")
    assert out.returncode == 1 and "math       FAIL" in out.stdout


@pytest.mark.parametrize("setting, fragment", [
    (["--attempts", "0"], "--attempts must be 1 or more"),
    (["--max-new-tokens", "0"], "--max-new-tokens must be 1 or more"),
    (["--temperature", "-1"], "--temperature must be 0"),
    (["--retry-temperature", "0"], "--retry-temperature must be above 0"),
    (["--top-p", "0"], "--top-p must be in (0, 1]"),
    (["--top-p", "1.5"], "--top-p must be in (0, 1]"),
    (["--syntax-rollbacks", "-1"], "--syntax-rollbacks must be 0 or more"),
])
def test_generate_refuses_sampling_settings_that_cannot_work(setting, fragment, capsys, tmp_path):
    # Checked before the model loads: the directory need not hold one.
    assert cli.main(["generate", "x^2", "--model", str(tmp_path), *setting]) == cli.EXIT_USAGE
    err = capsys.readouterr().err
    assert err.startswith("error: ") and fragment in err and err.count("\n") == 1


def test_check_refuses_a_timeout_that_is_not_positive(tmp_path, capsys):
    scene = tmp_path / "scene.py"
    scene.write_text(oracle.template_scene("x^2", "tangent"))
    assert cli.main(["check", str(scene), "--function", "x^2", "--timeout", "0"]) == cli.EXIT_USAGE
    assert "--timeout must be above 0" in capsys.readouterr().err


def _fake_generator(codes):
    from types import SimpleNamespace

    class Fake:  # writes the given codes in turn, and honours accept_header as the real one does
        def generate(self, function, *args, accept_header=None, **kwargs):
            code, stop = codes.pop(0), "eos"
            header = code.split(MATH_HEADER_END)[0]
            if accept_header is not None and MATH_HEADER_END in code and not accept_header(header):
                code, stop = header, "math header rejected"
            return SimpleNamespace(code=code, seconds=0.1, tokens_per_second=10.0, rollbacks=0, guarded=0,
                                   stop=stop)
    return Fake()


def test_verified_generation_keeps_the_attempt_that_passed_most_checks():
    import re
    from types import SimpleNamespace

    good = oracle.template_scene("x^2", "tangent")
    wrong = re.sub(r"^f'\(x\) = .*$", "f'(x) = 3x", good, count=1, flags=re.MULTILINE)
    settings = dict(attempts=3, temperature=0.0, retry_temperature=0.7, seed=0, max_new_tokens=10,
                    top_p=0.95, syntax_rollbacks=0, no_verify=False)
    said = []
    code, result = cli.generate_verified(_fake_generator([wrong, "broken(", good]), "x^2",
                                         SimpleNamespace(**settings, repair=False), said.append)
    assert code == good and said[-1].startswith("attempt 3: syntax:ok structure:ok")
    said = []
    code, result = cli.generate_verified(_fake_generator(["broken(", wrong, "broken again("]), "x^2",
                                         SimpleNamespace(**settings, repair=False), said.append)
    assert code == "broken(" and not result.syntax  # attempt 2 was abandoned at its header
    assert said[1].startswith("attempt 2: abandoned after its math header")
    assert said[-1].startswith("no attempt passed every check; keeping attempt 1")
    # --repair works on the kept attempt, not on the last one, and says so.
    said = []
    code, result = cli.generate_verified(_fake_generator(["broken(", wrong, "broken again("]), "x^2",
                                         SimpleNamespace(**settings, repair=True), said.append)
    assert result.passed and "--repair" in said[-1] and code != wrong


# --- a function may start with a minus: no "--" needed ------------------------------------

def test_parse_takes_a_leading_minus_as_the_function(capsys):
    assert cli.main(["parse", "-x^2", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["input"] == "-x^2" and info["function"] == "-x^2" and info["derivative"] == "-2x"
    assert cli.main(["parse", "--", "-x^2"]) == 0  # the explicit form keeps working
    assert "f'(x) = -2x" in capsys.readouterr().out
    assert cli.main(["parse", "-sin(x)"]) == 0 and "f'(x) = -cos(x)" in capsys.readouterr().out


def test_generate_takes_a_leading_minus_as_the_function(tmp_path, capsys):
    first, second = tmp_path / "s.py", tmp_path / "t.py"
    assert cli.main(["generate", "-x^2", "--backend", "template", "-o", str(first)]) == 0
    assert cli.main(["generate", f"-o{second}", "-2x^3"]) == 0  # -o with its value attached stays -o
    assert first.read_text().startswith('"""\nf(x) = -x^2\nf\'(x) = -2x\n')
    assert second.read_text().startswith('"""\nf(x) = -2x^3\n')


def test_check_takes_a_leading_minus_as_the_function(tmp_path):
    scene = tmp_path / "scene.py"
    scene.write_text(oracle.template_scene("-x^2", "tangent"))
    assert cli.main(["check", str(scene), "--function", "-x^2", "--no-execute"]) == 0


def test_negative_numbers_stay_option_values(tmp_path, capsys):
    # "-1" after --temperature is its value (argparse's own rule), "-x^2" the function.
    assert cli.main(["generate", "-x^2", "--model", str(tmp_path), "--temperature", "-1"]) == cli.EXIT_USAGE
    assert "--temperature must be 0 (greedy) or more, got -1.0" in capsys.readouterr().err


@pytest.mark.parametrize("argv, expected", [
    (["parse", "-x^2"], ["parse", " -x^2"]),
    (["parse", "--", "-x^2"], ["parse", "--", "-x^2"]),
    (["parse", "-x^2", "--json"], ["parse", " -x^2", "--json"]),
    (["parse", "-1"], ["parse", "-1"]),  # argparse takes negative numbers as values already
    (["parse", "-x + 1"], ["parse", "-x + 1"]),  # and words with a space
    (["generate", "-o", "s.py", "-i"], ["generate", "-o", "s.py", "-i"]),
    (["generate", "-os.py", "-h"], ["generate", "-os.py", "-h"]),
    (["parse", "x", "--jsno"], ["parse", "x", "--jsno"]),  # a mistyped option is still one
    (["parse", "-"], ["parse", "-"]),
])
def test_shield_functions_leaves_options_alone(argv, expected):
    assert cli.shield_functions(cli.build_parser(), argv)[0] == expected


def test_leading_minus_in_a_subprocess():
    out = run("parse", "-x^2", "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["derivative"] == "-2x"
