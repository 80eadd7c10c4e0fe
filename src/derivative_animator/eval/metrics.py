"""The evaluation's figures: per baseline and curriculum level, the share of rows passing each
check, generation times, and pass@k over several samples of one function."""

from __future__ import annotations

import math
import statistics

from derivative_animator.eval.engine import Row
from derivative_animator.render.checks import CHECKS, LAYOUT


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k (Chen et al. 2021): 1 - C(n-c, k) / C(n, k)."""
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def _rate(rows: list[Row], key: str) -> float:
    return round(100 * sum(bool(getattr(r, key)) for r in rows) / len(rows), 1) if rows else 0.0


def summarize(
    rows: list[Row],
    n: int,
    kinds: dict[str, tuple[str, ...]] | None = None,
    styles: dict[str, str] | None = None,
) -> dict:
    """Per baseline: all rows, each level (`level3`), given each sample's kinds each kind
    (`kind/product`, `kind/chars_41_80`), and given the style each sample asked each style
    (`style/secant`)."""
    kinds, styles = kinds or {}, styles or {}
    summary = {}
    for baseline in dict.fromkeys(r.baseline for r in rows):
        mine = [r for r in rows if r.baseline == baseline]
        firsts = [r for r in mine if r.attempt == 1 or baseline == "verified"]
        groups = {
            "all": firsts,
            **{
                f"level{lv}": [r for r in firsts if r.level == lv]
                for lv in sorted({r.level for r in firsts})
            },
        }
        for kind in sorted({k for r in firsts for k in kinds.get(r.sample_id, ())}):
            groups[f"kind/{kind}"] = [r for r in firsts if kind in kinds.get(r.sample_id, ())]
        for style in sorted({styles[r.sample_id] for r in firsts if r.sample_id in styles}):
            groups[f"style/{style}"] = [r for r in firsts if styles.get(r.sample_id) == style]
        summary[baseline] = {}
        for name, group in groups.items():
            if not group:
                continue
            times = [r.generation_s for r in group]
            entry = {
                "n": len(group),
                **{k: _rate(group, k) for k in (*CHECKS, "passed", LAYOUT)},
                "generation_s_median": round(statistics.median(times), 3),
                "generation_s_mean": round(statistics.mean(times), 3),
                "tokens_per_s_median": round(statistics.median([r.tokens_per_s for r in group]), 1),
                "environment_errors": sum(r.extra.get("environment_error", False) for r in group),
            }
            if baseline == "verified":
                entry["attempts_mean"] = round(statistics.mean(r.attempts_tried for r in group), 2)
            summary[baseline][name] = entry
        if baseline == "finetuned" and n > 1:
            per_function: dict[str, list[Row]] = {}
            for r in mine:
                per_function.setdefault(r.sample_id, []).append(r)
            for k in sorted({1, min(5, n), n}):
                values = [
                    pass_at_k(len(v), sum(r.passed for r in v), k) for v in per_function.values()
                ]
                summary[baseline]["all"][f"pass@{k}"] = round(100 * statistics.mean(values), 1)
    return summary
