"""The evaluator: the oracle scores 100%, reports are complete, pass@k is the unbiased estimator."""

from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import asdict
from functools import partial
from pathlib import Path

import pytest
from conftest import compose_config

from derivative_animator import evaluate, paths, tracking
from derivative_animator.data import benchmarks
from derivative_animator.eval import engine, metrics, report
from derivative_animator.eval.engine import Row
from derivative_animator.eval.metrics import summarize
from derivative_animator.eval.settings import EvaluationSettings
from derivative_animator.math.header import math_header_length


def evaluate_known_model(tmp_path, monkeypatch, functions: str, model, *overrides) -> dict:
    """run_evaluation on a functions file with `model` standing in for every loaded checkpoint."""
    from derivative_animator.model import generate

    path = tmp_path / "functions.txt"
    path.write_text(functions)
    monkeypatch.setattr(generate.SceneGenerator, "load", classmethod(lambda cls, *a, **k: model))
    cfg = compose_eval(
        f"eval.functions_file={path}", f"eval.model={tmp_path}", "generate.seed=0", *overrides
    )
    return evaluate.run_evaluation(cfg, tmp_path)


compose_eval = partial(compose_config, "eval")


def test_pass_at_k_matches_the_definition():
    assert metrics.pass_at_k(5, 0, 1) == 0.0
    assert metrics.pass_at_k(5, 5, 1) == 1.0
    assert math.isclose(metrics.pass_at_k(10, 3, 1), 0.3)
    # probability that at least one of 2 draws without replacement from 4 (1 good) is good
    assert math.isclose(metrics.pass_at_k(4, 1, 2), 0.5)


def test_a_functions_file_line_that_does_not_parse_becomes_a_sample_with_its_problem(tmp_path):
    functions = tmp_path / "functions.txt"
    functions.write_text("x^2\n# a comment\n\nsin(x\n")
    first, bad = evaluate.load_samples(compose_eval(f"eval.functions_file={functions}"))
    assert first.problem is None and bad.function == "sin(x"
    assert bad.problem.startswith("functions.txt:4: ")


def test_functions_file_is_read_as_people_type(tmp_path):
    functions = tmp_path / "functions.txt"
    functions.write_text("x^2   # the classic\nsin x cos x\ne^{-x^2}\n")
    samples = evaluate.load_samples(compose_eval(f"eval.functions_file={functions}"))
    assert [(s.function, s.level) for s in samples] == [
        ("x^2", 1),
        ("sin(x) cos(x)", 3),
        ("e^(-x^2)", 4),
    ]


@pytest.mark.needs_render
def test_template_oracle_scores_100_percent_and_reports_are_written(tmp_path):
    functions = tmp_path / "functions.txt"
    functions.write_text("3x^2 - x\nln x\nx e^x\nsin(x^2)\n")
    cfg = compose_eval(f"eval.functions_file={functions}", "eval.baselines=[template]")
    results = evaluate.run_evaluation(cfg, tmp_path)
    summary = results["summary"]["template"]
    for key in ("syntax", "structure", "executes", "math", "passed"):
        assert summary["all"][key] == 100.0, (key, results["rows"])
    assert set(summary) == {"all", "level1", "level2", "level3", "level4"}
    report_dir = report.write_reports(results, tmp_path)
    assert (
        json.loads((report_dir / "results.json").read_text())["summary"]["template"]["all"]["n"]
        == 4
    )
    assert "Template oracle" in (report_dir / "results.md").read_text()
    assert r"\begin{tabular}" in (report_dir / "results.tex").read_text()
    assert (report_dir / "results.csv").read_text().count("\n") == 5
    gallery = (report_dir / "gallery.html").read_text()
    assert gallery.count('class="card pass"') == 4 and gallery.count("<video") == 4
    if shutil.which("chromium") or os.environ.get("CI"):
        videos_load_in_chromium(report_dir / "gallery.html", expected=4)


def videos_load_in_chromium(gallery: Path, expected: int) -> None:
    """Open the gallery in headless Chromium: every video's data loads, the level filter works."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=shutil.which("chromium"), args=["--no-sandbox"]
        )
        page = browser.new_page()
        page.goto(gallery.as_uri())
        page.wait_for_function(
            "[...document.querySelectorAll('video')].filter(v => v.readyState >= 1).length "
            f"== {expected}",
            timeout=30_000,
        )
        durations = page.eval_on_selector_all("video", "vs => vs.map(v => v.duration)")
        assert len(durations) == expected and all(d > 0.5 for d in durations)
        page.select_option("#level", "1")
        assert page.eval_on_selector_all(
            ".function:not([hidden])", "s => s.map(e => e.dataset.level)"
        ) == ["1"]
        page.select_option("#level", "all")
        page.select_option("#check", "math")
        assert page.text_content("#count") == "0"  # the oracle fails nothing
        browser.close()


def test_generation_threads_leave_the_render_workers_their_cores(monkeypatch):
    def threads(*overrides: str) -> int:
        return EvaluationSettings.from_config(
            compose_eval("eval.workers=2", *overrides).eval
        ).torch_threads()

    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    assert threads() == 1  # never 0, never oversubscribed
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    assert threads() == 14
    assert threads("eval.generation_threads=3") == 3
    with pytest.raises(ValueError, match="generation_threads"):
        threads("eval.generation_threads=0")
    assert compose_eval().eval.generation_threads == "auto"


def test_a_scene_identical_to_one_already_checked_shares_its_render(tmp_path, monkeypatch):
    from derivative_animator.model.generate import Generation
    from derivative_animator.render import checks

    calls = []

    def fake_check(code, function, render, output_dir, render_failing=True, sandbox=None):
        calls.append(code)
        return checks.CheckResult(
            syntax=True, structure=True, executes=True, math=True, scene="S", render_seconds=2.5
        )

    monkeypatch.setattr(checks, "check_code", fake_check)
    sample = engine.Sample("s1", "x^2", 1)
    generation = Generation("x^2", "code A", seconds=1.0, new_tokens=10, forward_passes=3)
    settings = EvaluationSettings.from_config(
        compose_eval("eval.workers=1", "eval.render.warm=false").eval
    )
    with engine.Evaluator(settings, tmp_path) as evaluator:
        rows = [
            evaluator.submit("template", sample, "code A", 1, None),
            evaluator.submit("finetuned", sample, "code A", 1, generation),
            evaluator.submit("finetuned", sample, "code B", 2, generation),
            evaluator.submit("verified", sample, "code A", 3, generation),
        ]
        rows = [future.result(timeout=10) for future in rows]
    assert calls == ["code A", "code B"]  # one render per distinct scene
    shared = rows[1]
    assert (shared.baseline, shared.attempt, shared.passed, shared.render_s) == (
        "finetuned",
        1,
        True,
        2.5,
    )
    assert (
        shared.code_path == "code/finetuned/s1.py"
        and (tmp_path / shared.code_path).read_text() == "code A"
    )
    assert shared.generation_s == 1.0 and shared.new_tokens == 10 and rows[0].generation_s == 0.0
    assert (
        shared.extra["render_shared_with"] == "code/template/s1.py"
        and "render_shared_with" not in rows[2].extra
    )
    assert rows[3].attempt == 3 and rows[3].code_path == "code/verified/s1-a3.py"


def _held_queue():
    """A one-worker RenderQueue kept busy until the returned event is set."""
    import threading

    release = threading.Event()
    render_queue = engine.RenderQueue(1)
    render_queue.submit(release.wait, engine.RenderQueue.URGENT)
    return render_queue, release


def test_render_queue_runs_urgent_jobs_before_spare_ones_and_a_hurried_job_once():
    render_queue, release = _held_queue()
    ran = []
    job = lambda name: lambda: ran.append(name) or name  # noqa: E731
    spare_a = render_queue.submit(job("spare a"), engine.RenderQueue.SPARE)
    spare_b = render_queue.submit(job("spare b"), engine.RenderQueue.SPARE)
    spare_c = render_queue.submit(job("spare c"), engine.RenderQueue.SPARE)
    render_queue.submit(job("urgent"), engine.RenderQueue.URGENT)
    render_queue.hurry(spare_c)
    release.set()
    render_queue.shutdown()
    assert ran == ["urgent", "spare c", "spare a", "spare b"]
    assert [j.future.result() for j in (spare_a, spare_b, spare_c)] == [
        "spare a",
        "spare b",
        "spare c",
    ]


def test_render_queue_cancels_what_has_not_started_when_evaluation_fails():
    import threading
    import time

    render_queue, release = _held_queue()
    pending = render_queue.submit(lambda: "rendered", engine.RenderQueue.SPARE)
    stopping = threading.Thread(target=render_queue.shutdown, kwargs={"cancel_pending": True})
    stopping.start()
    while not render_queue._cancelled:  # shutdown has begun while the worker is still busy
        time.sleep(0.01)
    release.set()
    stopping.join(timeout=10)
    assert pending.future.cancelled() and not stopping.is_alive()


def test_an_evaluation_is_a_child_run_of_the_checkpoints_training_run_with_its_data_rows_and_reports(  # noqa: E501
    tmp_path,
):
    import mlflow

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = mlflow.MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment(
        "eval-test", artifact_location=str(tmp_path / "artifacts")
    )
    run_id = client.create_run(experiment).info.run_id
    model = tmp_path / "merged"
    model.mkdir()
    (model / "run_info.json").write_text(json.dumps({"mlflow_run_id": run_id, "tracking_uri": uri}))
    run_dir = tmp_path / "eval-run"
    (run_dir / "report").mkdir(parents=True)
    (run_dir / "report" / "results.md").write_text("| table |")
    results = {
        "model": str(model),
        "timings": {"total_s": 12.5},
        "summary": {
            "finetuned": {
                "all": {"math": 54.4, "pass@1": 50.0, "n": 57},
                "L1": {"math": 66.7, "note": "text is skipped"},
            }
        },
    }
    results["rows"] = [
        {
            "sample_id": "L1-a",
            "function": "x^2",
            "level": 1,
            "baseline": "finetuned",
            "math": True,
            "extra": {"stop": "eos"},
        },
        {
            "sample_id": "L1-a",
            "function": "x^2",
            "level": 1,
            "baseline": "template",
            "math": True,
            "extra": {},
        },
    ]
    results["functions_source"] = str(tmp_path / "functions.txt")
    evaluation_id = tracking.log_evaluation(results, run_dir)
    expected = {
        "eval/time/total_s": 12.5,
        "eval/finetuned/math": 54.4,
        "eval/finetuned/pass_at_1": 50.0,
        "eval/finetuned/n": 57.0,
        "eval/finetuned/math/L1": 66.7,
        "functions/math": 54.4,
    }
    assert (
        client.get_run(run_id).data.metrics == expected
    )  # the training run, where runs are compared
    evaluation = client.get_run(evaluation_id)  # and an evaluation run of its own, its child
    assert evaluation_id != run_id and evaluation.data.tags["mlflow.parentRunId"] == run_id
    assert evaluation.data.metrics == expected and evaluation.info.status == "FINISHED"
    (dataset_input,) = evaluation.inputs.dataset_inputs
    assert (
        dataset_input.dataset.name == "eval-functions"
        and dataset_input.tags[0].value == "evaluation"
    )
    assert {a.path for a in client.list_artifacts(evaluation_id)} == {
        "report",
        "rows.json",
        "headline.json",
    }
    assert [a.path for a in client.list_artifacts(evaluation_id, "report")] == ["report/results.md"]
    table = json.loads(
        Path(client.download_artifacts(evaluation_id, "rows.json", str(tmp_path))).read_text()
    )
    assert len(table["data"]) == 2


def test_a_benchmark_evaluation_reports_each_kind_and_logs_under_the_benchmarks_name(tmp_path):
    import mlflow

    samples = evaluate.benchmark_samples("textbook")
    assert (
        len(samples) == len(benchmarks.items("textbook")) - 2
    )  # the two the oracle cannot animate: left out
    by_id = {s.id: s for s in samples}
    assert all(s.kinds and s.problem is None for s in samples)
    rows = [
        Row(
            "finetuned",
            s.id,
            s.function,
            s.level,
            1,
            True,
            True,
            True,
            i % 2 == 0,
            i % 2 == 0,
            None,
            0.1,
            10,
            100.0,
            0.5,
            "",
        )
        for i, s in enumerate(samples)
    ]
    summary = summarize(rows, 1, {s.id: s.kinds for s in samples})
    product = [r for r in rows if "product" in by_id[r.sample_id].kinds]
    assert summary["finetuned"]["kind/product"]["n"] == len(product)
    assert summary["finetuned"]["kind/product"]["math"] == round(
        100 * sum(r.math for r in product) / len(product), 1
    )
    table = report.kind_table(summary)
    assert (
        "| product rule |" in table
        and "| sec, csc, cot |" in table
        and "kind/" not in report.markdown_table(summary)
    )
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = mlflow.MlflowClient(tracking_uri=uri)
    run_id = client.create_run(
        client.create_experiment("bench", artifact_location=str(tmp_path / "a"))
    ).info.run_id
    model = tmp_path / "merged"
    model.mkdir()
    (model / "run_info.json").write_text(json.dumps({"mlflow_run_id": run_id, "tracking_uri": uri}))
    (tmp_path / "run" / "report").mkdir(parents=True)
    results = {
        "model": str(model),
        "timings": {"total_s": 1.0},
        "benchmark": "textbook",
        "summary": summary,
        "rows": [dict(asdict(r)) for r in rows],
        "functions_source": str(benchmarks.BENCHMARK_DIR / "textbook.tsv"),
    }
    evaluation = client.get_run(tracking.log_evaluation(results, tmp_path / "run"))
    metrics = client.get_run(run_id).data.metrics
    assert metrics["eval/textbook/finetuned/math"] == summary["finetuned"]["all"]["math"]
    assert "eval/finetuned/math" not in metrics  # the test split's headline is not overwritten
    assert (
        metrics["eval/textbook/finetuned/math/kind/product"]
        == summary["finetuned"]["kind/product"]["math"]
    )
    assert evaluation.inputs.dataset_inputs[0].dataset.name == "benchmark-textbook"
    assert evaluation.info.run_name.startswith("eval-textbook-")


def test_the_evaluation_run_is_named_for_what_ran_and_lasts_as_long_as_the_evaluation(
    tmp_path, monkeypatch
):
    """Open before the first function, closed after the reports: its duration is the evaluation's
    (a stubbed evaluation of 1.5 s), not the few milliseconds of logging afterwards."""
    import re
    import time

    import mlflow

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = mlflow.MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment(
        "durations", artifact_location=str(tmp_path / "artifacts")
    )
    run_id = client.create_run(experiment, run_name="lora-r64-micro-1203-1128").info.run_id
    model = tmp_path / "merged"
    model.mkdir()
    (model / "run_info.json").write_text(json.dumps({"mlflow_run_id": run_id, "tracking_uri": uri}))
    functions = tmp_path / "my_functions.txt"
    functions.write_text("x^2\n")

    def slow_evaluation(cfg, run_dir, model_dir=None):
        assert model_dir == model
        time.sleep(1.5)
        rows = [
            Row(
                "finetuned",
                "line0001",
                "x^2",
                1,
                1,
                True,
                True,
                True,
                True,
                False,
                None,
                0.1,
                10,
                100.0,
                0.5,
                "",
            )
        ]
        return {
            "model": str(model_dir),
            "samples": 1,
            "functions_source": str(functions),
            "benchmark": None,
            "notes": [],
            "rows": [asdict(r) for r in rows],
            "timings": {"total_s": 1.5},
            "summary": summarize(rows, 1),
        }

    monkeypatch.setattr(evaluate, "run_evaluation", slow_evaluation)
    cfg = compose_eval(
        f"eval.functions_file={functions}", f"eval.model={model}", "eval.baselines=[finetuned]"
    )
    assert evaluate.evaluate_and_report(cfg, tmp_path / "run") == 0
    (evaluation,) = client.search_runs([experiment], filter_string="tags.stage = 'evaluation'")
    assert re.fullmatch(
        r"eval-my_functions-lora-r64-micro-1203-1128-\d{4}-\d{4}", evaluation.info.run_name
    )
    assert evaluation.info.status == "FINISHED"
    assert evaluation.info.end_time - evaluation.info.start_time >= 1500
    assert evaluation.data.metrics["my_functions/math"] == 100.0  # the headline, on both runs
    assert client.get_run(run_id).data.metrics["my_functions/passed"] == 0.0


def test_an_evaluation_that_fails_leaves_a_failed_run(tmp_path, monkeypatch):
    import mlflow

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = mlflow.MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment("failures", artifact_location=str(tmp_path / "artifacts"))
    run_id = client.create_run(experiment, run_name="lora-r8-micro-1203-1128").info.run_id
    model = tmp_path / "checkpoint" / "merged"
    model.mkdir(parents=True)
    (model / "run_info.json").write_text(json.dumps({"mlflow_run_id": run_id, "tracking_uri": uri}))

    def broken(cfg, run_dir, model_dir=None):
        raise RuntimeError("the render pool died")

    monkeypatch.setattr(evaluate, "run_evaluation", broken)
    with pytest.raises(RuntimeError):
        evaluate.evaluate_and_report(
            compose_eval(f"eval.model={model}", "eval.baselines=[finetuned]"), tmp_path
        )
    (evaluation,) = client.search_runs([experiment], filter_string="tags.stage = 'evaluation'")
    assert evaluation.info.status == "FAILED" and evaluation.info.run_name.startswith(
        "eval-test-lora-r8-micro-"
    )


class _KnownTries:
    """A model whose every try is known: by seed, the oracle's scene ("right"), the same scene
    with a wrong derivative ("wrong"), or a wrong header that verification rejects."""

    def __init__(self, plan: dict[int, str]):
        self.plan = plan

    def generate(
        self,
        function,
        max_new_tokens=1600,
        temperature=0.0,
        top_p=1.0,
        seed=None,
        syntax_rollbacks=0,
        accept_header=None,
        prefix="",
        style=None,
    ):
        from derivative_animator.data import oracle
        from derivative_animator.model.decoding import HEADER_REJECTED
        from derivative_animator.model.generate import Generation

        code = oracle.template_scene(function, style or "tangent")
        if prefix:  # a sampled header, completed: the oracle's body under it
            return Generation(function, prefix + code[math_header_length(code) :], 0.01, 450, 45)
        if self.plan[seed] != "right":
            code = code.replace("f'(x) = ", "f'(x) = 7 + ", 1)
        if self.plan[seed] == "rejected header":
            header = code[: math_header_length(code)]
            assert accept_header is not None and not accept_header(header)
            return Generation(function, header, 0.01, 50, 5, stop=HEADER_REJECTED)
        return Generation(function, code, 0.01, 500, 50)


@pytest.mark.needs_render
def test_verified_and_pass_at_k_rows_of_a_model_whose_tries_are_known(tmp_path, monkeypatch):
    # Samples k = 0, 1, 2 use seeds 0, 1, 2; verification's header batch row i uses seed 1000 + i.
    plan = {0: "wrong", 1: "right", 2: "wrong", 1000: "wrong", 1001: "right", 1002: "right"}
    results = evaluate_known_model(
        tmp_path,
        monkeypatch,
        "x^2\nsin x\n",
        _KnownHeaders(plan),
        "eval.baselines=[finetuned,verified]",
        "eval.samples_per_function=3",
        "generate.attempts=3",
        "generate.self_consistency.k=3",
    )
    finetuned, verified = (
        results["summary"]["finetuned"]["all"],
        results["summary"]["verified"]["all"],
    )
    assert finetuned["math"] == 0.0 and finetuned["passed"] == 0.0  # raw is the first, greedy try
    assert finetuned["pass@1"] == 33.3 and finetuned["pass@3"] == 100.0  # 1 of 3 tries passes
    assert verified["passed"] == 100.0 and verified["attempts_mean"] == 2.0
    rows = [r for r in results["rows"] if r["baseline"] == "verified"]
    assert [r["attempt"] for r in rows] == [2, 2] and all(r["attempts_tried"] == 2 for r in rows)
    # Two headers right, the same text: completed once.
    assert all(r["extra"]["headers"] == {"sampled": 3, "right": 2, "completed": 1} for r in rows)


@pytest.mark.needs_render
def test_an_evaluation_reports_every_line_of_a_file_with_bad_lines_and_exits_non_zero(tmp_path):
    """A malformed line and a function the oracle cannot animate are rows with their errors;
    the rest is evaluated; the exit code says some rows failed; no traceback."""
    import subprocess
    import sys

    functions = tmp_path / "functions.txt"
    functions.write_text("x^2\nsqrt(x - 1000)\nsin(x\nln x\n")
    run_dir = tmp_path / "run"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "derivative_animator.evaluate",
            f"eval.functions_file={functions}",
            "eval.baselines=[template]",
            "eval.log_to_mlflow=false",
            f"hydra.run.dir={run_dir}",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=paths.PROJECT_ROOT,
    )
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr[-2000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "2 of 4 rows could not be evaluated" in errors[0]
    rows = {
        r["function"]: r
        for r in json.loads((run_dir / "report" / "results.json").read_text())["rows"]
    }
    assert rows["x^2"]["passed"] and rows["ln(x)"]["passed"]
    assert (
        "cannot animate" in rows["sqrt(x - 1000)"]["error"]
        and rows["sqrt(x - 1000)"]["extra"]["failed"]
    )
    assert (
        rows["sin(x"]["error"].startswith("functions.txt:3: ") and rows["sin(x"]["extra"]["failed"]
    )
    assert (run_dir / "report" / "gallery.html").read_text().count('class="card') == 4


class _FailsOn(_KnownTries):
    """Known tries, but generation itself fails for one function."""

    def generate(self, function, *args, **kwargs):
        if function == "sin(x)":
            raise RuntimeError("the model ran out of memory")
        return super().generate(function, *args, **kwargs)


@pytest.mark.needs_render
def test_a_generation_that_fails_is_its_own_row_and_the_rest_is_evaluated(tmp_path, monkeypatch):
    results = evaluate_known_model(
        tmp_path,
        monkeypatch,
        "x^2\nsin x\n",
        _FailsOn({0: "right"}),
        "eval.baselines=[finetuned,verified]",
    )
    rows = {(r["baseline"], r["function"]): r for r in results["rows"]}
    assert rows[("finetuned", "x^2")]["passed"] and rows[("verified", "x^2")]["passed"]
    failed = rows[("finetuned", "sin(x)")]
    assert (
        failed["extra"]["failed"]
        and "generation failed: RuntimeError: the model ran out of memory" in failed["error"]
    )
    assert rows[("verified", "sin(x)")]["extra"]["failed"]


class _KnownHeaders(_KnownTries):
    """Known tries, and header samples in one batch that stop at the header, as SceneGenerator's
    do."""

    def generate_batch(
        self,
        functions,
        max_new_tokens=1600,
        temperature=0.0,
        top_p=1.0,
        seed=None,
        headers_only=False,
    ):
        """Row i is the try of seed + i, cut at its header (a vote needs the header only)."""
        from derivative_animator.model.generate import Generation

        assert headers_only
        codes = [
            self.generate(f, max_new_tokens, temperature, top_p, seed + i).code
            for i, f in enumerate(functions)
        ]
        return [
            Generation(f, c[: math_header_length(c)], 0.01, 50, 0)
            for f, c in zip(functions, codes, strict=True)
        ]


@pytest.mark.needs_render
def test_self_consistency_puts_the_header_most_samples_agree_on_over_a_wrong_greedy_scene(
    tmp_path, monkeypatch
):
    # Greedy (seed 0) writes a wrong derivative; the header samples use seeds 1000 + i.
    plan = {0: "wrong", 1000: "right", 1001: "wrong", 1002: "right", 1003: "right"}
    results = evaluate_known_model(
        tmp_path,
        monkeypatch,
        "x^2\n",
        _KnownHeaders(plan),
        "eval.baselines=[finetuned,self_consistency]",
        "generate.self_consistency.k=4",
    )
    assert results["summary"]["finetuned"]["all"]["math"] == 0.0
    assert results["summary"]["self_consistency"]["all"]["passed"] == 100.0
    (row,) = [r for r in results["rows"] if r["baseline"] == "self_consistency"]
    assert row["extra"]["vote"] == {"chosen_header": 1, "agreeing": 3, "voters": 5}


class _Counted(_KnownTries):
    """Known tries, and every scene written: (function, seed)."""

    def __init__(self, plan: dict):
        super().__init__(plan)
        self.written = []

    def generate(
        self, function, max_new_tokens=1600, temperature=0.0, top_p=1.0, seed=None, **kwargs
    ):
        self.written.append((function, seed))
        return super().generate(function, max_new_tokens, temperature, top_p, seed, **kwargs)


@pytest.fixture
def passing_checks(monkeypatch) -> list[str]:
    """Every check passes without a render; the codes checked, in order."""
    from derivative_animator.render import checks

    checked = []

    def check(code, function, render=None, output_dir=None, render_failing=True, sandbox=None):
        checked.append(code)
        return checks.CheckResult(syntax=True, structure=True, executes=True, math=True)

    monkeypatch.setattr(checks, "check_code", check)
    return checked


QUIET = ("eval.workers=1", "eval.render.warm=false")


def test_only_the_requested_baselines_do_work(tmp_path, monkeypatch, passing_checks):
    """`verified` alone writes each function's first scene, not the fine-tuned baseline's pass@k
    samples; `base` alone loads no fine-tuned model; nothing is reported but what was asked."""
    from derivative_animator.eval import baselines
    from derivative_animator.model import generate

    model = _Counted({0: "right", 1: "right", 2: "right"})
    results = evaluate_known_model(
        tmp_path,
        monkeypatch,
        "x^2\nsin x\n",
        model,
        "eval.baselines=[verified]",
        "eval.samples_per_function=3",
        *QUIET,
    )
    assert model.written == [("x^2", 0), ("sin(x)", 0)] and len(passing_checks) == 2
    assert [r["baseline"] for r in results["rows"]] == ["verified", "verified"]

    base = _Counted({None: "right"})
    monkeypatch.setattr(baselines, "base_generator", lambda model_dir, bracket_guard: base)
    monkeypatch.setattr(
        generate.SceneGenerator,
        "load",
        classmethod(lambda cls, *a, **k: pytest.fail("the fine-tuned model was loaded")),
    )
    cfg = compose_eval(
        f"eval.functions_file={tmp_path / 'functions.txt'}",
        f"eval.model={tmp_path}",
        "eval.baselines=[base]",
        *QUIET,
    )
    results = evaluate.run_evaluation(cfg, tmp_path / "base")
    assert base.written == [("x^2", None), ("sin(x)", None)]
    assert [r["baseline"] for r in results["rows"]] == [
        "base",
        "base",
    ] and "base_generation_s" in results["timings"]


def test_the_oracles_renders_are_spare_work_and_a_models_are_urgent(
    tmp_path, monkeypatch, passing_checks
):
    priorities = []
    submit = engine.RenderQueue.submit
    monkeypatch.setattr(
        engine.RenderQueue,
        "submit",
        lambda queue, work, priority: priorities.append(priority) or submit(queue, work, priority),
    )
    evaluate_known_model(
        tmp_path,
        monkeypatch,
        "x^2\n",
        _KnownTries({0: "wrong"}),
        "eval.baselines=[finetuned,template]",
        *QUIET,
    )
    assert priorities == [
        engine.RenderQueue.SPARE,
        engine.RenderQueue.URGENT,
    ]  # the oracle's queued first


def test_an_unknown_baseline_is_refused_in_one_line_naming_the_known_ones(tmp_path):
    with pytest.raises(ValueError) as refused:
        evaluate.evaluate_and_report(
            compose_eval("eval.baselines=[template,oracle]", "eval.log_to_mlflow=false"), tmp_path
        )
    assert str(refused.value) == (
        "unknown eval.baselines ['oracle']; choose from "
        "['template', 'base', 'finetuned', 'self_consistency', 'verified', 'api']"
    )
    assert not list(tmp_path.iterdir())  # refused before any work


def test_the_reports_name_each_baseline_as_before():
    assert report.BASELINE_NAMES == {
        "template": "Template oracle",
        "base": "Base model (no fine-tuning)",
        "finetuned": "Fine-tuned (raw)",
        "self_consistency": "Fine-tuned + self-consistency (no oracle)",
        "verified": "Fine-tuned + verification",
        "api": "api",
    }


def test_asked_styles_reach_the_model_and_are_reported_per_style(tmp_path, monkeypatch):
    """eval.ask_styles: a functions file's lines ask tangent, secant, graphs in turn, of the first
    scene and of every completion; math and layout are reported per style. Off: the model's own
    choice, no style table."""
    from derivative_animator.render import checks

    real = checks.check_code

    def judged(code, function, render=None, output_dir=None, render_failing=True, sandbox=None):
        result = real(code, function, execute=False)  # math from the header, no render
        result.executes, result.layout = result.syntax, result.syntax
        return result

    monkeypatch.setattr(checks, "check_code", judged)
    asked = []

    class Styled(_KnownHeaders):
        batching = False  # header samples stop at the header: no style to ask

        def generate(self, function, *args, style=None, **kwargs):
            if not self.batching:
                asked.append((function, style, bool(kwargs.get("prefix"))))
            return super().generate(function, *args, style=style, **kwargs)

        def generate_batch(self, *args, **kwargs):
            self.batching = True
            try:
                return super().generate_batch(*args, **kwargs)
            finally:
                self.batching = False

    results = evaluate_known_model(
        tmp_path,
        monkeypatch,
        "x^2\nsin x\ne^x\nx^3\n",
        Styled({0: "wrong", 1000: "right"}),
        "eval.baselines=[finetuned,verified]",
        "eval.ask_styles=true",
        "generate.attempts=2",
        "generate.self_consistency.k=1",
        *QUIET,
    )
    firsts = [(f, s) for f, s, completed in asked if not completed]
    assert firsts == [
        ("x^2", "tangent"),
        ("sin(x)", "secant"),
        ("e^x", "graphs"),
        ("x^3", "tangent"),
    ]
    assert [s for _, s, completed in asked if completed] == [
        "tangent",
        "secant",
        "graphs",
        "tangent",
    ]
    verified = results["summary"]["verified"]
    assert {g: verified[g]["n"] for g in verified if g.startswith("style/")} == {
        "style/graphs": 1,
        "style/secant": 1,
        "style/tangent": 2,
    }
    table = report.style_table(results["summary"])
    assert table.splitlines()[3] == "| tangent | 2 | 0.0% / 100.0% | 100.0% / 100.0% |"
    markdown = (report.write_reports(results, tmp_path) / "results.md").read_text()
    assert f"by the style asked:\n\n{table}" in markdown

    asked.clear()
    (tmp_path / "free").mkdir()
    results = evaluate_known_model(
        tmp_path / "free",
        monkeypatch,
        "x^2\n",
        Styled({0: "right"}),
        "eval.baselines=[finetuned]",
        *QUIET,
    )
    assert asked == [("x^2", None, False)] and report.style_table(results["summary"]) == ""
