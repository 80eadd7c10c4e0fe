"""Make the README's picture from an evaluation run: a grid of last rendered frames.

    python scripts/figures.py [outputs/eval/<run>] [-o docs/frames.png]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("run", nargs="?", help="evaluation run dir (default: newest under outputs/eval)")
    parser.add_argument("-o", "--output", default=str(ROOT / "docs" / "frames.png"))
    parser.add_argument("--baseline", default=None, help="take frames from this baseline (default: best available)")
    args = parser.parse_args()
    runs = sorted((ROOT / "outputs" / "eval").glob("*/report/results.json"), key=lambda p: p.stat().st_mtime)
    results_path = Path(args.run) / "report" / "results.json" if args.run else (runs[-1] if runs else None)
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
                if usable and row["frame_path"] and all(c["function"] != row["function"] for c in chosen):
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
        axis.set_title(f"f(x) = {row['function']}  ({row['baseline']}, level {row['level']})", fontsize=9)
        axis.axis("off")
    figure.tight_layout()
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(output, dpi=110)
    print(f"wrote {output} from {run_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
