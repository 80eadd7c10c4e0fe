"""Evaluation reports: results.json, results.csv, a Markdown and a LaTeX table for the
paper, and an HTML gallery: per function, every baseline's scene side by side (checks,
the rendered video with its last frame as poster, the code), filterable."""

from __future__ import annotations

import csv
import html
import json
import os
from pathlib import Path

from derivative_animator.data.scenes import STYLES
from derivative_animator.eval.baselines import BASELINES
from derivative_animator.render.checks import REPORTED

COLUMNS = (
    ("syntax", "Syntax"),
    ("structure", "Structure"),
    ("executes", "Executes"),
    ("math", "Math"),
    ("passed", "All four"),
    ("layout", "Layout"),
)
BASELINE_NAMES = {
    name: baseline.label for name, baseline in BASELINES.items()
}  # in tables and the gallery


def _groups(summary: dict):
    """(baseline, group, figures) for all rows and each level; kinds and styles have their own
    tables."""
    for baseline, groups in summary.items():
        for group, values in groups.items():
            if not group.startswith(("kind/", "style/")):
                yield baseline, group, values


def _group_table(summary: dict, prefix: str, order, title: str, name, cell, legend="") -> str:
    """A row per group `prefix/<key>` of the summary present, in `order`, named `name(key)`;
    a column per baseline holding `cell(figures)`; an optional row under the header (`legend`).
    Empty when no baseline has such a group."""
    present = [k for k in order if any(f"{prefix}/{k}" in groups for groups in summary.values())]
    if not present:
        return ""
    baselines = list(summary)
    lines = [
        f"| {title} | n | " + " | ".join(BASELINE_NAMES.get(b, b) for b in baselines) + " |",
        "|---|---|" + "---|" * len(baselines),
        *(["| | | " + " | ".join(legend for _ in baselines) + " |"] if legend else []),
    ]
    for key in present:
        figures = [summary[b].get(f"{prefix}/{key}") for b in baselines]
        n = max(f["n"] for f in figures if f)
        cells = " | ".join(cell(f) if f else "-" for f in figures)
        lines.append(f"| {name(key)} | {n} | {cells} |")
    return "\n".join(lines)


def kind_table(summary: dict) -> str:
    """Math per kind of differentiation and per length as typed, a column per baseline; empty
    when the evaluation has no kinds (only benchmarks do)."""
    from derivative_animator.math.expression_trees import KINDS, LENGTH_BUCKETS

    order = [*KINDS, *(name for _, name in LENGTH_BUCKETS)]
    return _group_table(
        summary,
        "kind",
        order,
        "kind",
        lambda kind: KINDS.get(kind, kind.replace("_", " ")),
        lambda f: f"{f['math']:.1f}%",
    )


def markdown_table(summary: dict) -> str:
    lines = [
        "| baseline | level | n | "
        + " | ".join(t for _, t in COLUMNS)
        + " | gen s (median) | tokens/s |",
        "|---|---|---|" + "---|" * len(COLUMNS) + "---|---|",
    ]
    for baseline, group, v in _groups(summary):
        level = "all" if group == "all" else group.replace("level", "L")
        cells = " | ".join(f"{v[k]:.1f}%" if k in v else "-" for k, _ in COLUMNS)
        lines.append(
            f"| {BASELINE_NAMES.get(baseline, baseline)} | {level} | {v['n']} | {cells} | "
            f"{v['generation_s_median']:.2f} | {v['tokens_per_s_median']:.0f} |"
        )
    extras = [
        f"pass@{k.split('@')[1]} {v[k]:.1f}%"
        for _, g, v in _groups(summary)
        if g == "all"
        for k in v
        if k.startswith("pass@")
    ]
    if extras:
        lines += ["", "Fine-tuned, sampled: " + ", ".join(extras)]
    return "\n".join(lines)


def latex_table(summary: dict) -> str:
    lines = [
        r"\begin{tabular}{llr" + "r" * len(COLUMNS) + "r}",
        r"\toprule",
        "Baseline & Level & $n$ & " + " & ".join(t for _, t in COLUMNS) + r" & Gen.\ s \\",
        r"\midrule",
    ]
    for baseline, group, v in _groups(summary):
        level = "all" if group == "all" else group.replace("level", "")
        cells = " & ".join(f"{v[k]:.1f}" if k in v else "--" for k, _ in COLUMNS)
        name = BASELINE_NAMES.get(baseline, baseline).replace("+", r"$+$")
        lines.append(f"{name} & {level} & {v['n']} & {cells} & {v['generation_s_median']:.2f} \\\\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


def _relative(run_dir: Path, report_dir: Path, path: str) -> str:
    return html.escape(os.path.relpath(run_dir / path, report_dir))


def _card(row: dict, report_dir: Path, run_dir: Path) -> str:
    """One scene: its checks (failing ones red), the video (last frame as poster), the code."""
    marks = " ".join(
        f'<span class="{"ok" if row.get(k) else ("skip" if row.get(k) is None else "bad")}">'
        f"{k}</span>"
        for k in REPORTED
    )
    fails = " ".join(k for k in REPORTED if row.get(k) is False)
    code = html.escape((run_dir / row["code_path"]).read_text()[:6000]) if row["code_path"] else ""
    media = '<p class="none">no render</p>'
    if row.get("frame_path"):
        poster = _relative(run_dir, report_dir, row["frame_path"])
        movie = Path(row["frame_path"]).with_suffix(".mp4")
        if (run_dir / movie).is_file():
            media = (
                f'<video controls muted preload="metadata" poster="{poster}">'
                f'<source src="{_relative(run_dir, report_dir, str(movie))}" type="video/mp4">'
                "</video>"
            )
        else:
            media = f'<img src="{poster}" loading="lazy">'
    problems = row.get("extra", {}).get("layout_problems") or []
    error = f'<p class="error">{html.escape(row["error"])}</p>' if row.get("error") else ""
    error += "".join(f'<p class="error">layout: {html.escape(p)}</p>' for p in problems[:5])
    attempt = f" · attempt {row['attempts_tried']}" if row["baseline"] == "verified" else ""
    return (
        f'<figure class="card {"pass" if row["passed"] else "fail"}" '
        f'data-baseline="{html.escape(row["baseline"])}" '
        f'data-fails="{fails}"><figcaption>'
        f"<b>{BASELINE_NAMES.get(row['baseline'], row['baseline'])}</b> · "
        f"{row['generation_s']:.2f} s{attempt}<br>{marks}</figcaption>{media}{error}"
        f"<details><summary>code</summary><pre>{code}</pre></details></figure>"
    )


_FILTER_SCRIPT = """
const filters = () => ({level: document.getElementById('level').value,
  check: document.getElementById('check').value,
  shown: [...document.querySelectorAll('.baseline-toggle')].filter(b => b.checked).map(b => b.value)});
function apply() {
  const f = filters();
  for (const card of document.querySelectorAll('.card')) card.hidden = !f.shown.includes(card.dataset.baseline);
  for (const row of document.querySelectorAll('.function')) {
    const cards = [...row.querySelectorAll('.card')].filter(c => !c.hidden);
    const failing = f.check === 'any' || cards.some(c => f.check === 'failing' ? c.classList.contains('fail')
                                                         : c.dataset.fails.split(' ').includes(f.check));
    row.hidden = !((f.level === 'all' || row.dataset.level === f.level) && failing);
  }
  document.getElementById('count').textContent = document.querySelectorAll('.function:not([hidden])').length;
}
document.querySelectorAll('select, .baseline-toggle').forEach(e => e.addEventListener('change', apply));
apply();
"""  # noqa: E501


def gallery(results: dict, report_dir: Path, run_dir: Path) -> str:
    """Per function, the oracle's and each model's scene side by side, each playable; filters
    by level, by failing check and by baseline."""
    style = (
        "body{font-family:sans-serif;margin:2em;background:#fafafa}"
        ".function{background:#fff;border-radius:8px;padding:.5em 1em 1em;margin:1em 0;"
        "box-shadow:0 1px 3px #0002}"
        ".scenes{display:grid;grid-template-columns:repeat(auto-fill,minmax(340px,1fr));gap:1em}"
        ".card{margin:0;padding:.5em;border-radius:6px;background:#fcfcfc}"
        ".card.fail{border-left:4px solid #c33}.card.pass{border-left:4px solid #3a3}"
        ".card video,.card img{width:100%;border-radius:4px;background:#000}"
        ".ok,.bad,.skip{padding:1px 6px;border-radius:4px;margin-right:3px;font-size:90%}"
        ".ok{background:#cfc}.bad{background:#f99;font-weight:bold}.skip{background:#eee}"
        ".error{color:#a00;font-size:85%}.none{color:#888}.filters{position:sticky;top:0;background:#fafafa;"
        "padding:.5em 0;z-index:1}pre{font-size:11px;overflow:auto;max-height:300px}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px}"
    )
    table = markdown_to_html(markdown_table(results["summary"]))
    rows = [r for r in results["rows"] if r.get("attempt", 1) == 1 or r["baseline"] == "verified"]
    baselines = list(dict.fromkeys(r["baseline"] for r in rows))
    by_function: dict[str, dict] = {}
    for row in rows:
        by_function.setdefault(row["sample_id"], {})[row["baseline"]] = row
    sections = []
    for scenes in by_function.values():
        first = next(iter(scenes.values()))
        cards = "".join(_card(scenes[b], report_dir, run_dir) for b in baselines if b in scenes)
        sections.append(
            f'<section class="function" data-level="{first["level"]}"><h3>f(x) = '
            f"{html.escape(first['function'])} <small>level {first['level']}</small></h3>"
            f'<div class="scenes">{cards}</div></section>'
        )
    levels = sorted({str(r["level"]) for r in rows})
    toggles = " ".join(
        f'<label><input type="checkbox" class="baseline-toggle" value="{html.escape(b)}" checked> '
        f"{BASELINE_NAMES.get(b, b)}</label>"
        for b in baselines
    )
    filters = (
        '<div class="filters">level <select id="level"><option value="all">all</option>'
        + "".join(f'<option value="{lv}">{lv}</option>' for lv in levels)
        + '</select> show <select id="check"><option value="any">every function</option>'
        '<option value="failing">a scene fails any check</option>'
        + "".join(f'<option value="{c}">a scene fails {c}</option>' for c in REPORTED)
        + f'</select> {toggles} · <span id="count"></span> functions</div>'
    )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>DerivativeAnimator evaluation</title>"
        f"<style>{style}</style></head><body><h1>DerivativeAnimator evaluation</h1>"
        f"<p>model: {html.escape(str(results['model']))} · {results['samples']} functions</p>"
        f"{table}{filters}{''.join(sections)}<script>{_FILTER_SCRIPT}</script></body></html>"
    )


def markdown_to_html(table: str) -> str:
    rows = [
        line.strip("|").split("|")
        for line in table.splitlines()
        if line.startswith("|") and "---" not in line
    ]
    head, body = rows[0], rows[1:]
    return (
        "<table><tr>"
        + "".join(f"<th>{html.escape(c.strip())}</th>" for c in head)
        + "</tr>"
        + "".join(
            "<tr>" + "".join(f"<td>{html.escape(c.strip())}</td>" for c in r) + "</tr>"
            for r in body
        )
        + "</table>"
    )


def style_table(summary: dict) -> str:
    """Math and layout per style asked (eval.ask_styles), a column per baseline; empty when no
    style was asked."""
    return _group_table(
        summary,
        "style",
        STYLES,
        "style",
        str,
        lambda f: f"{f['math']:.1f}% / {f['layout']:.1f}%",
        legend="math / layout",
    )


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
    kinds, styles = kind_table(results["summary"]), style_table(results["summary"])
    (report_dir / "results.md").write_text(
        markdown_table(results["summary"])
        + "\n"
        + (f"\nMath by kind:\n\n{kinds}\n" if kinds else "")
        + (f"\nMath and layout by the style asked:\n\n{styles}\n" if styles else "")
    )
    (report_dir / "results.tex").write_text(latex_table(results["summary"]))
    (report_dir / "gallery.html").write_text(gallery(results, report_dir, run_dir))
    return report_dir
