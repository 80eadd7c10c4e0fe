"""Load test of `derivanim serve` (make load-test): a burst of requests on loopback, and what
came back.

    python scripts/load_test.py --model outputs/train/<run>/checkpoint/merged
    python scripts/load_test.py --model DIR --requests 40 --concurrency 8 --queue 1
        --json summary.json

Starts the server itself (`derivanim serve`, 127.0.0.1 only, a free port, its own output
folder and TMPDIR) and runs one page job to warm it (that starts the render sandbox), then
sends `--requests` requests from `--concurrency` clients: `/v1/completions` and
`/v1/chat/completions` with `--max-tokens` tokens, and every `--page-every`-th a page job
(`/api/animate`: verified generation and a sandboxed render, polled until done); a client
answered "busy" waits `--busy-pause` before its next request (the server says Retry-After). Every
request must be answered with a result or 503 "busy" (the bounded queue): anything else
(an error status, a failed job, a timeout, a refused connection) fails the test. Then the
server must still answer, no process it started may outlive its work (its process tree is
compared with the one it had before the burst) and no temp file or dir may be left in its
TMPDIR; after it is stopped, none of its processes may be left. Prints a table of outcomes
and latency percentiles; exits 1 when any of that fails, 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from screenshots import free_port  # scripts/: the one helper that picks a free loopback port

ROOT = Path(__file__).resolve().parents[1]
FUNCTIONS = ("x^2", "sin(x)", "x e^x", "ln(x^2 + 1)", "cos(x)^2", "e^{-x^2}", "sqrt(x)", "x^3 - 2x")
OK = ("result", "busy")


@dataclass
class Outcome:
    kind: str  # result, busy, or what went wrong (HTTP 500, job error, timeout, ...)
    seconds: float
    endpoint: str
    detail: str = ""


@dataclass
class Summary:
    requests: int
    concurrency: int
    queue: int
    wall_s: float = 0.0
    counts: dict[str, int] = field(default_factory=dict)
    by_endpoint: dict[str, dict[str, int]] = field(default_factory=dict)
    latency_s: dict[str, dict[str, float]] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)  # the first few unexpected answers
    loopback_only: bool = False
    up_after: bool = False
    processes_before: list[str] = field(default_factory=list)
    leaked_processes: list[str] = field(default_factory=list)  # new in the server's tree once idle
    leaked_temp: list[str] = field(default_factory=list)  # left in its TMPDIR once idle
    temp_at_start: list[str] = field(
        default_factory=list
    )  # what its startup wrote (torch's cache dir)
    left_after_stop: list[str] = field(default_factory=list)  # its processes alive after it stopped
    temp_after_stop: list[str] = field(
        default_factory=list
    )  # in its TMPDIR after it stopped, beyond the start's
    warm_page_job: str = ""  # the page job before the burst (it starts the render sandbox)
    stopped_cleanly: bool = False

    @property
    def ok(self) -> bool:
        return (
            sum(self.counts.values()) == self.requests
            and set(self.counts) <= set(OK)
            and self.warm_page_job == "done"
            and self.loopback_only
            and self.up_after
            and not self.leaked_processes
            and not self.leaked_temp
            and not self.left_after_stop
            and not self.temp_after_stop
            and self.stopped_cleanly
        )


def process_tree(pid: int) -> dict[int, str]:
    """Every live descendant of `pid` (from /proc): pid -> its command name."""
    children: dict[int, list[int]] = {}
    names: dict[int, str] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue  # it just exited
        child = int(stat.parent.name)
        names[child] = text[text.find("(") + 1 : text.rfind(")")]
        children.setdefault(int(text[text.rfind(")") + 2 :].split()[1]), []).append(child)
    found: dict[int, str] = {}
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found[child] = names[child]
                todo.append(child)
    return found


def listening_addresses(port: int) -> set[str]:
    """The local addresses sockets listen on at `port` (/proc/net/tcp, tcp6), as hex."""
    addresses = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            local, _, state = line.split()[1:4]
            address, _, hex_port = local.partition(":")
            if state == "0A" and int(hex_port, 16) == port:
                addresses.add(address)
    return addresses


LOOPBACK = {
    "0100007F",
    "00000000000000000000000001000000",
}  # 127.0.0.1 and ::1 as /proc writes them


def call(
    url: str, payload: dict | None = None, timeout: float = 120
) -> tuple[int, dict | None, str]:
    """(status, JSON body or None, text) of a GET, or of a POST of `payload`."""
    data = json.dumps(payload).encode() if payload is not None else None
    request = urllib.request.Request(
        url, data=data, headers={"content-type": "application/json"} if data else {}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, body = response.status, response.read()
    except urllib.error.HTTPError as error:
        status, body = error.code, error.read()
    text = body.decode(errors="replace")
    try:
        return status, json.loads(text), text
    except ValueError:
        return status, None, text


def _busy(status: int, body: dict | None) -> bool:
    return status == 503 and "busy" in str((body or {}).get("error", {}).get("message", ""))


def page_job(base: str, function: str, args) -> tuple[int, dict | None, str]:
    """POST /api/animate, then poll the job until it is done or failed: (status, job or body,
    text)."""
    status, body, text = call(f"{base}/api/animate", {"function": function}, args.timeout)
    if status != 200 or not body or "job" not in body:
        return status, body, text
    deadline = time.monotonic() + args.job_timeout
    while True:
        status, job, text = call(f"{base}/api/jobs/{body['job']}", timeout=args.timeout)
        if status != 200 or not job or job.get("status") in ("done", "error"):
            return status, job, text
        if time.monotonic() > deadline:
            raise TimeoutError(f"job {body['job']} timed out after {args.job_timeout:.0f} s")
        time.sleep(0.25)


def one_request(base: str, index: int, args, prompt_format) -> Outcome:
    """Request `index` and its outcome; after "busy" this client pauses (--busy-pause) before its
    next."""
    outcome = _one_request(base, index, args, prompt_format)
    if outcome.kind == "busy":
        time.sleep(args.busy_pause)
    return outcome


def _one_request(base: str, index: int, args, prompt_format) -> Outcome:
    function = FUNCTIONS[index % len(FUNCTIONS)]
    started = time.perf_counter()
    page = args.page_every > 0 and index % args.page_every == args.page_every - 1
    endpoint = "page" if page else ("completions" if index % 2 == 0 else "chat")
    try:
        if page:
            status, body, text = page_job(base, function, args)
            if status == 200 and body and "job" in body:
                if body["status"] == "done" and body.get("result"):
                    return Outcome("result", time.perf_counter() - started, endpoint)
                return Outcome(
                    "job error",
                    time.perf_counter() - started,
                    endpoint,
                    str(body.get("error"))[:200],
                )
        elif endpoint == "completions":
            status, body, text = call(
                f"{base}/v1/completions",
                {
                    "prompt": prompt_format.format(function),
                    "max_tokens": args.max_tokens,
                    "temperature": 0,
                },
                args.timeout,
            )
        else:
            status, body, text = call(
                f"{base}/v1/chat/completions",
                {
                    "messages": [
                        {"role": "user", "content": f"Animate the derivative of f(x) = {function}"}
                    ],
                    "max_tokens": args.max_tokens,
                    "temperature": 0,
                },
                args.timeout,
            )
    except (OSError, TimeoutError) as error:  # refused, reset, timed out
        kind = "timeout" if "timed out" in str(error) else type(error).__name__
        return Outcome(kind, time.perf_counter() - started, endpoint, str(error)[:200])
    seconds = time.perf_counter() - started
    if _busy(status, body):
        return Outcome("busy", seconds, endpoint)
    if status == 200 and body and body.get("choices"):
        return Outcome("result", seconds, endpoint)
    return Outcome(f"HTTP {status}", seconds, endpoint, text[:200])


def percentiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 3)

    return {"p50": at(0.50), "p90": at(0.90), "p99": at(0.99), "max": round(ordered[-1], 3)}


@dataclass
class Server:
    process: subprocess.Popen
    base: str
    port: int
    temp: Path
    output: Path
    log: Path


def start_server(args, work: Path) -> Server:
    port = free_port()
    temp, output, log = work / "tmp", work / "served", work / "server.log"
    temp.mkdir()
    command = [
        str(Path(sys.executable).parent / "derivanim"),
        "serve",
        "--model",
        str(args.model),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--queue",
        str(args.queue),
        "--output-dir",
        str(output),
    ]
    with log.open("wb") as sink:
        process = subprocess.Popen(
            command,
            cwd=ROOT,
            stdout=sink,
            stderr=subprocess.STDOUT,
            env={**os.environ, **dict(args.server_env), "TMPDIR": str(temp)},
        )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + args.start_timeout
    while True:
        try:
            if call(f"{base}/v1/models", timeout=5)[0] == 200:
                return Server(process, base, port, temp, output, log)
        except OSError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            process.wait()
            tail = log.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"the server did not start (exit {process.poll()}):\n{tail}")
        time.sleep(0.5)


def stop_server(server: Server, summary: Summary, tree: dict[int, str]) -> None:
    """SIGINT (uvicorn's graceful stop), then: is any process it ever had still alive?"""
    server.process.send_signal(signal.SIGINT)
    try:
        server.process.wait(60)
        summary.stopped_cleanly = True
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait()
    deadline = time.monotonic() + 10.0  # a sandbox's teardown can lag its parent on a busy machine
    while True:
        alive = [f"{pid} {name}" for pid, name in tree.items() if _running(pid) == name]
        if not alive or time.monotonic() > deadline:
            break
        time.sleep(0.25)
    summary.left_after_stop = alive
    summary.temp_after_stop = sorted(
        {p.name for p in server.temp.iterdir()} - set(summary.temp_at_start)
    )
    for line in alive:  # never leave them behind, whatever the verdict
        try:
            os.kill(int(line.split()[0]), signal.SIGKILL)
        except OSError:
            pass


def _running(pid: int) -> str | None:
    """The command name of `pid` while it runs; None once it has exited (a zombie has exited:
    only its parent, or an init that does not reap, still holds its entry)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    if text[text.rfind(")") + 2 :].split()[0] in ("Z", "X"):
        return None
    return text[text.find("(") + 1 : text.rfind(")")]


def run(args) -> Summary:
    from derivative_animator.data.prompt import PromptFormat

    prompt_format = PromptFormat.load(args.model)
    summary = Summary(args.requests, args.concurrency, args.queue)
    work = Path(tempfile.mkdtemp(prefix="derivanim-load-"))
    try:
        server = start_server(args, work)
        try:
            summary.loopback_only = (
                bool(listening := listening_addresses(server.port)) and listening <= LOOPBACK
            )
            call(
                f"{server.base}/v1/completions",
                {"prompt": prompt_format.format("x"), "max_tokens": 2},
            )  # warm
            status, job, text = page_job(server.base, "x^2", args)
            summary.warm_page_job = (
                job.get("status", text[:200]) if status == 200 and job else f"HTTP {status}"
            )
            before = process_tree(server.process.pid)
            temp_before = {p.name for p in server.temp.iterdir()}
            summary.temp_at_start = sorted(temp_before)
            summary.processes_before = [f"{pid} {name}" for pid, name in sorted(before.items())]
            started = time.perf_counter()
            with ThreadPoolExecutor(max_workers=args.concurrency) as pool:
                outcomes = list(
                    pool.map(
                        lambda i: one_request(server.base, i, args, prompt_format),
                        range(args.requests),
                    )
                )
            summary.wall_s = round(time.perf_counter() - started, 1)
            for outcome in outcomes:
                summary.counts[outcome.kind] = summary.counts.get(outcome.kind, 0) + 1
                endpoint = summary.by_endpoint.setdefault(outcome.endpoint, {})
                endpoint[outcome.kind] = endpoint.get(outcome.kind, 0) + 1
                if outcome.kind not in OK and len(summary.failures) < 10:
                    summary.failures.append(
                        f"{outcome.endpoint}: {outcome.kind} {outcome.detail}".strip()
                    )
            for kind in summary.counts:
                summary.latency_s[kind] = percentiles(
                    [o.seconds for o in outcomes if o.kind == kind]
                )
            # Still up: the model list, and a completion (retried while a straggler holds the
            # queue).
            summary.up_after = call(f"{server.base}/v1/models")[0] == 200
            for _ in range(20):
                status, body, _text = call(
                    f"{server.base}/v1/completions",
                    {"prompt": prompt_format.format("x^2"), "max_tokens": 4},
                )
                if not _busy(status, body):
                    break
                time.sleep(0.5)
            summary.up_after = summary.up_after and status == 200
            time.sleep(args.settle)  # a render's child exits after its reply
            after = process_tree(server.process.pid)
            summary.leaked_processes = [
                f"{pid} {name}" for pid, name in sorted(after.items()) if pid not in before
            ]
            summary.leaked_temp = sorted({p.name for p in server.temp.iterdir()} - temp_before)
            tree = {**before, **after}
        except BaseException:
            tree = process_tree(server.process.pid)
            stop_server(server, summary, tree)
            raise
        stop_server(server, summary, tree)
    finally:
        if args.keep:
            print(f"kept {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    return summary


def table(summary: Summary) -> str:
    total = sum(summary.counts.values())
    lines = [
        f"{summary.requests} requests, {summary.concurrency} concurrent, queue {summary.queue}, "
        f"{summary.wall_s:.1f} s wall",
        "",
        f"{'outcome':<14}{'count':>6}{'share':>8}  "
        f"{'p50 s':>7}{'p90 s':>7}{'p99 s':>7}{'max s':>7}",
    ]
    for kind in sorted(
        summary.counts, key=lambda k: (k not in OK, OK.index(k) if k in OK else 0, k)
    ):
        n, lat = summary.counts[kind], summary.latency_s[kind]
        lines.append(
            f"{kind:<14}{n:>6}{100 * n / total:>7.1f}%  {lat['p50']:>7.3f}{lat['p90']:>7.3f}"
            f"{lat['p99']:>7.3f}{lat['max']:>7.3f}"
        )
    lines.append("")
    for endpoint, counts in sorted(summary.by_endpoint.items()):
        lines.append(f"{endpoint:<14}" + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    lines += [
        "",
        f"warm-up page job          {summary.warm_page_job}",
        f"loopback only             {'yes' if summary.loopback_only else 'NO'}",
        f"up afterwards             {'yes' if summary.up_after else 'NO'}",
        f"server processes          {len(summary.processes_before)} before the burst "
        f"({', '.join(p.split()[1] for p in summary.processes_before) or 'none'})",
        (
            f"leaked processes          {len(summary.leaked_processes)} "
            f"{' '.join(summary.leaked_processes)}"
        ).rstrip(),
        f"temp at startup           {' '.join(summary.temp_at_start) or 'none'}",
        (
            f"leaked temp files/dirs    {len(summary.leaked_temp)} {' '.join(summary.leaked_temp)}"
        ).rstrip(),
        f"stopped on SIGINT         {'yes' if summary.stopped_cleanly else 'NO (killed)'}",
        (
            f"left after it stopped     {len(summary.left_after_stop)} processes, "
            f"{len(summary.temp_after_stop)} new temp entries "
            f"{' '.join(summary.left_after_stop + summary.temp_after_stop)}"
        ).rstrip(),
    ]
    lines += [f"unexpected: {failure}" for failure in summary.failures]
    lines.append("PASS" if summary.ok else "FAIL")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="a merged checkpoint dir")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument(
        "--queue", type=int, default=4, help="the server's --queue (requests that may wait)"
    )
    parser.add_argument("--max-tokens", type=int, default=16, help="tokens per API request")
    parser.add_argument(
        "--page-every", type=int, default=25, help="every Nth request is a page job (0: none)"
    )
    parser.add_argument("--timeout", type=float, default=120, help="seconds per HTTP request")
    parser.add_argument(
        "--job-timeout", type=float, default=600, help="seconds a page job may take"
    )
    parser.add_argument("--start-timeout", type=float, default=300)
    parser.add_argument(
        "--busy-pause",
        type=float,
        default=0.5,
        help="seconds a client waits after a busy answer before its next request",
    )
    parser.add_argument(
        "--server-env",
        action="append",
        default=[],
        type=lambda kv: tuple(kv.split("=", 1)),
        metavar="NAME=VALUE",
        help="an environment variable for the server (repeatable)",
    )
    parser.add_argument(
        "--settle", type=float, default=2.0, help="seconds to wait before counting processes"
    )
    parser.add_argument("--json", type=Path, help="also write the summary here")
    parser.add_argument(
        "--keep", action="store_true", help="keep the server's folder (log, outputs, TMPDIR)"
    )
    args = parser.parse_args(argv)
    args.model = Path(args.model).resolve()
    if not (args.model / "config.json").is_file():
        print(f"error: {args.model} is not a merged checkpoint (no config.json)", file=sys.stderr)
        return 2
    if args.requests < 1 or args.concurrency < 1 or args.queue < 0 or args.max_tokens < 1:
        print(
            "error: --requests, --concurrency and --max-tokens must be 1 or more, "
            "--queue 0 or more",
            file=sys.stderr,
        )
        return 2
    summary = run(args)
    print(table(summary))
    if args.json:
        args.json.write_text(json.dumps({**asdict(summary), "ok": summary.ok}, indent=2))
    return 0 if summary.ok else 1


if __name__ == "__main__":
    sys.exit(main())
