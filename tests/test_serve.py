"""derivanim serve: the OpenAI-compatible API and the page, started for real on a free port."""

from __future__ import annotations

import json
import re
import threading
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from functools import partial

import pytest
from conftest import compose_config

from derivative_animator import serve
from derivative_animator.data import oracle
from derivative_animator.data.prompt import DEFAULT_FORMAT, instruction
from derivative_animator.model.generate import Generation, SceneGenerator


@contextmanager
def running(app):
    """The app served by uvicorn on a free port of 127.0.0.1; yields its base URL."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


class Response:
    def __init__(self, status: int, body: bytes, headers=None):
        self.status_code, self.body, self.headers = status, body, headers or {}

    def json(self):
        return json.loads(self.body)


def request(url: str, payload=None, content: bytes | None = None, timeout: float = 60) -> Response:
    """GET, or POST of JSON (or raw bytes): the status and body whatever the status."""
    data = content if content is not None else (json.dumps(payload).encode() if payload is not None else None)
    headers = {"content-type": "application/json"} if data is not None else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=data, headers=headers), timeout=timeout) as r:
            return Response(r.status, r.read(), r.headers)
    except urllib.error.HTTPError as error:
        return Response(error.code, error.read(), error.headers)


def settings(tmp_path, model_dir, **changes) -> serve.Settings:
    return serve.Settings(model_dir=model_dir, output_dir=tmp_path / "served", **changes)


def test_the_openai_client_gets_the_checkpoints_own_greedy_text_for_chat_and_completions(tmp_path, micro_checkpoint):
    import openai

    reference = SceneGenerator.load(micro_checkpoint)
    with running(serve.create_app(settings(tmp_path, micro_checkpoint))) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="none")
        model, = client.models.list().data
        for function in ("x^2", "sin(x) e^x"):
            expected = reference.generate(function, 60)
            chat = client.chat.completions.create(
                model=model.id, max_tokens=60, temperature=0,
                messages=[{"role": "system", "content": "ignored"}, {"role": "user", "content": instruction(function)}])
            assert chat.choices[0].message.content == expected.code
            assert chat.usage.completion_tokens == expected.new_tokens
            raw = client.completions.create(model=model.id, prompt=DEFAULT_FORMAT.format(function), max_tokens=60)
            assert raw.choices[0].text == expected.code  # the same prompt, written by hand
            assert raw.choices[0].finish_reason == ("length" if expected.stop == "max_new_tokens" else "stop")


def test_bad_requests_get_one_line_reasons_and_files_only_come_from_the_jobs_folder(tmp_path, micro_checkpoint):
    with running(serve.create_app(settings(tmp_path, micro_checkpoint))) as url:
        chat = request(f"{url}/v1/chat/completions", {"messages": [{"role": "user", "content": "hello"}]})
        assert chat.status_code == 400 and "f(x) = ..." in chat.json()["error"]["message"]
        bad = request(f"{url}/v1/chat/completions", {"messages": [{"role": "user", "content": "f(x) = sin(x"}]})
        assert bad.status_code == 400 and "\n" not in bad.json()["error"]["message"]
        assert request(f"{url}/api/animate", {"function": "sin(x"}).status_code == 400
        assert request(f"{url}/v1/completions", content=b"{" + b" " * 70_000 + b"}").status_code == 413
        assert request(f"{url}/v1/completions", {"prompt": "x", "max_tokens": 10**6}).status_code == 422



def test_files_outside_the_jobs_folders_are_never_served(tmp_path, micro_checkpoint):
    """Each request below reaches the file handler (one path segment for the job id, one for the
    name), and each names a file that exists: only the guards answer 404."""
    served = tmp_path / "served"
    (tmp_path / "secret.py").write_text("secret")
    planted = served / "0123456789abcdef"  # a folder of a job id's shape that no job of this server made
    planted.mkdir(parents=True)
    (planted / "scene.py").write_text("not a job's")
    with running(serve.create_app(settings(tmp_path, micro_checkpoint))) as url:
        for path in ("/files/../secret.py", "/files/%2E%2E/secret.py", "/files/.%2e/secret.py",
                     "/files/..%2Fsecret.py", "/files/0123456789abcdef/scene.py"):
            assert raw_get(url, path) == 404, path


def test_a_link_inside_the_output_folder_is_not_followed(tmp_path):
    served = tmp_path / "served"
    (tmp_path / "secret.py").write_text("secret")
    job = served / "0123456789abcdef"
    job.mkdir(parents=True)
    (job / "scene.py").write_text("the job's scene")
    assert serve.served_file(served, job.name, "scene.py") == job.resolve() / "scene.py"
    (job / "link.py").symlink_to(tmp_path / "secret.py")
    (served / "fedcba9876543210").symlink_to(tmp_path, target_is_directory=True)
    assert serve.served_file(served, job.name, "link.py") is None
    assert serve.served_file(served, "fedcba9876543210", "secret.py") is None
    assert serve.served_file(served, "..", "secret.py") is None
    assert serve.served_file(served, job.name, "../scene.py") is None


def raw_get(url: str, path: str) -> int:
    """The status of a GET sent with `path` exactly as written (no client normalises its dots)."""
    import http.client

    host, port = url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        connection.request("GET", path)
        return connection.getresponse().status
    finally:
        connection.close()


class _Blocking:
    """A model that waits until released: holds the worker while a burst arrives."""

    def __init__(self):
        self.release, self.prompt_format, self.tokenizer = threading.Event(), DEFAULT_FORMAT, None

    def prompt_ids(self, function):
        return [1, 2, 3]

    def generate(self, function, *args, **kwargs):
        self.release.wait(30)
        return Generation(function, "print('done')", 0.1, 3, 1)


def test_a_burst_beyond_the_queue_is_answered_busy_at_once(tmp_path, micro_checkpoint):
    model = _Blocking()
    chat = {"messages": [{"role": "user", "content": instruction("x^2")}]}
    with running(serve.create_app(settings(tmp_path, micro_checkpoint, queue_size=1), generator=model)) as url:
        waiting = [threading.Thread(target=request, args=(f"{url}/v1/chat/completions", chat)) for _ in range(2)]
        for thread in waiting:  # one running, one queued
            thread.start()
        time.sleep(1.0)
        started = time.monotonic()
        busy = request(f"{url}/v1/chat/completions", chat)
        assert busy.status_code == 503 and "busy" in busy.json()["error"]["message"]
        assert busy.headers.get("retry-after") == "1"  # the openai client waits that long, then retries
        assert time.monotonic() - started < 2  # answered at once, not queued
        model.release.set()
        for thread in waiting:
            thread.join(30)
        assert request(f"{url}/v1/chat/completions", chat).status_code == 200  # free again


class _Oracle:
    """Writes the template oracle's scene: the page's own pipeline (verification, sandboxed
    render, video) is real, the model is not. For x^3 it adds a text below the frame: right
    mathematics, a failing layout."""

    prompt_format = DEFAULT_FORMAT

    def generate(self, function, *args, **kwargs):
        code = oracle.template_scene(function, "graphs")
        if function == "x^3":
            code = re.sub(r"(def construct\(self\):\n(\s+))", r'\1self.add(Text("off the frame").move_to(DOWN * 4.2))\n\2',
                          code, count=1)
        return Generation(function, code, 0.1, 100, 10)


@contextmanager
def page_with_result(url, function, timeout_ms):
    """Chromium on the page at `url`, `function` asked for, its result shown."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
        page = browser.new_page()
        page.goto(url)
        page.fill("#function", function)
        page.click("#go")
        page.wait_for_selector("#result:not([hidden])", timeout=timeout_ms)
        yield page
        browser.close()


@pytest.mark.needs_render
@pytest.mark.needs_browser
def test_the_page_in_chromium_plays_the_video_shows_the_checks_and_the_parsers_message(tmp_path, micro_checkpoint):
    with running(serve.create_app(settings(tmp_path, micro_checkpoint), generator=_Oracle())) as url, \
            page_with_result(url, "x^2 sin x", 180_000) as page:
        checks = page.eval_on_selector_all(".check", "els => els.map(e => [e.dataset.check, e.className])")
        assert checks == [[name, "check ok"] for name in ("syntax", "structure", "executes", "math", "layout")]
        assert page.locator(".layout-problem").count() == 0
        # the video loads and plays: frames decoded, time advancing
        page.wait_for_function("document.getElementById('video').readyState >= 2", timeout=30_000)
        page.wait_for_function("document.getElementById('video').currentTime > 0", timeout=30_000)
        assert "f(x) = x^2 sin(x)" in page.text_content("#code")
        # the fifth check: a scene whose text runs off the frame passes the four, fails layout, says why
        page.fill("#function", "x^3")
        page.click("#go")
        page.wait_for_function("document.getElementById('code').textContent.includes('off the frame')", timeout=180_000)
        checks = dict(page.eval_on_selector_all(".check", "els => els.map(e => [e.dataset.check, e.className])"))
        assert checks == {"syntax": "check ok", "structure": "check ok", "executes": "check ok", "math": "check ok",
                          "layout": "check bad"}
        assert "'offtheframe' reaches outside the frame" in page.text_content(".layout-problem")
        page.fill("#function", "sin(x")
        page.click("#go")
        page.wait_for_function("document.getElementById('error').textContent.length > 0", timeout=10_000)
        assert "sin(x" in page.text_content("#error") or "never closed" in page.text_content("#error")


class _WrongDerivative:
    """Writes the oracle's scene with the f' the fine-tuned model wrote for 1/x, `-(-1/x^2)`, in
    its first scene and in every sampled header: no try of the model passes, the repair can."""

    prompt_format = DEFAULT_FORMAT

    @staticmethod
    def _code(function):
        return re.sub(r"^f'\(x\) = .*$", "f'(x) = -(-1/x^2)", oracle.template_scene(function, "tangent"), count=1,
                      flags=re.MULTILINE)

    def generate(self, function, *args, prefix="", **kwargs):
        return Generation(function, self._code(function), 0.1, 100, 10)

    def generate_batch(self, functions, *args, headers_only=False, **kwargs):
        from derivative_animator.math.header import math_header_length

        code = self._code(functions[0])
        return [Generation(f, code[:math_header_length(code)], 0.01, 10, 0) for f in functions]


@pytest.mark.needs_render
@pytest.mark.needs_browser
def test_the_page_in_chromium_shows_a_corrected_scene_as_corrected_with_the_models_one_click_away(
        tmp_path, micro_checkpoint):
    with running(serve.create_app(settings(tmp_path, micro_checkpoint), generator=_WrongDerivative())) as url:
        with page_with_result(url, "1/x", 300_000) as page:
            assert page.get_attribute("#verdict", "class") == "corrected" and page.is_visible("#badge")
            assert page.text_content("#badge") == "Corrected"
            assert page.text_content("#summary").startswith(
                "the model's derivative was wrong (it wrote -(-1/x^2)); shown: the corrected scene with f'(x) = -1/x^2")
            assert "f'(x) = -1/x^2\n" in page.text_content("#code")
            checks = dict(page.eval_on_selector_all(".check", "els => els.map(e => [e.dataset.check, e.className])"))
            assert set(checks.values()) == {"check ok"}
            page.wait_for_function("document.getElementById('video').readyState >= 2", timeout=30_000)
            assert page.get_attribute("#video", "src").endswith("/scene.mp4")
            # one click: the model's own scene, its video and its failing math check
            assert page.is_visible("#model-toggle") and "model's own" in page.text_content("#model-toggle")
            page.click("#model-toggle")
            assert "f'(x) = -(-1/x^2)\n" in page.text_content("#code") and "model's own" in page.text_content("#which")
            assert page.get_attribute("#video", "src").endswith("/model.mp4")
            page.wait_for_function("document.getElementById('video').readyState >= 2", timeout=30_000)
            assert page.get_attribute(".check[data-check=math]", "class") == "check bad"
            page.click("#model-toggle")  # and back
            assert "f'(x) = -1/x^2\n" in page.text_content("#code")
            result = page.evaluate("shown")  # the JSON the API returned: which scene is shown, and the model's own
            assert result["shown"] == "corrected" and result["passed"] and result["summary"] == page.text_content("#summary")
            assert "f'(x) = -(-1/x^2)" in result["model"]["code"] and result["model"]["checks"]["math"] is False
        # The API says which scene is shown and carries the model's own; repair: false is the raw try.
        job = request(f"{url}/api/animate", {"function": "1/x", "repair": False}).json()["job"]
        deadline = time.monotonic() + 300
        while (status := request(f"{url}/api/jobs/{job}").json())["status"] not in ("done", "error"):
            assert time.monotonic() < deadline
            time.sleep(0.5)
        result = status["result"]
        assert result["shown"] == "model" and not result["passed"] and result["checks"]["math"] is False
        assert "f'(x) = -(-1/x^2)" in result["code"] and result["model"]["code"] == result["code"]
        assert "shown: the model's scene" in result["summary"]


compose_eval = partial(compose_config, "eval")

@pytest.mark.needs_sandbox
def test_the_api_baseline_against_the_server_writes_what_the_finetuned_baseline_writes(tmp_path, micro_checkpoint):
    """The evaluator's `api` baseline, through the openai client, against `derivanim serve` of
    the same checkpoint: the same greedy scenes, so the same figures."""
    from derivative_animator import evaluate

    functions = tmp_path / "functions.txt"
    functions.write_text("x^2\nsin x\ne^x cos x\n")
    with running(serve.create_app(settings(tmp_path, micro_checkpoint))) as url:
        cfg = compose_eval(f"eval.functions_file={functions}", "eval.baselines=[finetuned,api]",
                           f"eval.model={micro_checkpoint}", f"eval.api.base_url={url}/v1",
                           f"eval.api.model={micro_checkpoint.name}", "generate.max_new_tokens=80", "generate.seed=0")
        results = evaluate.run_evaluation(cfg, tmp_path / "run")
    rows = {(r["baseline"], r["function"]): r for r in results["rows"]}
    assert len(rows) == 6 and not results["notes"]
    for function in ("x^2", "sin(x)", "e^x cos(x)"):
        finetuned, api = rows[("finetuned", function)], rows[("api", function)]
        assert (tmp_path / "run" / api["code_path"]).read_text() == (tmp_path / "run" / finetuned["code_path"]).read_text()
        assert api["new_tokens"] == finetuned["new_tokens"] and api["extra"]["latency_s"] > 0
        assert api["extra"]["prompt_tokens"] > 0
    assert results["summary"]["api"]["all"]["math"] == results["summary"]["finetuned"]["all"]["math"]


@pytest.mark.needs_render
def test_without_an_endpoint_the_api_baseline_is_skipped_with_a_one_line_reason(tmp_path, capsys):
    from derivative_animator import evaluate

    functions = tmp_path / "functions.txt"
    functions.write_text("x^2\n")
    for overrides, reason in ((["eval.api.base_url=null"], "set eval.api.base_url"),
                              (["eval.api.base_url=https://api.example.invalid/v1", "eval.api.model=m",
                                "eval.api.api_key_env=DERIVANIM_NO_SUCH_KEY"], "no API key"),
                              (["eval.api.base_url=http://127.0.0.1:9/v1", "eval.api.model=m"], "does not answer")):
        cfg = compose_eval(f"eval.functions_file={functions}", "eval.baselines=[template,api]", *overrides)
        results = evaluate.run_evaluation(cfg, tmp_path / "run")
        assert [r["baseline"] for r in results["rows"]] == ["template"]
        note, = results["notes"]
        assert reason in note and "\n" not in note
        assert f"warning: api baseline skipped: {note.split(': ', 1)[1]}" in capsys.readouterr().err


# Loaded by the load test's server process (PYTHONPATH): scenes for the page are the template
# oracle's, so page jobs render for real; API requests still get the micro model's own text.
_ORACLE_SITECUSTOMIZE = """
from derivative_animator.model import generate

_model_generate = generate.SceneGenerator.generate


def _oracle_for_the_page(self, function, *args, **kwargs):
    if not function or kwargs.get("prompt") is not None:
        return _model_generate(self, function, *args, **kwargs)
    from derivative_animator.data import oracle

    return generate.Generation(function, oracle.template_scene(function, "graphs"), 0.01, 100, 10)


generate.SceneGenerator.generate = _oracle_for_the_page
"""


@pytest.mark.slow
@pytest.mark.needs_render
def test_a_load_test_gets_a_result_or_busy_for_every_request_and_leaves_nothing_behind(tmp_path, micro_checkpoint):
    """scripts/load_test.py, shrunk: a real `derivanim serve` process on loopback, 40 requests from 8
    clients (API calls, and page jobs that render in the sandbox), a queue of one so bursts meet "busy"."""
    import os
    import subprocess
    import sys

    from derivative_animator import paths

    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(_ORACLE_SITECUSTOMIZE)
    summary_path = tmp_path / "summary.json"
    done = subprocess.run([sys.executable, str(paths.PROJECT_ROOT / "scripts" / "load_test.py"),
                           "--model", str(micro_checkpoint), "--requests", "40", "--concurrency", "8", "--queue", "1",
                           "--page-every", "8", "--busy-pause", "0.2", "--json", str(summary_path),
                           "--server-env", f"PYTHONPATH={tmp_path / 'site'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"],
                          capture_output=True, text=True, timeout=550)
    assert done.returncode == 0, done.stdout + done.stderr
    summary = json.loads(summary_path.read_text())
    assert summary["ok"] and sum(summary["counts"].values()) == 40
    assert set(summary["counts"]) == {"result", "busy"}, summary["counts"]  # both happen, nothing else
    assert summary["latency_s"]["busy"]["max"] < 5  # busy is said at once, not after a wait in line
    assert summary["warm_page_job"] == "done" and summary["loopback_only"] and summary["up_after"]
    assert any("bwrap" in p for p in summary["processes_before"])  # the render sandbox, started by a page job
    assert not summary["leaked_processes"] and not summary["leaked_temp"]
    assert summary["stopped_cleanly"] and not summary["left_after_stop"] and not summary["temp_after_stop"]
    assert done.stdout.rstrip().endswith("PASS") and "busy" in done.stdout
