"""The README's screenshots, taken in headless Chromium (Debian's, driven by Playwright):

- docs/mlflow_runs.png: the MLflow UI on this project's store, the fine-tuning experiment's runs
  table (its Dataset and Model columns);
- docs/mlflow_compare.png: MLflow's comparison of a sweep's runs (tag sweep=<name>, the newest);
- docs/serve_page.png: `derivanim serve` on the newest checkpoint after animating a function.

    python scripts/screenshots.py                       # all three
    python scripts/screenshots.py --only serve --function "x^2 sin x"
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
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
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
        chromium = playwright.chromium.launch(executable_path=shutil.which("chromium"), args=["--no-sandbox"])
        try:
            yield chromium.new_page(viewport={"width": 1900, "height": 900})
        finally:
            chromium.close()


def close_assistant(page) -> None:
    """MLflow 3.17 opens an assistant panel beside the table; close it when it is there."""
    panel = page.get_by_text("MLflow Assistant")
    if panel.count():
        box = panel.first.bounding_box()
        buttons = [b for b in page.locator("button").all() if (bb := b.bounding_box()) and box
                   and abs(bb["y"] - box["y"]) < 30 and bb["x"] > box["x"]]
        if buttons:
            buttons[-1].click()
            page.wait_for_timeout(1000)


def mlflow_shots(only: str | None) -> None:
    import mlflow

    client = mlflow.MlflowClient(STORE)
    experiment = client.get_experiment_by_name("derivative-animator")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", STORE, "--default-artifact-root",
               str(ROOT / "mlruns" / "artifacts"), "--host", "127.0.0.1", "--port", str(port)]
    with background(command, url), browser() as page:
        if only in (None, "runs"):
            page.goto(f"{url}/#/experiments/{experiment.experiment_id}/runs")
            page.wait_for_timeout(8000)
            close_assistant(page)
            page.screenshot(path=str(ROOT / "docs" / "mlflow_runs.png"))
        if only in (None, "compare"):
            runs = client.search_runs([experiment.experiment_id], "tags.sweep != ''", order_by=["start_time DESC"])
            if not runs:
                print("no sweep runs: run a sweep first (make sweep)", file=sys.stderr)
                return
            sweep = runs[0].data.tags["sweep"]
            ids = [r.info.run_id for r in runs if r.data.tags.get("sweep") == sweep]
            page.goto(f"{url}/#/compare-runs?runs={json.dumps(ids)}&experiments={json.dumps([experiment.experiment_id])}")
            page.wait_for_timeout(8000)
            page.screenshot(path=str(ROOT / "docs" / "mlflow_compare.png"), full_page=True)


def serve_shot(function: str) -> None:
    model = sorted((ROOT / "outputs" / "train").glob("*/checkpoint/merged"))[-1]
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [str(ROOT / ".venv" / "bin" / "derivanim"), "serve", "--model", str(model), "--port", str(port)]
    with background(command, url, timeout=300), browser() as page:
        page.goto(url)
        page.fill("#function", function)
        page.click("#go")
        page.wait_for_selector("#result:not([hidden])", timeout=300_000)
        page.wait_for_function("document.getElementById('video').readyState >= 2", timeout=30_000)
        page.evaluate("v => { const e = document.getElementById('video'); e.pause(); e.currentTime = e.duration * 0.7; }",
                      None)
        page.wait_for_timeout(1500)
        page.screenshot(path=str(ROOT / "docs" / "serve_page.png"), full_page=False)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=["runs", "compare", "serve"])
    parser.add_argument("--function", default="x^2 sin(x)")
    args = parser.parse_args()
    if args.only in (None, "runs", "compare"):
        mlflow_shots(args.only)
    if args.only in (None, "serve"):
        serve_shot(args.function)
    return 0


if __name__ == "__main__":
    sys.exit(main())
