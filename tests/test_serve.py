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
from derivative_animator.data.prompt import DEFAULT_FORMAT, function_in_message, instruction
from derivative_animator.data.scenes import SCENE_CLASS
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
    data = (
        content
        if content is not None
        else (json.dumps(payload).encode() if payload is not None else None)
    )
    headers = {"content-type": "application/json"} if data is not None else {}
    try:
        with urllib.request.urlopen(
            urllib.request.Request(url, data=data, headers=headers), timeout=timeout
        ) as r:
            return Response(r.status, r.read(), r.headers)
    except urllib.error.HTTPError as error:
        return Response(error.code, error.read(), error.headers)


def settings(tmp_path, model_dir, **changes) -> serve.Settings:
    return serve.Settings(model_dir=model_dir, output_dir=tmp_path / "served", **changes)


def test_the_openai_client_gets_the_checkpoints_own_greedy_text_for_chat_and_completions(
    tmp_path, micro_checkpoint
):
    import openai

    reference = SceneGenerator.load(micro_checkpoint)
    with running(serve.create_app(settings(tmp_path, micro_checkpoint))) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="none")
        (model,) = client.models.list().data
        for function in ("x^2", "sin(x) e^x"):
            expected = reference.generate(function, 60)
            chat = client.chat.completions.create(
                model=model.id,
                max_tokens=60,
                temperature=0,
                messages=[
                    {"role": "system", "content": "ignored"},
                    {"role": "user", "content": instruction(function)},
                ],
            )
            assert chat.choices[0].message.content == expected.code
            assert chat.usage.completion_tokens == expected.new_tokens
            # the same prompt, written by hand: continued as it is (no opening written for it)
            prompt = DEFAULT_FORMAT.format(function)
            continued = reference.generate(function, 60, prompt=prompt)
            raw = client.completions.create(model=model.id, prompt=prompt, max_tokens=60)
            assert raw.choices[0].text == continued.code and continued.forced == 0
            assert raw.choices[0].finish_reason == (
                "length" if continued.stop == "max_new_tokens" else "stop"
            )


def test_bad_requests_get_one_line_reasons_and_files_only_come_from_the_jobs_folder(
    tmp_path, micro_checkpoint
):
    with running(serve.create_app(settings(tmp_path, micro_checkpoint))) as url:
        chat = request(
            f"{url}/v1/chat/completions", {"messages": [{"role": "user", "content": "hello there"}]}
        )
        assert chat.status_code == 400 and chat.json()["error"]["message"] == (
            "no function of x could be read in 'hello there'; ask e.g. 'derivative of x^3', "
            "'animate e^{-x^2}' or 'f(x) = x^2 sin(x)'"
        )
        bad = request(
            f"{url}/v1/chat/completions",
            {"messages": [{"role": "user", "content": "f(x) = sin(x"}]},
        )
        assert bad.status_code == 400 and "\n" not in bad.json()["error"]["message"]
        assert request(f"{url}/api/animate", {"function": "sin(x"}).status_code == 400
        assert (
            request(f"{url}/v1/completions", content=b"{" + b" " * 70_000 + b"}").status_code == 413
        )
        assert (
            request(f"{url}/v1/completions", {"prompt": "x", "max_tokens": 10**6}).status_code
            == 422
        )


@pytest.mark.parametrize(
    "message, function",
    [
        ("derivative of x^3", "x^3"),
        ("What is the derivative of x^3 with respect to x?", "x^3"),
        ("differentiate sin(x)cos(x)", "sin(x)cos(x)"),
        ("animate e^{-x^2}", "e^{-x^2}"),
        ("Please animate sin x cos x", "sin x cos x"),
        ("d/dx (x^2 + 1)", "(x^2 + 1)"),
        ("f(x) = x^2 sin x", "x^2 sin x"),
        ("y = tan(2x)", "tan(2x)"),
        ("x^3", "x^3"),
        ("`ln(x^2+1)`?", "ln(x^2+1)"),
        (instruction("x^2 sin(x)"), "x^2 sin(x)"),
    ],
)
def test_a_chat_message_names_its_function_as_people_ask(message, function):
    assert function_in_message(message) == function


@pytest.mark.parametrize(
    "message, fragment",
    [
        ("hello there", "in 'hello there'; ask e.g. 'derivative of x^3'"),
        ("derivative of sin(x", "in 'sin(x' (bracket '(' at position 4 is never closed"),
        (
            "f(x) = __import__('os').system('touch pwned')",
            "character '_' at position 1 is not allowed",
        ),
    ],
)
def test_a_chat_message_without_a_readable_function_gets_one_line_naming_what_works(
    message, fragment, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError) as refused:
        function_in_message(message)
    assert fragment in str(refused.value) and "\n" not in str(refused.value)
    assert str(refused.value).endswith(
        "ask e.g. 'derivative of x^3', 'animate e^{-x^2}' or 'f(x) = x^2 sin(x)'"
    )
    assert not (tmp_path / "pwned").exists()  # read by the parser, never run


def test_the_chat_endpoint_takes_ordinary_requests_as_the_prompt_it_was_trained_on(
    tmp_path, micro_checkpoint
):
    """ "derivative of x^3" gets exactly what "f(x) = x^3" gets: the checkpoint's own prompt."""

    def ask(url, content):
        return request(
            f"{url}/v1/chat/completions",
            {"messages": [{"role": "user", "content": content}], "max_tokens": 12},
        )

    with running(serve.create_app(settings(tmp_path, micro_checkpoint))) as url:
        for plain, ordinary in (
            ("x^3", "derivative of x^3"),
            ("sin(x) cos(x)", "differentiate sin(x)cos(x)"),
            ("e^(-x^2)", "animate e^{-x^2}"),
        ):
            expected = ask(url, instruction(plain))
            answer = ask(url, ordinary)
            assert expected.status_code == answer.status_code == 200, answer.json()
            assert (
                answer.json()["choices"][0]["message"] == expected.json()["choices"][0]["message"]
            )
            assert answer.json()["usage"] == expected.json()["usage"]
        refused = ask(url, "please draw me a sheep")
        assert (
            refused.status_code == 400
            and "ask e.g. 'derivative of x^3'" in refused.json()["error"]["message"]
        )


def test_the_page_names_the_model_by_its_training_run(tmp_path, micro_checkpoint):
    """Not a timestamp directory: the base, the tuning and the date, from what training saved."""
    from derivative_animator import tracking

    merged = tmp_path / "train" / "2026-12-03_07-35-00-850501" / "checkpoint" / "merged"
    merged.mkdir(parents=True)
    (merged / "derivanim_config.json").write_text(
        json.dumps(
            {
                "model": {
                    "name": "tiny",
                    "pretrained": "/abs/models/derivanim-tiny",
                    "build": {"publish_dir": "models/derivanim-tiny"},
                },
                "lora": {"enabled": True, "r": 64},
            }
        )
    )
    assert tracking.checkpoint_title(merged) == "derivanim-tiny + LoRA r64 (2026-12-03 07:35)"
    with running(serve.create_app(settings(tmp_path, merged), generator=_Oracle())) as url:
        page = request(f"{url}/").body.decode()
        assert "model <b>derivanim-tiny + LoRA r64 (2026-12-03 07:35)</b>" in page
        assert "2026-12-03_07-35-00" not in page
        assert (
            request(f"{url}/v1/models").json()["data"][0]["id"] == "2026-12-03_07-35-00-850501"
        )  # the API's id
    full = {
        "model": {
            "name": "deepseek_coder_1_3b",
            "pretrained": "deepseek-ai/deepseek-coder-1.3b-base",
        },
        "lora": {"enabled": False, "r": 64},
    }
    (merged / "derivanim_config.json").write_text(json.dumps(full))
    assert (
        tracking.checkpoint_title(merged)
        == "deepseek-ai/deepseek-coder-1.3b-base + full fine-tune (2026-12-03 07:35)"
    )
    assert (
        tracking.checkpoint_title(micro_checkpoint) == micro_checkpoint.name
    )  # nothing saved to name it by


def test_files_outside_the_jobs_folders_are_never_served(tmp_path, micro_checkpoint):
    """Each request below reaches the file handler (one path segment for the job id, one for the
    name), and each names a file that exists: only the guards answer 404."""
    served = tmp_path / "served"
    (tmp_path / "secret.py").write_text("secret")
    planted = (
        served / "0123456789abcdef"
    )  # a folder of a job id's shape that no job of this server made
    planted.mkdir(parents=True)
    (planted / "scene.py").write_text("not a job's")
    with running(serve.create_app(settings(tmp_path, micro_checkpoint))) as url:
        for path in (
            "/files/../secret.py",
            "/files/%2E%2E/secret.py",
            "/files/.%2e/secret.py",
            "/files/..%2Fsecret.py",
            "/files/0123456789abcdef/scene.py",
        ):
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
    with running(
        serve.create_app(settings(tmp_path, micro_checkpoint, queue_size=1), generator=model)
    ) as url:
        waiting = [
            threading.Thread(target=request, args=(f"{url}/v1/chat/completions", chat))
            for _ in range(2)
        ]
        for thread in waiting:  # one running, one queued
            thread.start()
        time.sleep(1.0)
        started = time.monotonic()
        busy = request(f"{url}/v1/chat/completions", chat)
        assert busy.status_code == 503 and "busy" in busy.json()["error"]["message"]
        assert (
            busy.headers.get("retry-after") == "1"
        )  # the openai client waits that long, then retries
        assert time.monotonic() - started < 2  # answered at once, not queued
        model.release.set()
        for thread in waiting:
            thread.join(30)
        assert request(f"{url}/v1/chat/completions", chat).status_code == 200  # free again


class _Oracle:
    """Writes the template oracle's scene: the page's own pipeline (verification, sandboxed
    render, video) is real, the model is not. For x^3 it adds a text below the frame: right
    mathematics, a failing layout. For x^4 it fails outright, as a model out of memory would."""

    prompt_format = DEFAULT_FORMAT

    def generate(self, function, *args, **kwargs):
        if function == "x^4":
            raise RuntimeError("the model ran out of memory")
        code = oracle.template_scene(function, "graphs")
        if function == "x^3":
            code = re.sub(
                r"(def construct\(self\):\n(\s+))",
                r'\1self.add(Text("off the frame").move_to(DOWN * 4.2))\n\2',
                code,
                count=1,
            )
        return Generation(function, code, 0.1, 100, 10)


@contextmanager
def page_with_result(url, function, timeout_ms):
    """Chromium on the page at `url`, `function` asked for, its result shown."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path="/usr/bin/chromium", args=["--no-sandbox"]
        )
        page = browser.new_page()
        page.goto(url)
        page.fill("#function", function)
        page.click("#go")
        page.wait_for_selector("#result:not([hidden])", timeout=timeout_ms)
        yield page
        browser.close()


@pytest.mark.needs_render
@pytest.mark.needs_browser
def test_the_page_in_chromium_plays_the_video_shows_the_checks_and_the_parsers_message(
    tmp_path, micro_checkpoint
):
    with (
        running(serve.create_app(settings(tmp_path, micro_checkpoint), generator=_Oracle())) as url,
        page_with_result(url, "x^2 sin x", 180_000) as page,
    ):
        checks = page.eval_on_selector_all(
            ".check", "els => els.map(e => [e.dataset.check, e.className])"
        )
        assert checks == [
            [name, "check ok"] for name in ("syntax", "structure", "executes", "math", "layout")
        ]
        assert page.locator(".layout-problem").count() == 0
        # the status says what finally happened; the steps are words, each with its time; the
        # log is folded away
        assert page.text_content("#status") == "Done: the model's scene passed every check"
        assert page.get_attribute("#status", "class") == "outcome done"
        steps = page.eval_on_selector_all("#steps li", "els => els.map(e => e.textContent)")
        assert re.fullmatch(
            r"try 1 of 3: passed every check; written in \d+\.\d s, checked in \d+\.\d s", steps[0]
        )
        assert re.fullmatch(r"rendered the model's scene's video in \d+\.\d s", steps[-1]), steps
        assert "syntax:" not in page.text_content("#steps") and not page.is_visible("#log-lines")
        assert "attempt 1: syntax:ok" in page.text_content("#log-lines")
        # the video loads and plays: frames decoded, time advancing
        page.wait_for_function("document.getElementById('video').readyState >= 2", timeout=30_000)
        page.wait_for_function("document.getElementById('video').currentTime > 0", timeout=30_000)
        assert "f(x) = x^2 sin(x)" in page.text_content("#code")
        # the fifth check: a scene whose text runs off the frame passes the four, fails layout,
        # says why
        page.fill("#function", "x^3")
        page.click("#go")
        page.wait_for_function(
            "document.getElementById('code').textContent.includes('off the frame')", timeout=180_000
        )
        checks = dict(
            page.eval_on_selector_all(
                ".check", "els => els.map(e => [e.dataset.check, e.className])"
            )
        )
        assert checks == {
            "syntax": "check ok",
            "structure": "check ok",
            "executes": "check ok",
            "math": "check ok",
            "layout": "check bad",
        }
        assert "'offtheframe' reaches outside the frame" in page.text_content(".layout-problem")
        assert page.text_content("#status").startswith(
            "Done: the model's scene is right and renders; its layout check failed: "
            "animation 1: 'offtheframe' reaches "
        )
        # a job that fails: the status says so in one line, not the last step it reached
        page.fill("#function", "x^4")
        page.click("#go")
        page.wait_for_selector("#status.failed", timeout=60_000)
        assert page.text_content("#status") == "Failed: RuntimeError: the model ran out of memory"
        assert page.is_enabled("#go")
        page.fill("#function", "sin(x")
        page.click("#go")
        page.wait_for_function(
            "document.getElementById('error').textContent.length > 0", timeout=10_000
        )
        assert "sin(x" in page.text_content("#error") or "never closed" in page.text_content(
            "#error"
        )


class _WrongDerivative:
    """Writes the oracle's scene with the f' the fine-tuned model wrote for 1/x, `-(-1/x^2)`, in
    its first scene and in every sampled header: no try of the model passes, the repair can."""

    prompt_format = DEFAULT_FORMAT

    @staticmethod
    def _code(function):
        return re.sub(
            r"^f'\(x\) = .*$",
            "f'(x) = -(-1/x^2)",
            oracle.template_scene(function, "tangent"),
            count=1,
            flags=re.MULTILINE,
        )

    def generate(self, function, *args, prefix="", **kwargs):
        return Generation(function, self._code(function), 0.1, 100, 10)

    def generate_batch(self, functions, *args, headers_only=False, **kwargs):
        from derivative_animator.math.header import math_header_length

        code = self._code(functions[0])
        return [Generation(f, code[: math_header_length(code)], 0.01, 10, 0) for f in functions]


@pytest.mark.needs_render
@pytest.mark.needs_browser
def test_the_page_in_chromium_shows_a_corrected_scene_as_corrected_with_the_models_one_click_away(
    tmp_path, micro_checkpoint
):
    with running(
        serve.create_app(settings(tmp_path, micro_checkpoint), generator=_WrongDerivative())
    ) as url:
        with page_with_result(url, "1/x", 300_000) as page:
            assert page.get_attribute("#verdict", "class") == "corrected" and page.is_visible(
                "#badge"
            )
            assert page.text_content("#status") == (
                "Corrected: the model's derivative was wrong (it wrote -(-1/x^2)); "
                "the corrected scene, with f'(x) = -1/x^2, is shown"
            )
            assert page.get_attribute("#status", "class") == "outcome corrected"
            steps = page.eval_on_selector_all("#steps li", "els => els.map(e => e.textContent)")
            assert steps[0].startswith(
                "try 1 of 3: the derivative is wrong (it wrote -(-1/x^2)); written in"
            )
            assert any(
                s.startswith("the corrected scene of try 1 (f'(x) = -1/x^2): passed every check")
                for s in steps
            )
            assert steps[-2].startswith("rendered the corrected scene's video in")
            assert steps[-1].startswith("rendered the model's own scene's video in")
            assert page.text_content("#badge") == "Corrected"
            assert page.text_content("#summary").startswith(
                "the model's derivative was wrong (it wrote -(-1/x^2)); shown: the corrected "
                "scene with f'(x) = -1/x^2"
            )
            assert "f'(x) = -1/x^2\n" in page.text_content("#code")
            checks = dict(
                page.eval_on_selector_all(
                    ".check", "els => els.map(e => [e.dataset.check, e.className])"
                )
            )
            assert set(checks.values()) == {"check ok"}
            page.wait_for_function(
                "document.getElementById('video').readyState >= 2", timeout=30_000
            )
            assert page.get_attribute("#video", "src").endswith("/scene.mp4")
            # one click: the model's own scene, its video and its failing math check
            assert page.is_visible("#model-toggle") and "model's own" in page.text_content(
                "#model-toggle"
            )
            page.click("#model-toggle")
            assert "f'(x) = -(-1/x^2)\n" in page.text_content(
                "#code"
            ) and "model's own" in page.text_content("#which")
            assert page.get_attribute("#video", "src").endswith("/model.mp4")
            page.wait_for_function(
                "document.getElementById('video').readyState >= 2", timeout=30_000
            )
            assert page.get_attribute(".check[data-check=math]", "class") == "check bad"
            page.click("#model-toggle")  # and back
            assert "f'(x) = -1/x^2\n" in page.text_content("#code")
            result = page.evaluate(
                "shown"
            )  # the JSON the API returned: which scene is shown, and the model's own
            assert (
                result["shown"] == "corrected"
                and result["passed"]
                and result["summary"] == page.text_content("#summary")
            )
            assert (
                "f'(x) = -(-1/x^2)" in result["model"]["code"]
                and result["model"]["checks"]["math"] is False
            )
        # The API says which scene is shown and carries the model's own; repair: false is the raw
        # try.
        result = finished(url, "1/x", timeout=300, repair=False)["result"]
        assert (
            result["shown"] == "model"
            and not result["passed"]
            and result["checks"]["math"] is False
        )
        assert "f'(x) = -(-1/x^2)" in result["code"] and result["model"]["code"] == result["code"]
        assert "shown: the model's scene" in result["summary"]


class _Broken:
    """Writes code that never parses, or (for sin(x)) fails outright: no try passes, nothing to
    correct."""

    prompt_format = DEFAULT_FORMAT

    def generate(self, function, *args, **kwargs):
        if function == "sin(x)":
            raise RuntimeError("the model ran out of memory")
        return Generation(
            function, "from manim import *\nclass S(Scene):\n    def construct(self:\n", 0.1, 10, 1
        )

    def generate_batch(self, functions, *args, **kwargs):
        return [Generation(f, "nonsense", 0.01, 1, 0) for f in functions]


def finished(url: str, function: str, timeout: float = 120, **fields) -> dict:
    """The job of `function` (with the request's other `fields`) asked of the page's API, once
    it has ended."""
    job = request(f"{url}/api/animate", {"function": function, **fields}).json()["job"]
    deadline = time.monotonic() + timeout
    while (status := request(f"{url}/api/jobs/{job}").json())["status"] not in ("done", "error"):
        assert time.monotonic() < deadline, status
        time.sleep(0.2)
    return status


@pytest.fixture
def checks_without_renders(monkeypatch):
    """Every check but the render (a scene that parses and holds a Scene "renders", no video)."""
    from derivative_animator.eval.service import GenerationService
    from derivative_animator.render import checks

    real = checks.check_code

    def check_code(code, function, render=None, output_dir=None, sandbox=None, **unused):
        result = real(code, function, execute=False)
        if result.syntax and result.structure:
            result.executes, result.layout, result.scene = True, True, "S"
        return result

    monkeypatch.setattr(checks, "check_code", check_code)
    monkeypatch.setattr(GenerationService, "start_sandbox", lambda self: None)


def test_a_jobs_status_says_what_finally_happened_and_its_steps_read_as_words(
    tmp_path, micro_checkpoint, checks_without_renders
):
    """Done, Corrected or Failed, in one line, from the scene shown; never the last progress
    message. The steps are words with times, not the CLI's check marks (those stay in
    `messages`)."""
    for generator, function, kind, text in (
        (_Oracle(), "x^2 sin x", "done", "Done: the model's scene passed every check"),
        (
            _WrongDerivative(),
            "1/x",
            "corrected",
            "Corrected: the model's derivative was wrong (it wrote "
            "-(-1/x^2)); the corrected scene, with f'(x) = -1/x^2, is shown",
        ),
        (
            _Broken(),
            "x^2",
            "failed",
            "Failed: the model's scene: the code does not parse ('(' was never closed (line 3))",
        ),
        (_Broken(), "sin(x)", "failed", "Failed: RuntimeError: the model ran out of memory"),
    ):
        with running(
            serve.create_app(settings(tmp_path, micro_checkpoint), generator=generator)
        ) as url:
            status = finished(url, function)
        assert status["outcome"]["kind"] == kind and status["outcome"]["text"].startswith(text), (
            status["outcome"]
        )
        assert "\n" not in status["outcome"]["text"] and status["doing"] is None
        assert not any(
            mark in step
            for step in status["steps"]
            for mark in ("syntax:", ":ok", ":FAIL", "attempt ")
        )
        assert all(
            re.search(r"\d+\.\d s", step)
            for step in status["steps"]  # each step's time, but a verdict's
            if not step.startswith("no try passed every check")
        ), status["steps"]
        if kind != "failed":
            assert status["steps"][-1].startswith(
                "rendered "
            )  # the render is the last step, and said to be done
        if kind == "corrected":
            assert status["steps"][0].startswith(
                "try 1 of 3: the derivative is wrong (it wrote -(-1/x^2)); written in"
            )
            assert "the corrected scene of try 1 (f'(x) = -1/x^2): passed every check" in " ".join(
                status["steps"]
            )
            assert any(
                m.startswith("attempt 1: syntax:ok") for m in status["messages"]
            )  # the CLI's lines, kept
        if function == "x^2":
            assert status["steps"][0].startswith("try 1 of 3: the code does not parse")
            assert status["steps"][1].startswith("sampled 8 other derivatives in") and status[
                "steps"
            ][1].endswith("0 are right; no other try")


compose_eval = partial(compose_config, "eval")


@pytest.mark.needs_sandbox
def test_the_api_baseline_against_the_server_writes_what_the_finetuned_baseline_writes(
    tmp_path, micro_checkpoint
):
    """The evaluator's `api` baseline, through the openai client, against `derivanim serve` of
    the same checkpoint: the same greedy scenes, so the same figures."""
    from derivative_animator import evaluate

    functions = tmp_path / "functions.txt"
    functions.write_text("x^2\nsin x\ne^x cos x\n")
    with running(serve.create_app(settings(tmp_path, micro_checkpoint))) as url:
        cfg = compose_eval(
            f"eval.functions_file={functions}",
            "eval.baselines=[finetuned,api]",
            f"eval.model={micro_checkpoint}",
            f"eval.api.base_url={url}/v1",
            f"eval.api.model={micro_checkpoint.name}",
            "generate.max_new_tokens=80",
            "generate.seed=0",
        )
        results = evaluate.run_evaluation(cfg, tmp_path / "run")
    rows = {(r["baseline"], r["function"]): r for r in results["rows"]}
    assert len(rows) == 6 and not results["notes"]
    for function in ("x^2", "sin(x)", "e^x cos(x)"):
        finetuned, api = rows[("finetuned", function)], rows[("api", function)]
        assert (tmp_path / "run" / api["code_path"]).read_text() == (
            tmp_path / "run" / finetuned["code_path"]
        ).read_text()
        assert api["new_tokens"] == finetuned["new_tokens"] and api["extra"]["latency_s"] > 0
        assert api["extra"]["prompt_tokens"] > 0
    assert (
        results["summary"]["api"]["all"]["math"] == results["summary"]["finetuned"]["all"]["math"]
    )


@pytest.mark.needs_render
def test_without_an_endpoint_the_api_baseline_is_skipped_with_a_one_line_reason(tmp_path, capsys):
    from derivative_animator import evaluate

    functions = tmp_path / "functions.txt"
    functions.write_text("x^2\n")
    for overrides, reason in (
        (["eval.api.base_url=null"], "set eval.api.base_url"),
        (
            [
                "eval.api.base_url=https://api.example.invalid/v1",
                "eval.api.model=m",
                "eval.api.api_key_env=DERIVANIM_NO_SUCH_KEY",
            ],
            "no API key",
        ),
        (["eval.api.base_url=http://127.0.0.1:9/v1", "eval.api.model=m"], "does not answer"),
    ):
        cfg = compose_eval(
            f"eval.functions_file={functions}", "eval.baselines=[template,api]", *overrides
        )
        results = evaluate.run_evaluation(cfg, tmp_path / "run")
        assert [r["baseline"] for r in results["rows"]] == ["template"]
        (note,) = results["notes"]
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
def test_a_load_test_gets_a_result_or_busy_for_every_request_and_leaves_nothing_behind(
    tmp_path, micro_checkpoint
):
    """scripts/load_test.py, shrunk: a real `derivanim serve` process on loopback, 40 requests
    from 8 clients (API calls, and page jobs that render in the sandbox), a queue of one so bursts
    meet "busy"."""
    import os
    import subprocess
    import sys

    from derivative_animator import paths

    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(_ORACLE_SITECUSTOMIZE)
    summary_path = tmp_path / "summary.json"
    done = subprocess.run(
        [
            sys.executable,
            str(paths.PROJECT_ROOT / "scripts" / "load_test.py"),
            "--model",
            str(micro_checkpoint),
            "--requests",
            "40",
            "--concurrency",
            "8",
            "--queue",
            "1",
            "--page-every",
            "8",
            "--busy-pause",
            "0.2",
            "--json",
            str(summary_path),
            "--server-env",
            f"PYTHONPATH={tmp_path / 'site'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
        ],
        capture_output=True,
        text=True,
        timeout=550,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    summary = json.loads(summary_path.read_text())
    assert summary["ok"] and sum(summary["counts"].values()) == 40
    assert set(summary["counts"]) == {"result", "busy"}, summary[
        "counts"
    ]  # both happen, nothing else
    assert summary["latency_s"]["busy"]["max"] < 5  # busy is said at once, not after a wait in line
    assert summary["warm_page_job"] == "done" and summary["loopback_only"] and summary["up_after"]
    assert any(
        "bwrap" in p for p in summary["processes_before"]
    )  # the render sandbox, started by a page job
    assert not summary["leaked_processes"] and not summary["leaked_temp"]
    assert (
        summary["stopped_cleanly"]
        and not summary["left_after_stop"]
        and not summary["temp_after_stop"]
    )
    assert done.stdout.rstrip().endswith("PASS") and "busy" in done.stdout


class _Styled:
    """Writes the oracle's scene in the style it is asked for (tangent when not asked)."""

    prompt_format = DEFAULT_FORMAT

    def generate(self, function, *args, style=None, **kwargs):
        return Generation(function, oracle.template_scene(function, style or "tangent"), 0.1, 9, 1)


def test_the_page_asks_the_model_for_the_chosen_style(
    tmp_path, micro_checkpoint, checks_without_renders
):
    with running(
        serve.create_app(settings(tmp_path, micro_checkpoint), generator=_Styled())
    ) as url:
        assert b'id="style"' in request(f"{url}/").body
        for style, scene_class in SCENE_CLASS.items():
            status = finished(url, "x^2", timeout=60, style=style)
            assert f"class {scene_class}(Scene)" in status["result"]["code"], style
        bad = request(f"{url}/api/animate", {"function": "x^2", "style": "zigzag"})
        assert bad.status_code == 422 and bad.json()["error"]["message"] == (
            "style: Input should be 'tangent', 'secant' or 'graphs'"
        )


def test_the_page_renders_its_videos_at_the_quality_asked(monkeypatch, tmp_path):
    import uvicorn

    from derivative_animator import cli, serve

    made = []
    monkeypatch.setattr(serve, "create_app", lambda settings, **kwargs: made.append(settings))
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: None)
    for extra, quality in (([], "l"), (["--quality", "m"], "m")):
        args = cli.build_parser().parse_args(["serve", "--model", str(tmp_path), *extra])
        assert serve.run(args) == 0
        assert made.pop().generation.video_quality == quality


def test_the_load_test_counts_a_running_process_as_left_and_an_exited_one_not(monkeypatch):
    """After the server stops, a child still running is a leak; one that exited but waits to be
    reaped (a zombie: a container's init may never reap it) is not."""
    import importlib.util
    import subprocess
    import sys

    from derivative_animator import paths

    monkeypatch.syspath_prepend(str(paths.PROJECT_ROOT / "scripts"))  # its sibling helper
    spec = importlib.util.spec_from_file_location(
        "load_test", paths.PROJECT_ROOT / "scripts" / "load_test.py"
    )
    load_test = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "load_test", load_test)  # its dataclasses look it up
    spec.loader.exec_module(load_test)
    running = subprocess.Popen(["sleep", "30"])
    exited = subprocess.Popen(["true"])
    try:
        deadline = time.monotonic() + 10
        while load_test._running(exited.pid) and time.monotonic() < deadline:
            time.sleep(0.05)  # not waited on: it stays a zombie
        assert load_test._running(running.pid) == "sleep"
        assert load_test._running(exited.pid) is None
        assert exited.poll() == 0  # it had exited (and is reaped only now)
    finally:
        running.kill()
        running.wait()
