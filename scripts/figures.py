"""The README's pictures of scenes.

python scripts/figures.py [outputs/eval/<run>] [-o docs/frames.png]
    # last frames of an evaluation run
python scripts/figures.py --before-after REV [-o docs/scenes_before_after.png]
    # the oracle's last frames with the scene templates of git revision REV and of now,
    # same functions, same intervals, rendered in the sandbox as the evaluator renders
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))  # benchmark.scenes_at


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "run", nargs="?", help="evaluation run dir (default: newest under outputs/eval)"
    )
    parser.add_argument("-o", "--output", default=str(ROOT / "docs" / "frames.png"))
    parser.add_argument(
        "--baseline", default=None, help="take frames from this baseline (default: best available)"
    )
    parser.add_argument(
        "--before-after", metavar="REV", help="compare the scene templates of REV with today's"
    )
    parser.add_argument(
        "--functions",
        default="1/x:graphs;1/x:tangent;x^2 sin(x) e^x + ln(x) cos(x):tangent",
        help="--before-after: FUNCTION:STYLE pairs separated by ';'",
    )
    args = parser.parse_args()
    if args.before_after:
        output = Path(
            args.output
            if args.output != parser.get_default("output")
            else ROOT / "docs" / "scenes_before_after.png"
        )
        return before_after(
            args.before_after, [pair.rsplit(":", 1) for pair in args.functions.split(";")], output
        )
    runs = sorted(
        (ROOT / "outputs" / "eval").glob("*/report/results.json"), key=lambda p: p.stat().st_mtime
    )
    results_path = (
        Path(args.run) / "report" / "results.json" if args.run else (runs[-1] if runs else None)
    )
    if results_path is None or not results_path.is_file():
        print("error: no evaluation run found; run `make eval` first", file=sys.stderr)
        return 2
    run_dir = results_path.parents[1]
    rows = json.loads(results_path.read_text())["rows"]
    preference = [args.baseline] if args.baseline else ["verified", "finetuned", "template"]
    chosen = []
    for baseline in preference:
        for level in (1, 2, 3, 4):
            for row in rows:
                usable = row["baseline"] == baseline and row["level"] == level and row["passed"]
                if (
                    usable
                    and row["frame_path"]
                    and all(c["function"] != row["function"] for c in chosen)
                ):
                    chosen.append(row)
                    break
        if len(chosen) >= 4:
            break
    chosen = chosen[:4]
    if not chosen:
        print("error: no rendered frames in that run", file=sys.stderr)
        return 2
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    figure, axes = plt.subplots(1, len(chosen), figsize=(4.2 * len(chosen), 2.8))
    for axis, row in zip(list(axes) if len(chosen) > 1 else [axes], chosen, strict=True):
        axis.imshow(Image.open(run_dir / row["frame_path"]))
        axis.set_title(
            f"f(x) = {row['function']}  ({row['baseline']}, level {row['level']})", fontsize=9
        )
        axis.axis("off")
    figure.tight_layout()
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(output, dpi=110)
    print(f"wrote {output} from {run_dir}")
    return 0


def before_after(revision: str, pairs: list[list[str]], output: Path) -> int:
    import tempfile

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from benchmark import scenes_at
    from PIL import Image

    from derivative_animator.data import oracle
    from derivative_animator.math import curriculum
    from derivative_animator.math.parsing import parse_function
    from derivative_animator.render import checks

    then = scenes_at(revision)
    figure, axes = plt.subplots(len(pairs), 2, figsize=(8.4, 2.7 * len(pairs)), squeeze=False)
    with tempfile.TemporaryDirectory() as tmp:
        for row, (function, style) in enumerate(pairs):
            analysed = curriculum.analyse(parse_function(function), wider=True)
            codes = {
                revision: then.scene_code(
                    analysed.expr, analysed.derivative, analysed.steps, analysed.x_range, style
                ),
                "now": oracle.template_scene(function, style),
            }
            for column, (label, code) in enumerate(codes.items()):
                folder = Path(tmp) / f"{row}-{column}"
                result = checks.check_code(code, function, output_dir=folder)
                frame = next(folder.glob("*.png"), None)
                if frame is None:
                    print(
                        f"error: {function} ({style}, {label}) did not render: {result.error}",
                        file=sys.stderr,
                    )
                    return 1
                axes[row][column].imshow(Image.open(frame))
                verdict = (
                    "layout: ok"
                    if result.layout
                    else "layout: " + "; ".join(result.layout_problems)[:70]
                )
                axes[row][column].set_title(
                    f"{label}: f(x) = {function} ({style})\n{verdict}", fontsize=8
                )
                axes[row][column].axis("off")
    figure.tight_layout()
    output.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(output, dpi=110)
    print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
