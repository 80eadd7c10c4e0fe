"""How well does a base model learn the math header under a fixed training budget? A diagnostic.

Fine-tunes a copy of a base model on scene *headers* only (the prompt, then the completion
up to `MATH_HEADER_END`: the docstring with f and f' as typed, the imports, the
plotting interval), for a wall-clock budget, then decodes headers greedily for test
functions and counts, per curriculum level, how many parse and have the right f and f'.
Headers are what differs between scenes, so this isolates the skill that decides the math
check, in minutes instead of a full `make train`.

    python scripts/header_probe.py             # the default base, 240 s, full fine-tuning
    python scripts/header_probe.py --lora 64   # LoRA r=64 on every linear projection instead

Measured in session 6 with the then sympy-code headers (`f_expr = ...`, `df_expr = ...`),
the 7.4M default base and 4,000 train functions, 240 s each: 17 of 57 derivatives right
(43 headers parse); with a rule-step scratchpad list before `df_expr` (the `--with-steps`
option of that time, since removed) 1 of 57; LoRA r=64 6 of 57.
"""

from __future__ import annotations

import argparse
import ast
import random
import sys
import time
from pathlib import Path

from derivative_animator.math.header import math_header_length

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def header_text(record) -> str:

    return record.completion[: math_header_length(record.completion)]


def score(header: str, function: str) -> tuple[bool, bool, bool]:
    """(parses, f right, f' right) for a generated header, cut where the header ends."""
    from derivative_animator.math.judge import check_function, check_math
    from derivative_animator.math.parsing import parse_function

    end = math_header_length(header)
    try:
        tree = ast.parse(header if end is None else header[:end])
    except SyntaxError:
        return False, False, False
    expected = parse_function(function)
    return True, bool(check_function(tree, expected)), bool(check_math(tree, expected)[0])


def main() -> int:
    import torch
    from rich.progress import Progress
    from transformers import AutoModelForCausalLM, AutoTokenizer, get_cosine_schedule_with_warmup

    from derivative_animator.data import dataset
    from derivative_animator.data.datamodule import collate, encode_example
    from derivative_animator.data.prompt import encode_prompt
    from derivative_animator.model import finetune
    from derivative_animator.model.settings import LoraSettings

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--base",
        default="models/derivanim-tiny",
        help="a base model dir (the shipped one, a snapshot)",
    )
    parser.add_argument(
        "--data", default="data/derivatives", help="a dataset dir (make data): its train split"
    )
    parser.add_argument("--seconds", type=float, default=240, help="training budget (wall clock)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--lora", type=int, default=0, help="LoRA rank (0: full fine-tuning)")
    parser.add_argument(
        "--lora-train-embeddings",
        action="store_true",
        help="LoRA also trains embeddings and head in full",
    )
    parser.add_argument("--samples", type=int, default=57, help="test functions decoded")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    base, data = ROOT / args.base, ROOT / args.data
    for path, make in ((base / "config.json", "make base"), (data / "train.jsonl", "make data")):
        if not path.is_file():
            print(
                f"error: {path} not found; run `{make}` first or pass its directory",
                file=sys.stderr,
            )
            return 2

    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    if args.lora:
        model = finetune.add_lora(
            model,
            LoraSettings(
                enabled=True,
                r=args.lora,
                alpha=2 * args.lora,
                dropout=0.05,
                target_modules="all-linear",
                modules_to_save=("embed_tokens", "lm_head") if args.lora_train_embeddings else None,
            ),
        )
    examples = []
    for record in dataset.read_split(data, "train"):
        example = encode_example(tokenizer, record.prompt, header_text(record))
        examples.append({key: ids[:-1] for key, ids in example.items()})  # a header has no EOS
    test = dataset.read_split(data, "test")[: args.samples]
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=args.lr, weight_decay=0.0
    )

    def batch() -> dict:
        return collate(
            [examples[rng.randrange(len(examples))] for _ in range(args.batch_size)],
            tokenizer.pad_token_id,
        )

    model.train()
    start, step, schedule, total = time.perf_counter(), 0, None, None
    with Progress() as progress:
        task = progress.add_task("training on headers", total=args.seconds)
        while total is None or step < total:
            loss = model(**batch()).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad()
            if schedule is not None:
                schedule.step()
            step += 1
            elapsed = time.perf_counter() - start
            if (
                step == 10
            ):  # the budget in steps, from the speed of the first ten; cosine over the rest
                total = max(11, int(args.seconds / (elapsed / 10)))
                schedule = get_cosine_schedule_with_warmup(optimizer, 0, total - 10)
            progress.update(
                task,
                completed=min(elapsed, args.seconds),
                description=f"training on headers (loss {loss.item():.3f})",
            )
    trained = time.perf_counter() - start

    model.eval()
    rows: dict[int, list[tuple[bool, bool, bool]]] = {}
    for record in test:
        prompt = torch.tensor([encode_prompt(tokenizer, record.prompt)])
        with torch.no_grad():
            out = model.generate(
                prompt, max_new_tokens=160, do_sample=False, pad_token_id=tokenizer.pad_token_id
            )
        text = tokenizer.decode(out[0, prompt.shape[1] :], skip_special_tokens=True)
        rows.setdefault(record.level, []).append(score(text, record.function))
    print(
        f"{step} steps of {args.batch_size} headers in {trained:.0f} s "
        f"({'LoRA r=' + str(args.lora) if args.lora else 'full fine-tuning'})"
    )
    print(f"{'level':<6} {'n':>3} {'parses':>7} {'f right':>8} {'df right':>8}")
    for level, group in sorted(rows.items()) + [("all", [r for g in rows.values() for r in g])]:
        counts = [sum(r[i] for r in group) for i in range(3)]
        print(f"{level!s:<6} {len(group):>3} {counts[0]:>7} {counts[1]:>8} {counts[2]:>8}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
