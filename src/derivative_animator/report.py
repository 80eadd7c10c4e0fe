"""Evaluation reports: results.json, results.csv, a Markdown and a LaTeX table for the
paper, and an HTML gallery with one card per sample (checks, code, last rendered frame)."""

from __future__ import annotations

import csv
import html
import json
import os
from pathlib import Path

COLUMNS = (("syntax", "Syntax"), ("structure", "Structure"), ("executes", "Executes"),
           ("math", "Math"), ("passed", "All four"))
BASELINE_NAMES = {"template": "Template oracle", "base": "Base model (no fine-tuning)",
                  "finetuned": "Fine-tuned (raw)", "self_consistency": "Fine-tuned + self-consistency (no oracle)",
                  "verified": "Fine-tuned + verification"}


def _groups(summary: dict):
    for baseline, groups in summary.items():
        for group, values in groups.items():
            yield baseline, group, values


def markdown_table(summary: dict) -> str:
    lines = ["| baseline | level | n | " + " | ".join(t for _, t in COLUMNS) + " | gen s (median) | tokens/s |",
             "|---|---|---|" + "---|" * len(COLUMNS) + "---|---|"]
    for baseline, group, v in _groups(summary):
        level = "all" if group == "all" else group.replace("level", "L")
        cells = " | ".join(f"{v[k]:.1f}%" for k, _ in COLUMNS)
        lines.append(f"| {BASELINE_NAMES.get(baseline, baseline)} | {level} | {v['n']} | {cells} | "
                     f"{v['generation_s_median']:.2f} | {v['tokens_per_s_median']:.0f} |")
    extras = [f"pass@{k.split('@')[1]} {v[k]:.1f}%" for _, g, v in _groups(summary) if g == "all"
              for k in v if k.startswith("pass@")]
    if extras:
        lines += ["", "Fine-tuned, sampled: " + ", ".join(extras)]
    return "\n".join(lines)


def latex_table(summary: dict) -> str:
    lines = [r"\begin{tabular}{llr" + "r" * len(COLUMNS) + "r}", r"\toprule",
             "Baseline & Level & $n$ & " + " & ".join(t for _, t in COLUMNS) + r" & Gen.\ s \\", r"\midrule"]
    for baseline, group, v in _groups(summary):
        level = "all" if group == "all" else group.replace("level", "")
        cells = " & ".join(f"{v[k]:.1f}" for k, _ in COLUMNS)
        name = BASELINE_NAMES.get(baseline, baseline).replace("+", r"$+$")
        lines.append(f"{name} & {level} & {v['n']} & {cells} & {v['generation_s_median']:.2f} \\\\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


def _card(row: dict, report_dir: Path, run_dir: Path) -> str:
    marks = " ".join(
        f'<span class="{"ok" if row[k] else ("skip" if row[k] is None else "bad")}">{k}</span>'
        for k in ("syntax", "structure", "executes", "math"))
    code = html.escape((run_dir / row["code_path"]).read_text()[:6000]) if row["code_path"] else ""
    image = ""
    if row.get("frame_path"):
        image = f'<img src="{html.escape(os.path.relpath(run_dir / row["frame_path"], report_dir))}" loading="lazy">'
    error = f'<p class="error">{html.escape(row["error"])}</p>' if row.get("error") else ""
    attempt = f" · attempt {row['attempts_tried']}" if row["baseline"] == "verified" else ""
    return (f'<div class="card {"pass" if row["passed"] else "fail"}"><h3>f(x) = {html.escape(row["function"])}</h3>'
            f'<p>{BASELINE_NAMES.get(row["baseline"], row["baseline"])} · level {row["level"]} · '
            f'{row["generation_s"]:.2f} s{attempt}</p><p>{marks}</p>{error}{image}'
            f'<details><summary>code</summary><pre>{code}</pre></details></div>')


def gallery(results: dict, report_dir: Path, run_dir: Path) -> str:
    style = ("body{font-family:sans-serif;margin:2em;background:#fafafa}"
             ".grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(360px,1fr));gap:1em}"
             ".card{background:#fff;border-radius:8px;padding:1em;box-shadow:0 1px 3px #0002}"
             ".card.fail{border-left:4px solid #c33}.card.pass{border-left:4px solid #3a3}"
             ".card img{width:100%;border-radius:4px}.ok,.bad,.skip{padding:2px 6px;border-radius:4px;margin-right:4px}"
             ".ok{background:#cfc}.bad{background:#fcc}.skip{background:#eee}.error{color:#a00;font-size:90%}"
             "pre{font-size:11px;overflow:auto;max-height:300px}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:4px 8px}")
    table = markdown_to_html(markdown_table(results["summary"]))
    sections = []
    for baseline in dict.fromkeys(r["baseline"] for r in results["rows"]):
        cards = "".join(_card(r, report_dir, run_dir) for r in results["rows"] if r["baseline"] == baseline)
        sections.append(f"<h2>{BASELINE_NAMES.get(baseline, baseline)}</h2><div class='grid'>{cards}</div>")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>DerivativeAnimator evaluation</title>"
            f"<style>{style}</style></head><body><h1>DerivativeAnimator evaluation</h1>"
            f"<p>model: {html.escape(str(results['model']))} · {results['samples']} functions</p>"
            f"{table}{''.join(sections)}</body></html>")


def markdown_to_html(table: str) -> str:
    rows = [line.strip("|").split("|") for line in table.splitlines() if line.startswith("|") and "---" not in line]
    head, body = rows[0], rows[1:]
    return ("<table><tr>" + "".join(f"<th>{html.escape(c.strip())}</th>" for c in head) + "</tr>"
            + "".join("<tr>" + "".join(f"<td>{html.escape(c.strip())}</td>" for c in r) + "</tr>" for r in body)
            + "</table>")


def write_reports(results: dict, run_dir: Path) -> Path:
    report_dir = run_dir / "report"
    report_dir.mkdir(parents=True, exist_ok=True)
    (report_dir / "results.json").write_text(json.dumps(results, indent=1, default=str) + "\n")
    with open(report_dir / "results.csv", "w", newline="") as handle:
        rows = [{k: v for k, v in r.items() if k != "extra"} for r in results["rows"]]
        if rows:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    (report_dir / "results.md").write_text(markdown_table(results["summary"]) + "\n")
    (report_dir / "results.tex").write_text(latex_table(results["summary"]))
    (report_dir / "gallery.html").write_text(gallery(results, report_dir, run_dir))
    return report_dir

