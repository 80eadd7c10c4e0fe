"""The generation service (eval/service.py): one seed and temperature policy for the CLI, the
page and the evaluator; verified generation completes the sampled headers the math judge
accepts, so it is never below self-consistency; a prefix is continued, not rewritten."""

from __future__ import annotations

import ast
import re
from functools import partial
from pathlib import Path

import pytest
from conftest import compose_config

from derivative_animator import cli, evaluate, serve
from derivative_animator.data import oracle
from derivative_animator.eval import wording
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
    header = code[: math_header_length(code)]
    start = header.index("f'(x) = ")
    return code[:start] + f"f'(x) = {derivative}" + code[header.index("\n", start) :]


def _header(code: str) -> str:
    return code[: math_header_length(code)]


class PlannedModel:
    """A model whose first scene and header samples are planned per function (header row i of a
    batch: plan[function][i]); a header it goes on from is completed with the oracle's body.
    It records every call: what was sampled, at which temperature, with which seed."""

    def __init__(self, first: dict[str, str], headers: dict[str, list[str]]):
        self.first, self.headers, self.calls = first, headers, []

    def generate(
        self,
        function,
        max_new_tokens,
        temperature=0.0,
        top_p=1.0,
        seed=None,
        syntax_rollbacks=0,
        accept_header=None,
        prefix="",
    ):
        self.calls.append(("scene", function, temperature, seed, _derivative_line(prefix)))
        if prefix:
            body = _scene(function)
            return Generation(function, prefix + body[math_header_length(body) :], 0.01, 400, 40)
        return Generation(function, self.first[function], 0.01, 500, 50)

    def generate_batch(
        self, functions, max_new_tokens, temperature=0.0, top_p=1.0, seed=None, headers_only=False
    ):
        assert headers_only and len(set(functions)) == 1
        self.calls.append(("headers", functions[0], temperature, seed, len(functions)))
        return [
            Generation(f, h, 0.01, 50, 0)
            for f, h in zip(functions, self.headers[functions[0]], strict=True)
        ]


def _derivative_line(header: str) -> str:
    return next((line for line in header.splitlines() if line.startswith("f'(x)")), "")


def judged_check(
    code, function, render=None, output_dir=None, render_failing=True, sandbox=None, **unused
):
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
    cfg = compose_eval(
        f"eval.functions_file={path}",
        f"eval.model={tmp_path}",
        "eval.render.warm=false",
        "eval.workers=1",
        *overrides,
    )
    return evaluate.run_evaluation(cfg, tmp_path / "run")


# One wrong first scene; 4 headers: one repeating its wrong f', one right, one naming another f,
# one right again.
X2 = {
    "first": {"x^2": _scene("x^2", "3x")},
    "headers": {
        "x^2": [
            _header(_scene("x^2", "3x")),
            _header(_scene("x^2", "2*x")),
            _header(_scene("x^3")),
            _header(_scene("x^2")),
        ]
    },
}


def test_the_cli_the_page_and_the_evaluator_sample_by_one_policy(tmp_path, monkeypatch, no_renders):
    args = cli.build_parser().parse_args(["generate", "x^2", "--model", "checkpoint"])
    settings = cli.generation_settings(args).changed(self_consistency={"k": 4})
    page = serve.Settings(model_dir=Path("checkpoint"), output_dir=tmp_path)
    assert page.generation == cli.generation_settings(
        args
    )  # the page writes as `derivanim generate` does
    from_cli = PlannedModel(**X2)
    GenerationService(settings, from_cli).write("x^2")
    from_evaluator = PlannedModel(**X2)
    results = _evaluate(
        tmp_path,
        monkeypatch,
        from_evaluator,
        "x^2\n",
        "eval.baselines=[finetuned,self_consistency,verified]",
        "generate.self_consistency.k=4",
    )
    assert (
        from_cli.calls
        == from_evaluator.calls
        == [
            ("scene", "x^2", 0.0, 0, ""),  # greedy, the seed
            ("headers", "x^2", 1.0, 1000, 4),  # one batch, shared by the vote and verification
            ("scene", "x^2", 0.0, 1, "f'(x) = 2*x"),  # the first right header, completed
        ]
    )
    (verified,) = [r for r in results["rows"] if r["baseline"] == "verified"]
    assert verified["passed"] and verified["attempt"] == 2


def test_verified_is_never_below_self_consistency(tmp_path, monkeypatch, no_renders):
    """x^2: the wrong f' wins the vote (greedy and three samples say 3x) but one sample is right;
    sin x: most samples are right; e^x: none is. Greedy is wrong in all three."""
    wrong, right = _header(_scene("x^2", "3x")), _header(_scene("x^2"))
    model = PlannedModel(
        first={
            "x^2": _scene("x^2", "3x"),
            "sin(x)": _scene("sin x", "-cos(x)"),
            "e^x": _scene("e^x", "x e^(x - 1)"),
        },
        headers={
            "x^2": [wrong, wrong, right, wrong],
            "sin(x)": [_header(_scene("sin x"))] * 3 + [_header(_scene("sin x", "-cos(x)"))],
            "e^x": [_header(_scene("e^x", "x e^(x - 1)"))] * 4,
        },
    )
    results = _evaluate(
        tmp_path,
        monkeypatch,
        model,
        "x^2\nsin x\ne^x\n",
        "eval.baselines=[finetuned,self_consistency,verified]",
        "generate.self_consistency.k=4",
    )
    passed = {(r["baseline"], r["function"]): r["passed"] for r in results["rows"]}
    for function in ("x^2", "sin(x)", "e^x"):
        assert (
            passed[("verified", function)]
            >= passed[("self_consistency", function)]
            >= passed[("finetuned", function)]
        )
    assert (passed[("self_consistency", "x^2")], passed[("verified", "x^2")]) == (False, True)
    assert passed[("verified", "sin(x)")] and not passed[("verified", "e^x")]
    assert [c[0] for c in model.calls].count("headers") == 3  # each function's batch sampled once


def test_a_generation_goes_on_from_its_prefix_as_it_would_have_written_it(
    micro_checkpoint, scripted_lm
):
    from derivative_animator.model.generate import SceneGenerator

    generator = SceneGenerator.load(micro_checkpoint)
    scene = _scene("x^3 - 2x")
    tokens = generator.tokenizer(scene, add_special_tokens=False)["input_ids"]
    generator.model = scripted_lm(
        [generator.prompt_ids("x^3 - 2x") + tokens],
        len(generator.tokenizer),
        generator.tokenizer.eos_token_id,
    )
    whole = generator.generate("x^3 - 2x", 4000)
    prefix = generator.tokenizer.decode(tokens[: len(tokens) // 3])
    continued = generator.generate("x^3 - 2x", 4000, prefix=prefix)
    assert whole.code == scene and continued.code == scene and continued.stop == "eos"
    assert continued.new_tokens == whole.new_tokens - len(tokens) // 3
    short = generator.generate("x^3 - 2x", len(tokens) // 3 + 10, prefix=prefix)
    assert (
        short.new_tokens == 10 and short.stop == "max_new_tokens"
    )  # the prefix counts against the budget


def test_the_service_loads_its_generator_with_the_decoding_settings(micro_checkpoint):
    defaults = GenerationSettings.defaults()
    for copy_function, shared_code in ((True, True), (False, False)):
        settings = defaults.changed(
            copy_function=copy_function, shared_code=shared_code, choose_interval=shared_code
        )
        generator = GenerationService(settings).load_model(micro_checkpoint)
        assert (generator.copy_function, generator.shared_code) == (copy_function, shared_code)
        assert generator.choose_interval == shared_code
        scene = GenerationService(settings, generator).scene("x^2")
        assert scene.code.startswith('"""\nf(x) = x^2\n') == copy_function


def test_an_untrained_model_is_verified_end_to_end_and_keeps_its_first_scene(micro_checkpoint):
    from derivative_animator.model.generate import SceneGenerator

    settings = GenerationSettings.defaults().changed(max_new_tokens=40, self_consistency={"k": 2})
    service = GenerationService(settings, SceneGenerator.load(micro_checkpoint))
    verified = service.verify(
        "x^2",
        service.scene("x^2"),
        lambda attempt, generation: judged_check(generation.code, "x^2"),
    )
    assert (verified.sampled, verified.right, verified.kept.attempt) == (
        2,
        0,
        1,
    )  # no header is right
    assert wording.story(verified) == (
        "greedy's scene did not parse; 0 of 2 sampled derivatives were right"
    )


def weighted_scripts_lm(scripts: list[list[int]], weights: list[float], vocab_size: int, eos: int):
    """A causal LM (a real transformers model class, so `generate_batch`'s HF sampling runs as it
    does for a checkpoint) whose next-token distribution after any prefix of its scripts is the
    scripts' weights, split where they part: greedy follows the heaviest script, sampling each in
    proportion; EOS off every script. Its KV cache holds the token ids, as ScriptedLM's does."""
    import math

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    from transformers.modeling_outputs import CausalLMOutputWithPast

    class WeightedScripts(LlamaForCausalLM):
        def forward(
            self, input_ids=None, attention_mask=None, cache=None, use_cache=True, **unused
        ):
            batch, width = input_ids.shape
            fed = input_ids.float().view(batch, 1, width, 1)
            seen = cache.update(fed, fed, 0)[0][:, 0, :, 0].long().tolist()
            logits = torch.full((batch, width, vocab_size), -1e4)
            for row, sequence in enumerate(seen):
                for i in range(width):
                    n = len(sequence) - width + i + 1
                    following: dict[int, float] = {}
                    for script, weight in zip(scripts, weights, strict=True):
                        if n < len(script) and script[:n] == sequence[:n]:
                            following[script[n]] = following.get(script[n], 0.0) + weight
                    for token, weight in (following or {eos: 1.0}).items():
                        logits[row, i, token] = math.log(weight)
            return CausalLMOutputWithPast(logits=logits, past_key_values=cache)

    return WeightedScripts(
        LlamaConfig(
            vocab_size=vocab_size,
            hidden_size=8,
            intermediate_size=8,
            num_hidden_layers=1,
            num_attention_heads=1,
            num_key_value_heads=1,
            eos_token_id=eos,
            max_position_embeddings=8192,
        )
    ).eval()


def test_a_real_generator_whose_greedy_derivative_is_wrong_is_verified_to_a_right_sampled_one(
    micro_checkpoint,
):
    """The real SceneGenerator (its prompt, greedy decoding, the batched header samples at the
    settings' temperature, top-p and seed, the prefix completion) over a model that writes x^2's
    scene with f'(x) = 3x 60% of the time and 2x 40%: greedy is wrong, some of the 8 sampled
    headers are right, and verification keeps the scene completed from the first of them."""
    from derivative_animator.data.scenes import DOCSTRING_END, HEADER_CODE, SHARED_CODE
    from derivative_animator.model.generate import SceneGenerator

    generator = SceneGenerator.load(micro_checkpoint)
    right, wrong = _scene("x^2"), _scene("x^2", "3x")

    def script(code):  # tokenized in the pieces decoding forces; a sampled header ends at one
        docstring = code.index(DOCSTRING_END) + len(DOCSTRING_END)
        header, shared = math_header_length(code), math_header_length(code) + len(SHARED_CODE)
        ends = (docstring, docstring + len(HEADER_CODE), header, shared, len(code))
        return generator.prompt_ids("x^2") + [
            token
            for start, end in zip((0, *ends[:-1]), ends, strict=True)
            for token in generator.tokenizer(code[start:end], add_special_tokens=False)["input_ids"]
        ]

    generator.model = weighted_scripts_lm(
        [script(wrong), script(right)],
        [0.6, 0.4],
        len(generator.tokenizer),
        generator.tokenizer.eos_token_id,
    )
    settings = GenerationSettings.defaults()
    assert (
        settings.attempts,
        settings.self_consistency.k,
        settings.self_consistency.temperature,
    ) == (3, 8, 1.0)
    service = GenerationService(settings, generator)
    first = service.scene("x^2")
    assert first.code == wrong and first.stop == "eos"  # greedy follows the heavier script
    verified = service.verify(
        "x^2", first, lambda attempt, generation: judged_check(generation.code, "x^2")
    )
    headers, _ = service.header_samples("x^2")
    said = {_derivative_line(header) for header in headers}
    assert said == {"f'(x) = 3x", "f'(x) = 2x"}  # sampled: both derivatives, as the weights say
    assert 0 < verified.right < verified.sampled == 8
    assert not verified.verification.tries[0].result.math
    assert (
        verified.kept.attempt == 2
        and verified.kept.result.passed
        and verified.kept.generation.code == right
    )
    assert wording.story(verified).startswith(
        f"greedy's scene had a wrong derivative; {verified.right} of 8 sampled"
    )


# 1/x as the fine-tuned model wrote it: its greedy scene and every sampled header say -(-1/x^2).
WRONG_1_OVER_X = {
    "first": {"1/x": _scene("1/x", "-(-1/x^2)")},
    "headers": {"1/x": [_header(_scene("1/x", "-(-1/x^2)"))] * 4},
}


def test_the_evaluator_never_repairs_whatever_the_setting(tmp_path, monkeypatch, no_renders):
    """It measures the model: with `generate.repair=true` its verified row for a wrong derivative
    is the model's own failing scene, no service it builds may repair, and the true f' is never
    swapped in."""
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
    results = _evaluate(
        tmp_path,
        monkeypatch,
        model,
        "1/x\n",
        "eval.baselines=[finetuned,verified]",
        "generate.self_consistency.k=4",
        "generate.repair=true",
    )
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
    assert (
        written.corrected
        and written.result.passed
        and written.model_code == _scene("1/x", "-(-1/x^2)")
    )
    real = oracle.with_true_derivative
    monkeypatch.setattr(
        oracle, "with_true_derivative", lambda code, function: real(code, function) + "\nbroken("
    )
    said = []
    written = GenerationService(settings, PlannedModel(**WRONG_1_OVER_X)).write("1/x", said.append)
    assert not written.corrected and not written.result.passed
    assert written.code == written.model_code == _scene("1/x", "-(-1/x^2)")
    assert said[-1] == written.summary
    assert written.summary.startswith(
        "the model's derivative was wrong (it wrote -(-1/x^2)), and the corrected "
        "scene with f'(x) = -1/x^2 failed a check too (the code does not parse"
    )
    assert written.summary.endswith("shown: the model's scene, which did not pass every check")


def test_what_write_does_is_told_in_words_with_each_steps_time(no_renders):
    """The page's progress: readable steps (no check marks), each with its time, and what it is
    doing now; a try that fails names why, the header batch says what it gave."""
    settings = GenerationSettings.defaults().changed(self_consistency={"k": 4})
    doing, done, said = [], [], []

    written = GenerationService(settings, PlannedModel(**X2)).write(
        "x^2", said.append, steps=wording.Steps(doing.append, done.append)
    )
    assert written.result.passed and not written.corrected
    assert doing == [
        "try 1 of 3: writing the scene",
        "try 1 of 3: checking the scene (a quick render in the sandbox)",
        "sampling 4 other derivatives",
        "try 2 of 3: writing the scene from a right sampled derivative, f'(x) = 2*x",
        "try 2 of 3: checking the scene (a quick render in the sandbox)",
    ]
    assert len(done) == 3
    assert re.fullmatch(
        r"try 1 of 3: the derivative is wrong \(it wrote 3x\); written in \d+\.\d s, "
        r"checked in \d+\.\d s",
        done[0],
    ), done[0]
    assert re.fullmatch(
        r"sampled 4 other derivatives in \d+\.\d s: 2 are right; "
        r"writing scenes from up to 2 of them, until one passes",
        done[1],
    ), done[1]
    assert done[2].startswith("try 2 of 3: passed every check; written in ")
    assert not any(
        mark in step for step in doing + done for mark in ("syntax:", "math:FAIL", "attempt")
    )
    assert said[0].startswith("attempt 1: syntax:ok")  # the CLI's lines are as they were
    # No try passes: the repair's steps say what was corrected and how it went.
    doing, done = [], []
    written = GenerationService(settings, PlannedModel(**WRONG_1_OVER_X)).write(
        "1/x", steps=wording.Steps(doing.append, done.append)
    )
    assert written.corrected
    assert done[0].startswith(
        "try 1 of 3: the derivative is wrong (it wrote -(-1/x^2)); written in"
    )
    assert done[1].startswith("sampled 4 other derivatives in ") and done[1].endswith(
        ": 0 are right; no other try"
    )
    assert done[2] == "no try passed every check; keeping try 1"
    assert doing[-1] == "correcting try 1: its scene with the true f'(x) = -1/x^2, checked again"
    assert re.fullmatch(
        r"the corrected scene of try 1 \(f'\(x\) = -1/x\^2\): passed every check; "
        r"checked in \d+\.\d s",
        done[3],
    ), done[3]


@pytest.mark.parametrize(
    "first, headers, said",
    [
        # greedy's and 6 sampled agree, one sample is no header at all, one names another function
        (
            _scene("x^2"),
            [_header(_scene("x^2"))] * 6 + ["import manim\n", _header(_scene("x^3"))],
            "the greedy header wins: 7 of 9 headers agree (greedy's and 8 sampled); "
            "1 had no readable derivative, 1 named another f(x)",
        ),
        # 2 agree on a wrong f' against greedy's one right: the vote says who wrote what
        (
            _scene("x^2"),
            [_header(_scene("x^2", "3x"))] * 2 + ["not a header"] * 2,
            "sampled header 1 wins: 2 of 5 headers agree (greedy's and 4 sampled); "
            "1 wrote another derivative, 2 had no readable derivative",
        ),
        (
            "broken(",
            ["", "nonsense("],
            "none of 3 headers could vote (greedy's and 2 sampled); 3 had no readable derivative",
        ),
    ],
)
def test_self_consistency_says_what_became_of_every_sampled_header(
    no_renders, first, headers, said
):
    settings = GenerationSettings.defaults().changed(
        self_consistency={"k": len(headers), "vote": True}
    )
    lines = []
    GenerationService(settings, PlannedModel({"x^2": first}, {"x^2": headers})).write(
        "x^2", lines.append
    )
    (vote,) = [line for line in lines if line.startswith("self-consistency: ")]
    assert re.fullmatch(
        re.escape(f"self-consistency: {said}") + r" \(\d+\.\d s\)(; keeping the greedy scene)?",
        vote,
    ), vote


def test_every_try_is_written_in_the_style_asked_for(micro_checkpoint, scripted_lm):
    """A model whose own choice is the tangent scene writes each asked style, first scene and
    completions of sampled headers alike; without a style it keeps its own choice."""
    from derivative_animator.data.scenes import STYLES
    from derivative_animator.model.generate import SceneGenerator

    generator = SceneGenerator.load(micro_checkpoint)
    function = "x^3 - 2x"
    scenes = {style: oracle.template_scene(function, style) for style in STYLES}
    prompt = generator.prompt_ids(function)
    generator.model = scripted_lm(
        [
            prompt + generator.tokenizer(scenes[s], add_special_tokens=False)["input_ids"]
            for s in STYLES
        ],
        len(generator.tokenizer),
        generator.tokenizer.eos_token_id,
    )
    settings = GenerationSettings.defaults().changed(max_new_tokens=10_000)
    service = GenerationService(settings, generator)
    header = scenes["tangent"][: math_header_length(scenes["tangent"])]
    assert service.scene(function).code == scenes["tangent"]
    for style in STYLES:
        assert service.scene(function, style=style).code == scenes[style]
        assert service.complete(function, header, 1, style).code == scenes[style]


def test_a_users_video_renders_at_the_settings_quality_and_checks_stay_quick(monkeypatch):
    from derivative_animator.render import checks

    asked = []
    monkeypatch.setattr(checks, "check_code", lambda *a, render, **k: asked.append(render))
    monkeypatch.setattr(GenerationService, "start_sandbox", lambda self: None)
    service = GenerationService(GenerationSettings.defaults().changed(video_quality="h"))
    service.check("scene", "x^2", render=True)
    service.check("scene", "x^2")
    assert [(o.quality, o.quick, o.save_frame) for o in asked] == [
        ("h", False, True),
        ("l", True, False),
    ]
