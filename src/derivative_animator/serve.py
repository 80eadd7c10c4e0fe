"""`derivanim serve`: a checkpoint behind an OpenAI-compatible API and a web page.

    derivanim serve --model outputs/train/<run>/checkpoint/merged        # http://127.0.0.1:8000

- `/v1/models`, `/v1/completions`, `/v1/chat/completions` in the OpenAI API's shapes, so any
  OpenAI client (and the evaluator's `api` baseline) can call the model. A chat request gets
  the checkpoint's own prompt format: its last user message asks for the function as people
  ask ("derivative of x^3", "animate e^{-x^2}", "f(x) = x^2 sin(x)", or the function alone;
  read by the project's parser, never evaluated), and the model sees exactly the prompt it was
  trained on; a message without a readable function gets one line naming requests that work.
- `/`: a page to type a function and watch the animation: verified generation (as
  `derivanim generate`), rendered in the sandbox, then the video, the evaluation's five
  checks (layout's problems named when it fails) and the code. While it works the page lists
  each step in words with its time (`steps`; what it is at now: `doing`); when it ends, one
  line says what finally happened (`outcome`: "Done: ...", "Corrected: ...", "Failed: ...").
  The model is named as people name it (`tracking.checkpoint_title`). When no try of the model
  passes and one is wrong only in its derivative, the answer is that scene with the true
  derivative, checked again and shown under a "corrected" badge and a sentence saying what the
  model wrote, the model's own scene (and video) a click away; `/api/animate` takes
  `"repair": false` for the model's try as it is, `"style"` ("tangent", "secant", "graphs"; the
  page's selector) for the style the model writes, and its result says which scene is shown
  (`shown`: "model" or "corrected", `summary`) and carries the model's own (`model`).
- One model worker and a bounded queue: a request beyond it is answered 503 "busy" at
  once, never piled up. Request bodies, functions and token counts are capped. Generated
  code runs only in the render sandbox; files are served only from this server's output
  folder, by job id and file name. Bound to 127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

import asyncio
import html
import re
import shutil
import threading
import time
import uuid
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from pydantic import BaseModel, Field

from derivative_animator import paths, tracking
from derivative_animator.eval.service import GenerationService
from derivative_animator.eval.wording import Steps, verdict
from derivative_animator.math.header import derivative_line
from derivative_animator.model.settings import GenerationSettings
from derivative_animator.render.checks import REPORTED

MAX_BODY_BYTES = 64_000
MAX_FUNCTION_CHARS = 200
MAX_TOKENS = 2048
KEPT_JOBS = 200  # finished page jobs remembered (and their files kept), oldest dropped first
_FILE_NAME = re.compile(r"[A-Za-z0-9_]+\.(mp4|png|py)")
_JOB_ID_HEX = 16
_JOB_ID = re.compile(rf"[0-9a-f]{{{_JOB_ID_HEX}}}")


class CompletionRequest(BaseModel):
    model: str | None = None
    prompt: str = Field(max_length=MAX_BODY_BYTES)
    max_tokens: int = Field(256, ge=1, le=MAX_TOKENS)
    temperature: float = Field(0.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    seed: int | None = None


class ChatMessage(BaseModel):
    role: str
    content: str = Field(max_length=MAX_BODY_BYTES)


class ChatRequest(BaseModel):
    model: str | None = None
    messages: list[ChatMessage] = Field(min_length=1, max_length=64)
    max_tokens: int | None = Field(None, ge=1, le=MAX_TOKENS)
    max_completion_tokens: int | None = Field(None, ge=1, le=MAX_TOKENS)
    temperature: float = Field(0.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    seed: int | None = None


class AnimateRequest(BaseModel):
    function: str = Field(max_length=MAX_FUNCTION_CHARS)
    # None: the server's setting (conf/generate `repair`, on by default); false: the model's try
    # as it is.
    repair: bool | None = None
    style: Literal["tangent", "secant", "graphs"] | None = None  # None: the model's choice


@dataclass
class Job:
    id: str
    function: str
    repair: bool | None = None
    style: str | None = None
    status: str = "queued"  # queued, generating, rendering, done, error
    messages: list[str] = field(default_factory=list)  # the lines `derivanim generate` prints
    steps: list[str] = field(default_factory=list)  # each finished step in words, with its time
    doing: str | None = None  # the step under way, in words
    outcome: dict | None = (
        None  # when it ends: {"kind": "done" | "corrected" | "failed", "text": one line}
    )
    result: dict | None = None
    error: str | None = None


@dataclass
class Settings:
    model_dir: Path
    output_dir: Path
    queue_size: int = 4
    # How scenes are written (token budget, tries, temperatures): conf/generate, as
    # `derivanim generate`.
    generation: GenerationSettings = field(default_factory=GenerationSettings.defaults)
    allow_unsandboxed: bool = False  # --unsafe-no-sandbox: the page renders without isolation


class Busy(Exception):
    pass


def _busy() -> HTTPException:
    """503 at once, with Retry-After: the openai client (and any polite one) waits and tries
    again."""
    return HTTPException(
        503, "busy: every queue slot is taken; try again in a moment", headers={"Retry-After": "1"}
    )


class ModelWorker:
    """One thread runs the model (and the page's renders); at most `queue_size` requests wait."""

    def __init__(self, generator, queue_size: int):
        self.generator = generator
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")
        self.slots = threading.BoundedSemaphore(queue_size + 1)  # the running one plus the waiting

    def submit(self, work):
        if not self.slots.acquire(blocking=False):
            raise Busy

        def run():
            try:
                return work(self.generator)
            finally:
                self.slots.release()

        return self.executor.submit(run)


def _usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def _finish_reason(stop: str) -> str:
    return "length" if stop == "max_new_tokens" else "stop"


def create_app(settings: Settings, generator=None, start_sandbox: bool = False) -> FastAPI:
    """The app for one checkpoint (`generator`: a loaded SceneGenerator; loaded from
    settings.model_dir when None). The page's scenes are written by a GenerationService, as
    `derivanim generate` writes them; its render sandbox starts with the first page job, or
    (`start_sandbox`) now, importing Manim while the model loads; it closes with the app."""
    from contextlib import asynccontextmanager

    from derivative_animator.data import prompt as prompts

    service = GenerationService(
        settings.generation, generator, allow_unsandboxed=settings.allow_unsandboxed
    )
    if start_sandbox:
        service.start_sandbox()
    try:
        generator = generator or service.load_model(settings.model_dir)
    except BaseException:
        service.close()
        raise
    model_name = tracking.checkpoint_name(settings.model_dir)  # the API's model id
    title = tracking.checkpoint_title(settings.model_dir)  # what the page calls it
    worker = ModelWorker(generator, settings.queue_size)
    jobs: OrderedDict[str, Job] = OrderedDict()
    settings.output_dir.mkdir(parents=True, exist_ok=True)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        service.close()

    app = FastAPI(title="DerivativeAnimator", docs_url="/docs", lifespan=lifespan)

    @app.middleware("http")
    async def limit_body(request: Request, call_next):
        length = request.headers.get("content-length")
        if length is not None and int(length) > MAX_BODY_BYTES:
            return JSONResponse(
                {"error": {"message": f"request body over {MAX_BODY_BYTES} bytes"}}, status_code=413
            )
        return await call_next(request)

    async def run_on_model(work):
        try:
            future = worker.submit(work)
        except Busy:
            raise _busy() from None
        return await asyncio.wrap_future(future)

    def openai_error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
        return JSONResponse(
            {"error": {"message": message, "type": "invalid_request_error"}},
            status_code=status,
            headers=headers,
        )

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException):
        return openai_error(error.status_code, str(error.detail), error.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, error: RequestValidationError):
        # One line naming each field and what it must be, in the API's own error shape.
        problems = [
            f"{'.'.join(str(part) for part in problem['loc'][1:]) or 'body'}: {problem['msg']}"
            for problem in error.errors()
        ]
        return openai_error(422, "; ".join(problems))

    @app.get("/v1/models")
    async def models():
        return {
            "object": "list",
            "data": [
                {
                    "id": model_name,
                    "object": "model",
                    "created": 0,
                    "owned_by": "derivative-animator",
                }
            ],
        }

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest):
        def work(g):
            return g.generate(
                "", body.max_tokens, body.temperature, body.top_p, body.seed, prompt=body.prompt
            )

        gen = await run_on_model(work)
        prompt_tokens = len(prompts.encode_prompt(generator.tokenizer, body.prompt))
        return {
            "id": f"cmpl-{uuid.uuid4().hex[:24]}",
            "object": "text_completion",
            "created": int(time.time()),
            "model": model_name,
            "choices": [
                {
                    "index": 0,
                    "text": gen.code,
                    "logprobs": None,
                    "finish_reason": _finish_reason(gen.stop),
                }
            ],
            "usage": _usage(prompt_tokens, gen.new_tokens),
        }

    @app.post("/v1/chat/completions")
    async def chat(body: ChatRequest):
        users = [m.content for m in body.messages if m.role == "user"]
        if not users:
            raise HTTPException(
                400,
                f"a chat request needs a user message naming the function; {prompts.ASK_LIKE_THIS}",
            )
        try:
            function = prompts.function_in_message(users[-1])
            generator.prompt_format.format(
                function
            )  # a function that does not parse: 400, not a crash
        except ValueError as err:
            raise HTTPException(400, str(err)) from None
        budget = body.max_completion_tokens or body.max_tokens or settings.generation.max_new_tokens

        def work(g):
            return g.generate(function, budget, body.temperature, body.top_p, body.seed)

        gen = await run_on_model(work)
        prompt_tokens = len(generator.prompt_ids(function))
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model_name,
            "choices": [
                {
                    "index": 0,
                    "finish_reason": _finish_reason(gen.stop),
                    "message": {"role": "assistant", "content": gen.code},
                }
            ],
            "usage": _usage(prompt_tokens, gen.new_tokens),
        }

    # --- the page -----------------------------------------------------------------------

    @app.get("/", response_class=HTMLResponse)
    async def page():
        return PAGE.replace("{model}", html.escape(title))

    @app.post("/api/animate")
    async def animate(body: AnimateRequest):
        from derivative_animator.math.parsing import ParseError, parse_function

        try:
            parse_function(body.function)
        except ParseError as err:
            raise HTTPException(400, str(err)) from None
        job = Job(uuid.uuid4().hex[:_JOB_ID_HEX], body.function, body.repair, body.style)
        try:
            worker.submit(lambda g: _animate(service, job, settings))
        except Busy:
            raise _busy() from None
        jobs[job.id] = job
        while len(jobs) > KEPT_JOBS:
            _, old = jobs.popitem(last=False)
            shutil.rmtree(settings.output_dir / old.id, ignore_errors=True)
        return {"job": job.id}

    @app.get("/api/jobs/{job_id}")
    async def job_status(job_id: str):
        job = jobs.get(job_id)
        if job is None:
            raise HTTPException(404, "no such job")
        return {
            "job": job.id,
            "function": job.function,
            "status": job.status,
            "doing": job.doing,
            "steps": job.steps,
            "outcome": job.outcome,
            "messages": job.messages,
            "result": job.result,
            "error": job.error,
        }

    @app.get("/files/{job_id}/{name}")
    async def files(job_id: str, name: str):
        path = served_file(settings.output_dir, job_id, name)
        if job_id not in jobs or path is None:
            raise HTTPException(404, "no such file")
        return FileResponse(path)

    return app


def served_file(output_dir: Path, job_id: str, name: str) -> Path | None:
    """The file `/files/{job_id}/{name}` names, or None: a job id and a file name of the shapes
    this server makes, a plain file right inside the job's folder, no link anywhere on the way."""
    if not (_JOB_ID.fullmatch(job_id) and _FILE_NAME.fullmatch(name)):
        return None
    root = output_dir.resolve()
    path = root / job_id / name
    return path if path.is_file() and path.resolve() == path else None


def _animate(service: GenerationService, job: Job, settings: Settings) -> None:
    """The page's job: verified generation as `derivanim generate` does it, then a real render.
    `result.shown` says which scene is the answer: "model" (the model's own try) or "corrected"
    (its scene with the true derivative, which passed its own checks); `result.summary` says
    what happened in words; `result.model` is always the model's own try (its code, checks and,
    when the corrected scene is shown, its own render). `job.outcome` is the last word, taken
    from the real render of the scene shown: what a person reads as the job's status."""
    from derivative_animator.errors import one_line

    try:
        job.status = "generating"
        steps = Steps(doing=lambda text: setattr(job, "doing", text), done=job.steps.append)
        written = service.write(
            job.function, job.messages.append, repair=job.repair, steps=steps, style=job.style
        )
        job.status = "rendering"
        job.messages.append("rendering the scene in the sandbox")
        directory = settings.output_dir / job.id
        directory.mkdir(parents=True, exist_ok=True)
        which = "the corrected scene" if written.corrected else "the model's scene"
        shown, result = _rendered(service, job, directory, written.code, "scene", which)
        model = shown
        if written.corrected:
            job.messages.append("rendering the model's own scene in the sandbox")
            model, _ = _rendered(
                service, job, directory, written.model_code, "model", "the model's own scene"
            )
        job.result = {**shown, "shown": written.shown, "summary": written.summary, "model": model}
        job.outcome = _outcome(written, result, job.function)
        job.status = "done"
    except Exception as error:  # noqa: BLE001 - the page shows it; the server goes on
        job.error, job.status = one_line(error), "error"
        job.outcome = {"kind": "failed", "text": f"Failed: {job.error}"}
    finally:
        job.doing = None


def _outcome(written, result, function: str) -> dict:
    """What finally happened, in one line, from the real render of the scene shown."""
    if not result.passed:
        which = "the corrected scene" if written.corrected else "the model's scene"
        return {
            "kind": "failed",
            "text": f"Failed: {which}: {verdict(result, written.code, function)}",
        }
    layout = (
        ""
        if result.layout is not False
        else (
            "; its layout check failed"
            + (f": {result.layout_problems[0]}" if result.layout_problems else "")
        )
    )
    if written.corrected:
        return {
            "kind": "corrected",
            "text": (
                "Corrected: the model's derivative was wrong "
                f"(it wrote {derivative_line(written.model_code)}); the corrected scene, "
                f"with f'(x) = {derivative_line(written.code)}, is shown{layout}"
            ),
        }
    if layout:
        return {"kind": "done", "text": f"Done: the model's scene is right and renders{layout}"}
    return {"kind": "done", "text": "Done: the model's scene passed every check"}


def _rendered(
    service: GenerationService, job: Job, directory: Path, code: str, name: str, which: str
):
    """One scene of a job written as `<name>.py` and rendered for real (its video and last frame
    `<name>.mp4`, `<name>.png` in the job's folder): what the page shows of it, and its checks.
    `which` names the scene in the job's steps."""
    import tempfile

    (directory / f"{name}.py").write_text(code)
    job.doing = f"rendering {which}'s video"
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=directory) as rendered:
        result = service.check(code, job.function, render=True, output_dir=Path(rendered))
        video = None
        if result.scene:
            for suffix in (".mp4", ".png"):
                made = Path(rendered) / f"{result.scene}{suffix}"
                if made.is_file():
                    made.replace(directory / f"{name}{suffix}")
            video = f"{name}.mp4" if (directory / f"{name}.mp4").is_file() else None
    seconds = time.perf_counter() - start
    job.steps.append(
        f"rendered {which}'s video in {seconds:.1f} s"
        if video
        else f"rendered {which} in {seconds:.1f} s, no video: {verdict(result, code, job.function)}"
    )
    return {
        "code": code,
        "checks": {k: getattr(result, k) for k in REPORTED},
        "passed": result.passed,
        "error": result.error,
        "layout_problems": result.layout_problems,
        "video": f"/files/{job.id}/{video}" if video else None,
        "poster": f"/files/{job.id}/{name}.png" if video else None,
        "download": f"/files/{job.id}/{name}.py",
    }, result


PAGE = """<!doctype html><html lang="en"><head><meta charset="utf-8">
<title>DerivativeAnimator</title><meta name="viewport" content="width=device-width,initial-scale=1">
<style>
body{font-family:system-ui,sans-serif;max-width:960px;margin:2em auto;padding:0 1em;background:#fafafa;color:#222}
form{display:flex;gap:.5em}input{flex:1;font-size:1.2em;padding:.4em}button{font-size:1.1em;padding:.4em 1em}
#status{margin:1em 0;color:#555}#status.outcome{color:#222;font-weight:bold;padding:.6em 1em;border-radius:6px;
border:1px solid #ccc;background:#fff}#status.done{border-color:#3a3;background:#efe}
#status.corrected{border-color:#d08a00;background:#fff6e0}#status.failed{border-color:#b00;background:#fee}
#steps{margin:.5em 0 1em;padding-left:1.6em;color:#444;font-size:.95em}#steps li{margin:.15em 0}
#log{margin:0 0 1em;color:#666;font-size:.85em}#log pre{max-height:200px}#error{color:#b00;margin:1em 0}video{width:100%;border-radius:6px;background:#000}
.check{display:inline-block;padding:2px 8px;border-radius:4px;margin-right:6px}.ok{background:#cfc}.bad{background:#fcc}
.skip{background:#eee}pre{background:#fff;border:1px solid #ddd;padding:1em;overflow:auto;max-height:420px;font-size:12px}
.spinner{display:inline-block;width:1em;height:1em;border:2px solid #999;border-top-color:transparent;border-radius:50%;
animation:spin 1s linear infinite;vertical-align:middle;margin-right:.4em}@keyframes spin{to{transform:rotate(360deg)}}
#verdict{margin:0 0 1em;padding:.8em 1em;border-radius:6px;border:1px solid #ccc;background:#fff}
#verdict.corrected{border-color:#d08a00;background:#fff6e0}#verdict.failed{border-color:#b00;background:#fee}
#verdict.passed{border-color:#3a3;background:#efe}
.badge{display:inline-block;font-weight:bold;text-transform:uppercase;letter-spacing:.05em;padding:2px 10px;
border-radius:4px;margin-right:.6em;color:#fff}.corrected .badge{background:#d08a00}.failed .badge{background:#b00}
.passed .badge{background:#3a3}#which{font-weight:bold;margin:.5em 0}
</style></head><body>
<h1>DerivativeAnimator</h1>
<p>Type a function as you would write it (<code>x^2 sin x</code>, <code>e^{-x^2}</code>, <code>ln(x^2+1)</code>);
model <b>{model}</b> writes a Manim scene explaining its derivative, checked and rendered.</p>
<form id="form"><input id="function" name="function" maxlength="200" placeholder="f(x) = x^2 sin(x)" autofocus>
<select id="style" aria-label="style"><option value="">the model's choice of style</option>
<option value="tangent">a tangent sliding along f</option><option value="secant">a secant becoming the tangent</option>
<option value="graphs">the rules, step by step</option></select>
<button id="go" type="submit">Animate</button></form>
<div id="error" role="alert"></div><div id="status" aria-live="polite"></div><ol id="steps"></ol>
<details id="log" hidden><summary>The same, as <code>derivanim generate</code> prints it</summary><pre id="log-lines"></pre>
</details>
<div id="result" hidden>
<div id="verdict" role="status"><span class="badge" id="badge"></span><span id="summary"></span>
<br><a href="#" id="model-toggle" hidden></a></div>
<p id="which"></p>
<video id="video" controls autoplay muted playsinline></video>
<p id="checks"></p>
<p><button id="copy" type="button">Copy code</button> <a id="download" download="scene.py">Download scene.py</a></p>
<pre id="code"></pre></div>
<script>
const $ = id => document.getElementById(id);
const esc = t => t.replace(/&/g, "&amp;").replace(/</g, "&lt;");
async function poll(job) {
  const r = await fetch(`/api/jobs/${job}`); const s = await r.json();
  const ended = s.status === "done" || s.status === "error";
  $("status").className = ended && s.outcome ? "outcome " + s.outcome.kind : "";
  $("status").innerHTML = ended ? esc(s.outcome ? s.outcome.text : "Failed: " + (s.error || "the job stopped"))
    : '<span class="spinner"></span>' + esc(s.doing || (s.status === "queued" ? "waiting for the model" : s.status));
  $("steps").innerHTML = s.steps.map(t => `<li>${esc(t)}</li>`).join("");
  $("log").hidden = !s.messages.length; $("log-lines").textContent = s.messages.join("\\n");
  if (s.status === "error") { $("go").disabled = false; return; }
  if (!ended) { setTimeout(() => poll(job), 500); return; }
  const res = s.result; $("go").disabled = false; $("result").hidden = false; shown = res;
  const corrected = res.shown === "corrected";
  $("verdict").className = corrected ? "corrected" : res.passed ? "passed" : "failed";
  $("badge").textContent = corrected ? "Corrected" : res.passed ? "Passed" : "Failing";
  $("summary").textContent = res.summary || "";
  $("model-toggle").hidden = !corrected; showScene(res, corrected ? "the corrected scene" : "");
}
let shown = null;
function showScene(scene, label) {
  $("which").textContent = label ? "Showing: " + label : "";
  if (shown && shown.shown === "corrected")
    $("model-toggle").textContent = scene === shown ? "See the model's own scene (its derivative is wrong)"
      : "Back to the corrected scene";
  $("checks").innerHTML = Object.entries(scene.checks).map(([k, v]) =>
    `<span class="check ${v === true ? "ok" : v === false ? "bad" : "skip"}" data-check="${k}">${k}</span>`).join("")
    + (scene.error ? `<br><small>${esc(scene.error)}</small>` : "")
    + (scene.layout_problems || []).slice(0, 5).map(p => `<br><small class="layout-problem">layout: ${esc(p)}</small>`).join("");
  $("code").textContent = scene.code; $("download").href = scene.download;
  if (scene.video) { $("video").poster = scene.poster; $("video").src = scene.video; $("video").hidden = false; }
  else { $("video").removeAttribute("src"); $("video").hidden = true; }
}
$("model-toggle").addEventListener("click", e => {
  e.preventDefault();
  if ($("which").textContent.includes("model's own")) showScene(shown, "the corrected scene");
  else showScene(shown.model, "the model's own scene (not the answer: its derivative is wrong)");
});
$("form").addEventListener("submit", async e => {
  e.preventDefault(); $("error").textContent = ""; $("result").hidden = true;
  $("status").className = ""; $("status").textContent = ""; $("steps").innerHTML = ""; $("log").hidden = true;
  const r = await fetch("/api/animate", {method: "POST", headers: {"Content-Type": "application/json"},
    body: JSON.stringify({function: $("function").value, style: $("style").value || null})});
  const s = await r.json();
  if (!r.ok) { $("error").textContent = s.error ? s.error.message : "request failed"; return; }
  $("go").disabled = true; poll(s.job);
});
$("copy").addEventListener("click", () => navigator.clipboard.writeText($("code").textContent));
</script></body></html>"""  # noqa: E501


def run(args) -> int:
    """Serve until interrupted (`derivanim serve`, cli.py, parses and checks the arguments)."""
    import uvicorn

    settings = Settings(
        model_dir=paths.resolve(args.model),
        output_dir=paths.resolve(args.output_dir),
        queue_size=args.queue,
        generation=GenerationSettings.defaults().changed(video_quality=args.quality),
        allow_unsandboxed=args.unsafe_no_sandbox,
    )
    app = create_app(settings, start_sandbox=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="info")
    return 0
