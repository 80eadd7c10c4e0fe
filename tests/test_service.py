"""The generation service (eval/service.py): one seed and temperature policy for the CLI, the
page and the evaluator; verified generation completes the sampled headers the math judge
accepts, so it is never below self-consistency; a prefix is continued, not rewritten."""

from __future__ import annotations

import ast
import os
from functools import partial
from pathlib import Path

import pytest
from conftest import compose_config

from derivative_animator import cli, evaluate, serve
from derivative_animator.data import oracle
from derivative_animator.eval.service import GenerationService
from derivative_animator.math.header import math_header_length
from derivative_animator.math.judge import header_judge
from derivative_animator.model.generate import Generation
from derivative_animator.model.settings import GenerationSettings

compose_eval = partial(compose_config, "eval")


def _scene(function: str, derivative: str | None = None) -> str:
    """The oracle's scene of a function; with `derivative`, one that states that f' instead."""
    code = oracle.template_scene(function, "tangent")
    if derivative is None:
        return code
    header = code[:math_header_length(code)]
    start = header.index("f'(x) = ")
    return code[:start] + f"f'(x) = {derivative}" + code[header.index("\n", start):]


def _header(code: str) -> str:
    return code[:math_header_length(code)]


class PlannedModel:
    """A model whose first scene and header samples are planned per function (header row i of a
    batch: plan[function][i]); a header it goes on from is completed with the oracle's body.
    It records every call: what was sampled, at which temperature, with which seed."""

    def __init__(self, first: dict[str, str], headers: dict[str, list[str]]):
        self.first, self.headers, self.calls = first, headers, []

    def generate(self, function, max_new_tokens, temperature=0.0, top_p=1.0, seed=None, syntax_rollbacks=0,
                 accept_header=None, prefix=""):
        self.calls.append(("scene", function, temperature, seed, _derivative_line(prefix)))
        if prefix:
            body = _scene(function)
            return Generation(function, prefix + body[math_header_length(body):], 0.01, 400, 40)
        return Generation(function, self.first[function], 0.01, 500, 50)

    def generate_batch(self, functions, max_new_tokens, temperature=0.0, top_p=1.0, seed=None, headers_only=False):
        assert headers_only and len(set(functions)) == 1
        self.calls.append(("headers", functions[0], temperature, seed, len(functions)))
        return [Generation(f, h, 0.01, 50, 0) for f, h in zip(functions, self.headers[functions[0]], strict=True)]


def _derivative_line(header: str) -> str:
    return next((line for line in header.splitlines() if line.startswith("f'(x)")), "")


def judged_check(code, function, render=None, output_dir=None, render_failing=True, sandbox=None, **unused):
    """checks.check_code without a render: parses, and the math judge reads the header."""
    from derivative_animator.render.checks import CheckResult

    try:
        ast.parse(code)
    except SyntaxError:
        return CheckResult(syntax=False)
    end = math_header_length(code)
    math = end is not None and header_judge(str(function))(code[:end])
    return CheckResult(syntax=True, structure=True, executes=True, math=math, scene="S")


@pytest.fixture
def no_renders(monkeypatch):
    from derivative_animator.render import checks

    monkeypatch.setattr(checks, "check_code", judged_check)
    monkeypatch.setattr(GenerationService, "start_sandbox", lambda self: None)


def _evaluate(tmp_path, monkeypatch, model, functions: str, *overrides) -> dict:
    from derivative_animator.model import generate

    path = tmp_path / "functions.txt"
    path.write_text(functions)
    monkeypatch.setattr(generate.SceneGenerator, "load", classmethod(lambda cls, *a, **k: model))
    cfg = compose_eval(f"eval.functions_file={path}", f"eval.model={tmp_path}", "eval.render.warm=false",
                       "eval.workers=1", *overrides)
    return evaluate.run_evaluation(cfg, tmp_path / "run")


# One wrong first scene; 4 headers: one repeating its wrong f', one right, one naming another f, one right again.
X2 = {"first": {"x^2": _scene("x^2", "3x")},
      "headers": {"x^2": [_header(_scene("x^2", "3x")), _header(_scene("x^2", "2*x")), _header(_scene("x^3")),
                          _header(_scene("x^2"))]}}


def test_the_cli_the_page_and_the_evaluator_sample_by_one_policy(tmp_path, monkeypatch, no_renders):
    args = cli.build_parser().parse_args(["generate", "x^2", "--model", "checkpoint"])
    settings = cli.generation_settings(args).changed(self_consistency={"k": 4})
    page = serve.Settings(model_dir=Path("checkpoint"), output_dir=tmp_path)
    assert page.generation == cli.generation_settings(args)  # the page writes as `derivanim generate` does
    from_cli = PlannedModel(**X2)
    GenerationService(settings, from_cli).write("x^2")
    from_evaluator = PlannedModel(**X2)
    results = _evaluate(tmp_path, monkeypatch, from_evaluator, "x^2\n",
                        "eval.baselines=[finetuned,self_consistency,verified]", "generate.self_consistency.k=4")
    assert from_cli.calls == from_evaluator.calls == [
        ("scene", "x^2", 0.0, 0, ""),  # greedy, the seed
        ("headers", "x^2", 1.0, 1000, 4),  # one batch, shared by the vote and verification
        ("scene", "x^2", 0.0, 1, "f'(x) = 2*x"),  # the first right header, completed
    ]
    verified, = [r for r in results["rows"] if r["baseline"] == "verified"]
    assert verified["passed"] and verified["attempt"] == 2


def test_verified_is_never_below_self_consistency(tmp_path, monkeypatch, no_renders):
    """x^2: the wrong f' wins the vote (greedy and three samples say 3x) but one sample is right;
    sin x: most samples are right; e^x: none is. Greedy is wrong in all three."""
    wrong, right = _header(_scene("x^2", "3x")), _header(_scene("x^2"))
    model = PlannedModel(
        first={"x^2": _scene("x^2", "3x"), "sin(x)": _scene("sin x", "-cos(x)"), "e^x": _scene("e^x", "x e^(x - 1)")},
        headers={"x^2": [wrong, wrong, right, wrong],
                 "sin(x)": [_header(_scene("sin x"))] * 3 + [_header(_scene("sin x", "-cos(x)"))],
                 "e^x": [_header(_scene("e^x", "x e^(x - 1)"))] * 4})
    results = _evaluate(tmp_path, monkeypatch, model, "x^2\nsin x\ne^x\n",
                        "eval.baselines=[finetuned,self_consistency,verified]", "generate.self_consistency.k=4")
    passed = {(r["baseline"], r["function"]): r["passed"] for r in results["rows"]}
    for function in ("x^2", "sin(x)", "e^x"):
        assert passed[("verified", function)] >= passed[("self_consistency", function)] >= passed[("finetuned", function)]
    assert (passed[("self_consistency", "x^2")], passed[("verified", "x^2")]) == (False, True)
    assert passed[("verified", "sin(x)")] and not passed[("verified", "e^x")]
    assert [c[0] for c in model.calls].count("headers") == 3  # each function's batch sampled once


def test_a_generation_goes_on_from_its_prefix_as_it_would_have_written_it(micro_checkpoint, scripted_lm):
    from derivative_animator.model.generate import SceneGenerator

    generator = SceneGenerator.load(micro_checkpoint)
    scene = _scene("x^3 - 2x")
    tokens = generator.tokenizer(scene, add_special_tokens=False)["input_ids"]
    generator.model = scripted_lm([generator.prompt_ids("x^3 - 2x") + tokens], len(generator.tokenizer),
                                  generator.tokenizer.eos_token_id)
    whole = generator.generate("x^3 - 2x", 4000)
    prefix = generator.tokenizer.decode(tokens[:len(tokens) // 3])
    continued = generator.generate("x^3 - 2x", 4000, prefix=prefix)
    assert whole.code == scene and continued.code == scene and continued.stop == "eos"
    assert continued.new_tokens == whole.new_tokens - len(tokens) // 3
    short = generator.generate("x^3 - 2x", len(tokens) // 3 + 10, prefix=prefix)
    assert short.new_tokens == 10 and short.stop == "max_new_tokens"  # the prefix counts against the budget


def test_an_untrained_model_is_verified_end_to_end_and_keeps_its_first_scene(micro_checkpoint):
    from derivative_animator.model.generate import SceneGenerator

    settings = GenerationSettings.defaults().changed(max_new_tokens=40, self_consistency={"k": 2})
    service = GenerationService(settings, SceneGenerator.load(micro_checkpoint))
    verified = service.verify("x^2", service.scene("x^2"), lambda attempt, generation: judged_check(generation.code,
                                                                                                    "x^2"))
    assert (verified.sampled, verified.right, verified.kept.attempt) == (2, 0, 1)  # no header is right
    assert verified.story() == "greedy's scene did not parse; 0 of 2 sampled derivatives were right"


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("DERIVANIM_TEST_CHECKPOINT"),
                    reason="set DERIVANIM_TEST_CHECKPOINT to a trained merged checkpoint")
def test_with_a_trained_checkpoint_verified_finds_a_right_sampled_header_where_greedy_is_wrong():
    """A fine-tuned tiny checkpoint (make all's) on functions its greedy scene gets wrong: where a
    sampled header is right, verification keeps a scene whose math is right."""
    settings = GenerationSettings.defaults()
    service = GenerationService(settings)
    service.load_model(os.environ["DERIVANIM_TEST_CHECKPOINT"])
    found = 0
    for function in os.environ.get("DERIVANIM_TEST_FUNCTIONS", "tan(2x)").split(";"):
        first = service.scene(function)
        verified = service.verify(function, first, lambda attempt, generation, f=function: judged_check(generation.code, f))
        if verified.right and not verified.verification.tries[0].result.passed:
            found += 1
            assert verified.kept.result.math, (function, verified.story())
    assert found, "no function whose greedy scene is wrong and a sampled header right"


# 1/x as the fine-tuned model wrote it: its greedy scene and every sampled header say -(-1/x^2).
WRONG_1_OVER_X = {"first": {"1/x": _scene("1/x", "-(-1/x^2)")},
                  "headers": {"1/x": [_header(_scene("1/x", "-(-1/x^2)"))] * 4}}


def test_the_evaluator_never_repairs_whatever_the_setting(tmp_path, monkeypatch, no_renders):
    """It measures the model: with `generate.repair=true` its verified row for a wrong derivative is
    the model's own failing scene, no service it builds may repair, and the true f' is never swapped in."""
    made = []
    real_init = GenerationService.__init__

    def recording_init(self, settings, *args, **kwargs):
        made.append(settings)
        real_init(self, settings, *args, **kwargs)

    def never(*args, **kwargs):
        raise AssertionError("the evaluator swapped in the true derivative")

    monkeypatch.setattr(GenerationService, "__init__", recording_init)
    monkeypatch.setattr(oracle, "with_true_derivative", never)
    assert GenerationSettings.defaults().repair  # the CLI's and the page's default: on
    model = PlannedModel(**WRONG_1_OVER_X)
    results = _evaluate(tmp_path, monkeypatch, model, "1/x\n", "eval.baselines=[finetuned,verified]",
                        "generate.self_consistency.k=4", "generate.repair=true")
    assert made and not any(settings.repair for settings in made)
    rows = {r["baseline"]: r for r in results["rows"]}
    for baseline in ("finetuned", "verified"):
        assert not rows[baseline]["passed"] and rows[baseline]["math"] is False
        assert "f'(x) = -(-1/x^2)" in (tmp_path / "run" / rows[baseline]["code_path"]).read_text()


def test_a_corrected_scene_that_fails_its_own_checks_is_not_shown(monkeypatch, no_renders):
    """The repair is checked like any scene: when the corrected scene fails, the model's try is
    shown, labelled as failing, and the sentence says the correction failed too."""
    settings = GenerationSettings.defaults().changed(self_consistency={"k": 4})
    written = GenerationService(settings, PlannedModel(**WRONG_1_OVER_X)).write("1/x")
    assert written.corrected and written.result.passed and written.model_code == _scene("1/x", "-(-1/x^2)")
    real = oracle.with_true_derivative
    monkeypatch.setattr(oracle, "with_true_derivative", lambda code, function: real(code, function) + "\nbroken(")
    said = []
    written = GenerationService(settings, PlannedModel(**WRONG_1_OVER_X)).write("1/x", said.append)
    assert not written.corrected and not written.result.passed
    assert written.code == written.model_code == _scene("1/x", "-(-1/x^2)")
    assert said[-1] == written.summary
    assert written.summary.startswith("the model's derivative was wrong (it wrote -(-1/x^2)), and the corrected "
                                      "scene with f'(x) = -1/x^2 failed a check too (syntax:FAIL")
    assert written.summary.endswith("shown: the model's scene, which did not pass every check")
