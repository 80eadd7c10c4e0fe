"""The README's screenshots, taken in headless Chromium (Debian's, driven by Playwright):

- docs/mlflow_runs.png: the MLflow UI on this project's store, the fine-tuning experiment's runs
  table (its Dataset and Model columns);
- docs/mlflow_compare.png: MLflow's comparison of a sweep's runs (tag sweep=<name>: --sweep, else
  the newest): the parallel-coordinates plot of lora/r against val/math and val/loss, and the
  parameters and metrics that differ;
- docs/serve_page.png: `derivanim serve` on the newest checkpoint after animating a function;
- docs/screenshots/: the page in each style, on a function with poles and on a derivative the
  model gets wrong (shown corrected).

    python scripts/screenshots.py                       # all three
    python scripts/screenshots.py --only serve --function "x^2 sin x" --style graphs
    python scripts/screenshots.py --only compare --sweep lora_rank_quick
    python scripts/screenshots.py --only set --corrected "(2x - 5)^3"
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STORE = f"sqlite:///{ROOT}/mlruns/mlflow.db"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def background(command: list[str], url: str, timeout: float = 120):
    """A server started for the screenshot, waited for, stopped afterwards."""
    process = subprocess.Popen(
        command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(url, timeout=2)
            break
        except OSError:
            if time.monotonic() > deadline or process.poll() is not None:
                process.kill()
                raise RuntimeError(f"{command[0]} did not start ({url})") from None
            time.sleep(0.5)
    try:
        yield
    finally:
        process.terminate()
        process.wait(10)


@contextmanager
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=shutil.which("chromium"), args=["--no-sandbox"]
        )
        try:
            yield chromium.new_page(viewport={"width": 1900, "height": 900})
        finally:
            chromium.close()


def close_assistant(page) -> None:
    """MLflow 3.17 opens an assistant panel beside the table; close it when it is there."""
    panel = page.get_by_text("MLflow Assistant")
    if panel.count():
        box = panel.first.bounding_box()
        buttons = [
            b
            for b in page.locator("button").all()
            if (bb := b.bounding_box())
            and box
            and abs(bb["y"] - box["y"]) < 30
            and bb["x"] > box["x"]
        ]
        if buttons:
            buttons[-1].click()
            page.wait_for_timeout(1000)


def compare_by(page, metrics: list[str]) -> None:
    """The comparison's parallel-coordinates plot on `metrics` (it opens on the first metric
    logged, train/loss_step), its parameters and metrics tables showing only what differs."""
    select = page.locator("div:text-is('Metrics:') + div")
    for remove in select.locator("[class$='select-selection-item-remove']").all():
        remove.click()
    for metric in metrics:  # the list stays open after a choice (a multiple select)
        option = page.locator(f"[class*='select-item-option'][title='{metric}']")
        if not option.is_visible():
            select.click()
        option.click()
    page.keyboard.press("Escape")
    for table in ("Parameters", "Metrics"):
        page.get_by_label(f"{table} - Show diff only").click()
    page.evaluate(
        "document.querySelectorAll('*').forEach(e => { if (e.scrollTop) e.scrollTop = 0; })"
    )
    page.wait_for_timeout(1500)


def mlflow_shots(only: str | None, sweep: str | None = None) -> None:
    import mlflow

    client = mlflow.MlflowClient(STORE)
    experiment = client.get_experiment_by_name("derivative-animator")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [
        sys.executable,
        "-m",
        "mlflow",
        "ui",
        "--backend-store-uri",
        STORE,
        "--default-artifact-root",
        str(ROOT / "mlruns" / "artifacts"),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    with background(command, url), browser() as page:
        if only in (None, "runs"):
            page.goto(f"{url}/#/experiments/{experiment.experiment_id}/runs")
            page.wait_for_timeout(8000)
            close_assistant(page)
            page.screenshot(path=str(ROOT / "docs" / "mlflow_runs.png"))
        if only in (None, "compare"):
            wanted = f"tags.sweep = '{sweep}'" if sweep else "tags.sweep != ''"
            runs = client.search_runs(
                [experiment.experiment_id], wanted, order_by=["start_time DESC"]
            )
            if not runs:
                print(
                    f"no runs of sweep {sweep or '(any)'}: run a sweep first (make sweep)",
                    file=sys.stderr,
                )
                return
            sweep = runs[0].data.tags["sweep"]
            ids = [r.info.run_id for r in runs if r.data.tags.get("sweep") == sweep]
            # Its page scrolls inside a panel: a tall window shows plot, runs, parameters and
            # metrics.
            page.set_viewport_size({"width": 1900, "height": 2600})
            page.goto(
                f"{url}/#/compare-runs?runs={json.dumps(ids)}&experiments={json.dumps([experiment.experiment_id])}"
            )
            page.wait_for_timeout(8000)
            close_assistant(page)
            compare_by(page, ["val/math", "val/loss"])
            artifacts = page.get_by_text("Artifacts", exact=True).first.bounding_box()
            page.screenshot(
                path=str(ROOT / "docs" / "mlflow_compare.png"),
                clip={
                    "x": 0,
                    "y": 0,
                    "width": 1900,
                    "height": artifacts["y"] - 10 if artifacts else 2600,
                },
            )


# The page's screenshot set (issue 29): each style, a function with poles, and a derivative the
# model gets wrong, shown corrected. (file name, function, style; "" is the model's choice)
SET = {
    "tangent": ("x^2 sin(x)", "tangent"),
    "secant": ("e^(-x^2)", "secant"),
    "graphs": ("sin(x)cos(x)", "graphs"),
    "pole": ("tan(x)", ""),
}


@contextmanager
def serving():
    """`derivanim serve` on the newest checkpoint, with a browser page: yields (page, url)."""
    model = sorted((ROOT / "outputs" / "train").glob("*/checkpoint/merged"))[-1]
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [
        str(ROOT / ".venv" / "bin" / "derivanim"),
        "serve",
        "--model",
        str(model),
        "--port",
        str(port),
    ]
    with background(command, url, timeout=300), browser() as page:
        yield page, url


def page_shot(page, url: str, function: str, style: str, at: float, output: Path) -> None:
    page.goto(url)
    page.fill("#function", function)
    page.select_option("#style", style)
    page.click("#go")
    page.wait_for_selector("#result:not([hidden])", timeout=300_000)
    page.wait_for_function("document.getElementById('video').readyState >= 2", timeout=30_000)
    page.evaluate(
        "v => { const e = document.getElementById('video'); e.pause(); "
        f"e.currentTime = e.duration * {at}; }}",
        None,
    )
    page.wait_for_timeout(1500)
    output.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(output), full_page=False)


def serve_shot(function: str, style: str, at: float) -> None:
    with serving() as (page, url):
        page_shot(page, url, function, style, at, ROOT / "docs" / "serve_page.png")


def set_shots(corrected: str, at: float) -> None:
    """docs/screenshots/: the page in each style, on a pole, and on a corrected derivative."""
    shots = {**SET, "corrected": (corrected, "")}
    with serving() as (page, url):
        for name, (function, style) in shots.items():
            page_shot(page, url, function, style, at, ROOT / "docs" / "screenshots" / f"{name}.png")
            print(f"docs/screenshots/{name}.png: {function} ({style or 'the model picks'})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=["runs", "compare", "serve", "set"])
    parser.add_argument("--function", default="x^2 sin(x)")
    parser.add_argument(
        "--style",
        default="graphs",
        choices=["", "tangent", "secant", "graphs"],
        help="the page's style selector ('': the model's choice)",
    )
    parser.add_argument(
        "--corrected",
        default="(2x - 5)^3",
        help="the set's function whose derivative the model gets wrong (shown corrected)",
    )
    parser.add_argument(
        "--sweep", help="the sweep to compare (its tag sweep=NAME); default: the newest"
    )
    parser.add_argument(
        "--at", type=float, default=0.97, help="the video's moment shown, as a share of its length"
    )
    args = parser.parse_args()
    if args.only in (None, "runs", "compare"):
        mlflow_shots(args.only, args.sweep)
    if args.only in (None, "serve"):
        serve_shot(args.function, args.style, args.at)
    if args.only in (None, "set"):
        set_shots(args.corrected, args.at)
    return 0


if __name__ == "__main__":
    sys.exit(main())
