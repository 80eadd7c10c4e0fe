"""Where does a checkpoint lose? Teacher-forced loss and next-token accuracy on the
validation scenes, by kind of line: the docstring's `f(x) = ...` (copying the prompt's
function), its `f'(x) = ...` (applying the rules), the plotting interval, and the rest of
the scene (the same text for every function of a style).

    python scripts/line_accuracy.py --checkpoint outputs/train/<run>/checkpoint/merged
        [--samples 30]

A scene is only right when every token of its math header is.
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

KINDS = ("f(x)", "f'(x)", "interval", "rest of scene")


def line_kind(line: str) -> str:
    for kind, start in (
        ("f(x)", "f(x) = "),
        ("f'(x)", "f'(x) = "),
        ("interval", "X_MIN, X_MAX = "),
    ):
        if line.startswith(start):
            return kind
    return "rest of scene"


def main() -> int:
    import torch
    from rich.progress import track
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from derivative_animator.data import dataset
    from derivative_animator.data.prompt import PromptFormat, encode_prompt

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--checkpoint", required=True, type=Path, help="a merged checkpoint directory"
    )
    parser.add_argument("--data", type=Path, default=ROOT / "data/derivatives")
    parser.add_argument("--samples", type=int, default=30, help="validation scenes to score")
    args = parser.parse_args()
    if not (args.checkpoint / "config.json").exists():
        print(
            f"error: {args.checkpoint} is not a merged checkpoint (no config.json); pass "
            "outputs/train/<run>/checkpoint/merged",
            file=sys.stderr,
        )
        return 2

    tokenizer = AutoTokenizer.from_pretrained(args.checkpoint)
    model = AutoModelForCausalLM.from_pretrained(args.checkpoint).eval()
    prompt_format = PromptFormat.load(args.checkpoint)  # the checkpoint's own format
    totals = defaultdict(lambda: [0.0, 0, 0])  # kind -> [loss sum, tokens, correct]
    records = dataset.read_split(args.data, "validation")[: args.samples]
    for record in track(records, description="scoring validation scenes"):
        prompt_ids = encode_prompt(tokenizer, prompt_format.format(record.function))
        encoded = tokenizer(
            record.completion, add_special_tokens=False, return_offsets_mapping=True
        )
        ids = torch.tensor([prompt_ids + encoded["input_ids"]])
        with torch.no_grad():
            log_probs = torch.log_softmax(model(ids).logits[0, :-1].float(), dim=-1)
        line_ends, kinds, position = [], [], 0
        for line in record.completion.split("\n"):
            position += len(line) + 1
            line_ends.append(position)
            kinds.append(line_kind(line))
        line = 0
        for offset, (start, _) in enumerate(encoded["offset_mapping"]):
            while start >= line_ends[line]:
                line += 1
            target = len(prompt_ids) + offset
            row = log_probs[target - 1]
            total = totals[kinds[line]]
            total[0] -= float(row[ids[0, target]])
            total[1] += 1
            total[2] += int(row.argmax()) == int(ids[0, target])
    print(f"{'line kind':<14} {'tokens':>7} {'loss/token':>11} {'token accuracy':>15}")
    for kind in KINDS:
        loss, tokens, correct = totals[kind]
        if tokens:
            print(f"{kind:<14} {tokens:>7} {loss / tokens:>11.3f} {100 * correct / tokens:>14.1f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
