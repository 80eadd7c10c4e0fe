import json
import os
import subprocess
import sys

import pytest

from derivative_animator import cli
from derivative_animator.data import oracle
from derivative_animator.math.header import math_header_length


def run(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "derivative_animator.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=300,
    )


def test_parse_json_reports_everything():
    out = run("parse", "f(x) = x e^x", "--json")
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    assert info["function"] == "x e^x" and info["level"] == 3
    assert info["derivative_latex"] and info["function_latex"] == "x e^{x}"
    assert {"product rule", "exponential rule"} <= {s["rule"] for s in info["steps"]}


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("", "empty"),
        ("sin(x", "bracket"),
        ("x + y", "write the function in x"),
        ("__import__('os').system('touch pwned')", "position"),
        ("1/0", "undefined"),
    ],
)
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
        "syntax": True,
        "structure": True,
        "executes": True,
        "math": True,
        "error": None,
    }


@pytest.mark.slow
@pytest.mark.needs_render
def test_generate_renders_the_video_at_the_quality_asked(tmp_path):
    from PIL import Image

    scene = tmp_path / "scene.py"
    out = run("generate", "x^2", "-o", str(scene), "--render", "--quality", "m")
    assert out.returncode == 0, out.stderr
    (frame,), (movie,) = (list((tmp_path / "scene").glob(f"*.{kind}")) for kind in ("png", "mp4"))
    assert Image.open(frame).size == (1280, 720) and movie.stat().st_size > 0


def test_an_unknown_video_quality_is_refused():
    out = run("generate", "x^2", "--quality", "k")
    assert out.returncode == 2 and "--quality: invalid choice: 'k'" in out.stderr


def test_check_reports_wrong_derivative(tmp_path):
    scene = tmp_path / "scene.py"
    scene.write_text(oracle.template_scene("x^2", "tangent").replace("f'(x) = 2x", "f'(x) = x"))
    out = run("check", str(scene), "--function", "x^2", "--no-execute")
    assert out.returncode == 1 and "math       FAIL" in out.stdout


@pytest.mark.parametrize(
    "setting, fragment",
    [
        (["--attempts", "0"], "--attempts must be 1 or more"),
        (["--max-new-tokens", "0"], "--max-new-tokens must be 1 or more"),
        (["--temperature", "-1"], "--temperature must be 0"),
        (["--self-consistency-temperature", "0"], "--self-consistency-temperature must be above 0"),
        (["--top-p", "0"], "--top-p must be in (0, 1]"),
        (["--top-p", "1.5"], "--top-p must be in (0, 1]"),
        (["--syntax-rollbacks", "-1"], "--syntax-rollbacks must be 0 or more"),
    ],
)
def test_generate_refuses_sampling_settings_that_cannot_work(setting, fragment, capsys, tmp_path):
    # Checked before the model loads: the directory need not hold one.
    assert cli.main(["generate", "x^2", "--model", str(tmp_path), *setting]) == cli.EXIT_USAGE
    err = capsys.readouterr().err
    assert err.startswith("error: ") and fragment in err and err.count("\n") == 1


def test_the_template_backend_refuses_a_sampling_flag_that_cannot_work_too(capsys):
    assert cli.main(["generate", "x^2", "--backend", "template", "--top-p", "0"]) == cli.EXIT_USAGE
    assert "--top-p must be in (0, 1]" in capsys.readouterr().err


def test_check_refuses_a_timeout_that_is_not_positive(tmp_path, capsys):
    scene = tmp_path / "scene.py"
    scene.write_text(oracle.template_scene("x^2", "tangent"))
    assert cli.main(["check", str(scene), "--function", "x^2", "--timeout", "0"]) == cli.EXIT_USAGE
    assert "--timeout must be above 0" in capsys.readouterr().err


def _header(code: str) -> str:
    return code[: math_header_length(code)]


class _FakeModel:
    """Writes the given first scenes in turn; its batch of header samples writes `headers`; a
    header it is asked to go on from (`prefix`) becomes `completions[header]`."""

    def __init__(self, firsts, headers=(), completions=None):
        self.firsts, self.headers, self.completions = list(firsts), list(headers), completions or {}
        self.batches = 0

    def generate(self, function, *args, prefix="", **kwargs):
        from derivative_animator.model.generate import Generation

        code = self.completions[prefix] if prefix else self.firsts.pop(0)
        return Generation(function, code, 0.1, 1, 1)

    def generate_batch(self, functions, *args, headers_only=False, **kwargs):
        from derivative_animator.model.generate import Generation

        assert headers_only
        self.batches += 1
        return [Generation(f, h, 0.01, 1, 0) for f, h in zip(functions, self.headers, strict=True)]


def _write(model, **changes):
    from derivative_animator.eval.service import GenerationService
    from derivative_animator.model.settings import GenerationSettings

    settings = GenerationSettings.defaults().changed(
        **{
            "attempts": 3,
            "max_new_tokens": 10,
            **changes,
            "self_consistency": {"k": max(1, len(model.headers))},
        }
    )
    said = []
    with GenerationService(settings, model) as service:
        written = service.write("x^2", said.append)
    return written, said


def test_verified_generation_completes_the_sampled_headers_the_judge_accepts_until_one_passes():
    import re

    good = oracle.template_scene("x^2", "tangent")
    wrong = re.sub(r"^f'\(x\) = .*$", "f'(x) = 3x", good, count=1, flags=re.MULTILINE)
    also_right = _header(good).replace("f'(x) = 2x", "f'(x) = 2*x")
    model = _FakeModel(
        [wrong],
        headers=[_header(wrong), also_right, also_right, _header(good)],
        completions={also_right: also_right + "broken(", _header(good): good},
    )
    written, said = _write(model)
    assert written.code == good and written.result.passed and model.batches == 1
    assert said[0].startswith("attempt 1: syntax:ok structure:ok executes:ok math:FAIL")
    assert said[1].startswith("attempt 2: syntax:FAIL") and said[2].startswith(
        "attempt 3: syntax:ok"
    )
    assert said[-1] == (
        "greedy's scene had a wrong derivative; 3 of 4 sampled derivatives were right; "
        "the second passed every check"
    )
    # At most attempts - 1 completions, however many headers are right.
    model = _FakeModel(
        [wrong],
        headers=[also_right, _header(good)],
        completions={also_right: also_right + "broken("},
    )
    written, said = _write(model, attempts=2, repair=False)
    assert written.code == wrong and "the one completed failed a check" in said[-3]
    assert said[-2].startswith("no attempt passed every check; keeping attempt 1")
    assert said[-1].startswith(
        "the model's derivative was wrong (it wrote 3x); shown: the model's scene"
    )
    # A right header that is the first scene's own is not completed again (its scene already
    # failed).
    model = _FakeModel([good + "\nbroken("], headers=[_header(good)] * 2)
    written, said = _write(model)
    assert said[-3] == "greedy's scene did not parse; 2 of 2 sampled derivatives were right"
    # A first scene that passes: no header is sampled, nothing more is said.
    model = _FakeModel([good], headers=[_header(wrong)])
    written, said = _write(model)
    assert written.code == good and model.batches == 0 and len(said) == 1


def test_without_a_right_header_the_first_scene_is_kept_and_repair_says_so():
    import re

    good = oracle.template_scene("x^2", "tangent")
    wrong = re.sub(r"^f'\(x\) = .*$", "f'(x) = 3x", good, count=1, flags=re.MULTILINE)
    written, said = _write(_FakeModel(["broken("], headers=[_header(wrong)] * 2))
    assert written.code == "broken(" and not written.result.syntax and not written.corrected
    assert said[1] == "greedy's scene did not parse; 0 of 2 sampled derivatives were right"
    assert said[-2].startswith("no attempt passed every check; keeping attempt 1")
    assert said[-1] == (
        "shown: the model's scene, which did not pass every check: the code does not parse "
        "('(' was never closed (line 1))"
    )  # nothing to correct
    # The repair (on by default) corrects the kept scene, checks it again and says so.
    written, said = _write(_FakeModel([wrong], headers=[_header(wrong)]))
    assert written.result.passed and written.corrected and written.code != wrong
    assert written.model_code == wrong and not written.model_result.math
    assert (
        said[-1]
        == written.summary
        == (
            "the model's derivative was wrong (it wrote 3x); shown: the corrected scene with "
            "f'(x) = 2x, which passed every check; the model's own scene is kept"
        )
    )
    # --no-repair: the model's try as it is.
    written, said = _write(_FakeModel([wrong], headers=[_header(wrong)]), repair=False)
    assert written.code == wrong and not written.corrected and not written.result.passed


def test_self_consistency_8_says_what_became_of_each_of_the_8_samples(
    tmp_path, monkeypatch, capsys
):
    """`derivanim generate --self-consistency 8`: greedy's header and 6 samples agree, one sample
    has no readable derivative, one names another function; the line accounts for all 9."""
    from derivative_animator.eval.service import GenerationService
    from derivative_animator.model import generate
    from derivative_animator.render import checks
    from derivative_animator.render.checks import CheckResult

    good = oracle.template_scene("x^2", "tangent")
    headers = [_header(good)] * 6 + [
        "import manim\n",
        _header(oracle.template_scene("x^3", "tangent")),
    ]
    monkeypatch.setattr(
        generate.SceneGenerator,
        "load",
        classmethod(lambda cls, *a, **k: _FakeModel([good], headers)),
    )
    monkeypatch.setattr(
        checks,
        "check_code",
        lambda code, function, **unused: CheckResult(
            syntax=True, structure=True, executes=True, math=True, layout=True, scene="S"
        ),
    )
    monkeypatch.setattr(GenerationService, "start_sandbox", lambda self: None)
    assert (
        cli.main(
            [
                "generate",
                "x^2",
                "--model",
                str(tmp_path),
                "--self-consistency",
                "8",
                "-o",
                str(tmp_path / "s.py"),
            ]
        )
        == 0
    )
    (vote,) = [
        line for line in capsys.readouterr().err.splitlines() if line.startswith("self-consistency")
    ]
    assert vote.startswith(
        "self-consistency: the greedy header wins: 7 of 9 headers agree (greedy's and 8 sampled); "
        "1 had no readable derivative, 1 named another f(x) ("
    )


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
    assert (
        cli.main(["generate", f"-o{second}", "-2x^3"]) == 0
    )  # -o with its value attached stays -o
    assert first.read_text().startswith('"""\nf(x) = -x^2\nf\'(x) = -2x\n')
    assert second.read_text().startswith('"""\nf(x) = -2x^3\n')


def test_check_takes_a_leading_minus_as_the_function(tmp_path):
    scene = tmp_path / "scene.py"
    scene.write_text(oracle.template_scene("-x^2", "tangent"))
    assert cli.main(["check", str(scene), "--function", "-x^2", "--no-execute"]) == 0


def test_negative_numbers_stay_option_values(tmp_path, capsys):
    # "-1" after --temperature is its value (argparse's own rule), "-x^2" the function.
    assert (
        cli.main(["generate", "-x^2", "--model", str(tmp_path), "--temperature", "-1"])
        == cli.EXIT_USAGE
    )
    assert "--temperature must be 0 (greedy) or more, got -1.0" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["parse", "-x^2"], ["parse", " -x^2"]),
        (["parse", "--", "-x^2"], ["parse", "--", "-x^2"]),
        (["parse", "-x^2", "--json"], ["parse", " -x^2", "--json"]),
        (["parse", "-1"], ["parse", "-1"]),  # argparse takes negative numbers as values already
        (["parse", "-x + 1"], ["parse", "-x + 1"]),  # and words with a space
        (["generate", "-o", "s.py", "-i"], ["generate", "-o", "s.py", "-i"]),
        (["generate", "-os.py", "-h"], ["generate", "-os.py", "-h"]),
        (["parse", "x", "--jsno"], ["parse", "x", "--jsno"]),  # a mistyped option is still one
        (["parse", "-"], ["parse", "-"]),
    ],
)
def test_shield_functions_leaves_options_alone(argv, expected):
    assert cli.shield_functions(cli.build_parser(), argv)[0] == expected


def test_leading_minus_in_a_subprocess():
    out = run("parse", "-x^2", "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["derivative"] == "-2x"


# --- a wrong derivative is never shown as the answer -----------------------------------------

# Loaded by the CLI's process (PYTHONPATH): every "checkpoint" writes the oracle's scene with the
# f' the fine-tuned model wrote for 1/x (`-(-1/x^2)`), in its first scene and in every sampled
# header, so verification has no right try and only the repair can give a passing scene.
_WRONG_MODEL_SITECUSTOMIZE = """
import re

from derivative_animator.data import oracle
from derivative_animator.math.header import math_header_length
from derivative_animator.model import generate


def _wrong(function):
    code = oracle.template_scene(function, "tangent")
    return re.sub(r"^f'\\(x\\) = .*$", "f'(x) = -(-1/x^2)", code, count=1, flags=re.MULTILINE)


class _WrongModel:
    def generate(self, function, *args, prefix="", **kwargs):
        return generate.Generation(function, _wrong(function), 0.1, 100, 10)

    def generate_batch(self, functions, *args, headers_only=False, **kwargs):
        code = _wrong(functions[0])
        return [generate.Generation(f, code[:math_header_length(code)], 0.01, 10, 0) for f in functions]


generate.SceneGenerator.load = classmethod(lambda cls, *args, **kwargs: _WrongModel())
"""  # noqa: E501


@pytest.mark.needs_render
def test_a_wrong_derivative_gives_the_corrected_scene_and_keeps_the_models_beside_it(tmp_path):
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(_WRONG_MODEL_SITECUSTOMIZE)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(tmp_path / "site"), os.environ.get("PYTHONPATH", "")]),
    }

    def generate(*args):
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "derivative_animator.cli",
                "generate",
                "1/x",
                "--model",
                str(tmp_path),
                *args,
            ],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            env=env,
            timeout=300,
        )

    out = generate("-o", "scene.py")
    assert out.returncode == 0, out.stderr
    assert (
        "the model's derivative was wrong (it wrote -(-1/x^2)); shown: the corrected scene with "
        "f'(x) = -1/x^2, which passed every check"
    ) in out.stderr
    assert (
        "wrote scene.py (the corrected scene) and scene.model.py (the model's own scene)"
        in out.stderr
    )
    shown, model = (tmp_path / "scene.py").read_text(), (tmp_path / "scene.model.py").read_text()
    assert "f'(x) = -1/x^2\n" in shown and "f'(x) = -(-1/x^2)\n" in model
    assert (
        shown.replace("f'(x) = -1/x^2\n", "f'(x) = -(-1/x^2)\n", 1) == model
    )  # only the derivative changed
    checked = run("check", "scene.py", "--function", "1/x", "--json", "--dry-run", cwd=tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    report = json.loads(checked.stdout)
    assert all(report[k] for k in ("syntax", "structure", "executes", "math", "layout")), report
    # --no-repair: the model's try as it is, failing, and nothing beside it.
    raw = generate("-o", "raw.py", "--no-repair")
    assert raw.returncode == cli.EXIT_FAILED
    assert (tmp_path / "raw.py").read_text() == model and not (tmp_path / "raw.model.py").exists()
    assert (
        "the model's derivative was wrong (it wrote -(-1/x^2)); shown: the model's scene"
        in raw.stderr
    )
    assert "corrected" not in raw.stderr


def test_the_models_own_scene_never_overwrites_a_file(tmp_path):
    from derivative_animator.eval.service import CORRECTED, Written

    written = Written("corrected", None, None, shown=CORRECTED, model_code="model's")
    (tmp_path / "s.model.py").write_text("the user's")
    with pytest.raises(cli.UsageError, match="s.model.py already exists"):
        cli._write_scenes(tmp_path / "s.py", written, force=False)
    assert (
        not (tmp_path / "s.py").exists() and (tmp_path / "s.model.py").read_text() == "the user's"
    )
    cli._write_scenes(tmp_path / "s.py", written, force=True)
    assert (tmp_path / "s.py").read_text() == "corrected" and (
        tmp_path / "s.model.py"
    ).read_text() == "model's"
    assert cli.model_scene_path(tmp_path / "scene.py") == tmp_path / "scene.model.py"


def test_the_model_is_asked_for_the_style_given_with_style(tmp_path, monkeypatch):
    """--style reaches the model (the first scene and every completion); without it the model
    chooses (style None)."""
    from derivative_animator.eval.service import GenerationService
    from derivative_animator.model.generate import Generation
    from derivative_animator.render import checks

    asked = []

    class Styled:
        def generate(self, function, *args, style=None, **kwargs):
            asked.append(style)
            return Generation(
                function, oracle.template_scene(function, style or "tangent"), 0.1, 1, 1
            )

    real = checks.check_code

    def check_code(code, function, render=None, output_dir=None, sandbox=None, **unused):
        result = real(code, function, execute=False)
        result.executes, result.layout, result.scene = True, True, "S"
        return result

    monkeypatch.setattr(checks, "check_code", check_code)
    monkeypatch.setattr(GenerationService, "start_sandbox", lambda self: None)
    monkeypatch.setattr(
        GenerationService, "load_model", lambda self, *a, **k: setattr(self, "generator", Styled())
    )
    for style, name in (
        ("graphs", "RuleStepsScene"),
        ("secant", "SecantLimitScene"),
        (None, "TangentLineScene"),
    ):
        target = tmp_path / f"{style}.py"
        argv = ["generate", "x^2", "--model", "m", "-o", str(target)]
        assert cli.main(argv + (["--style", style] if style else [])) == 0
        assert f"class {name}(Scene)" in target.read_text() and asked[-1] == style


def test_generate_decoding_flags_reach_the_settings():
    """conf/generate's decoding defaults, and each flag turning one off for one call."""
    defaults = cli.generation_settings(cli.parse_arguments(["generate", "x^2"]))
    names = ("shared_code", "bracket_guard", "copy_function", "choose_interval")
    assert all(getattr(defaults, name) for name in names)
    flags = ["--no-" + name.replace("_", "-") for name in names]
    plain = cli.generation_settings(cli.parse_arguments(["generate", "x^2", *flags]))
    assert not any(getattr(plain, name) for name in names)
    assert plain.changed(**dict.fromkeys(names, True)) == defaults
