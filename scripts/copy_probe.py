"""Can a base model learn to copy the prompt's function into the scene? A diagnostic.

Fine-tunes a copy of a base model (all weights) on scene *headers* only: the prompt, then
the completion up to `f = sp.lambdify`, which holds everything that depends on the function
(`# f(x) = ...`, `f_expr`, `steps`, `df_expr`). Headers are a fifth of a scene's tokens, so
the probe spends its compute on exactly the skill that fails. Every --eval-every steps it
decodes headers greedily for validation functions and counts how many repeat the prompt's
function in the comment line, parse, and have the right f_expr and df_expr.

    python scripts/copy_probe.py                                    # the default base model
    python scripts/copy_probe.py --base outputs/base/copy50 --data data/derivatives-10k --steps 800

A model that copies shows it within a few hundred steps. The 7.4M model built without its
copy circuit (`make base ARGS="model.build.copy_circuit=false model.build.output_dir=outputs/base/plain"`,
then `--base outputs/base/plain`) copied 1 of 40 after 800 steps on data/derivatives-10k.
"""

from __future__ import annotations

import argparse
import ast
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

HEADER_END = "f = sp.lambdify"


def main() -> int:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, get_cosine_schedule_with_warmup

    from derivative_animator import dataset
    from derivative_animator.checks import check_math
    from derivative_animator.datamodule import collate, encode_example
    from derivative_animator.parsing import parse_function
    from derivative_animator.prompt import encode_prompt

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", default="outputs/base/tiny", help="a base model dir (make base)")
    parser.add_argument("--data", default="data/derivatives", help="a dataset dir (make data)")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--eval-every", type=int, default=200)
    parser.add_argument("--eval-samples", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    tokenizer = AutoTokenizer.from_pretrained(ROOT / args.base)
    model = AutoModelForCausalLM.from_pretrained(ROOT / args.base, dtype=torch.float32)
    train = dataset.read_split(ROOT / args.data, "train")
    validation = dataset.read_split(ROOT / args.data, "validation")[: args.eval_samples]
    examples = []
    for record in train:
        example = encode_example(tokenizer, record.prompt, record.completion.split(HEADER_END)[0])
        examples.append({key: ids[:-1] for key, ids in example.items()})  # a header has no EOS

    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    schedule = get_cosine_schedule_with_warmup(optimizer, max(1, args.steps // 50), args.steps)

    def probe() -> str:
        model.eval()
        copied = parsed = right = 0
        for record in validation:
            prompt_ids = torch.tensor([encode_prompt(tokenizer, record.prompt)])
            with torch.no_grad():
                out = model.generate(prompt_ids, max_new_tokens=260, do_sample=False,
                                     pad_token_id=tokenizer.pad_token_id)
            header = tokenizer.decode(out[0, prompt_ids.shape[1]:], skip_special_tokens=True).split(HEADER_END)[0]
            typed = record.prompt.split("f(x) = ", 1)[1].splitlines()[0]
            copied += f"# f(x) = {typed}\n" in header
            try:
                tree = ast.parse(header)
            except SyntaxError:
                continue
            parsed += 1
            right += bool(check_math(tree, parse_function(record.function))[0])
        model.train()
        n = len(validation)
        return f"copied the function {copied}/{n}, header parses {parsed}/{n}, f and f' right {right}/{n}"

    model.train()
    order: list[int] = []
    start = time.perf_counter()
    for step in range(1, args.steps + 1):
        batch = []
        for _ in range(args.batch_size):
            if not order:
                order = list(range(len(examples)))
                rng.shuffle(order)
            batch.append(examples[order.pop()])
        loss = model(**collate(batch, tokenizer.pad_token_id)).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
        if step % 50 == 0:
            print(f"step {step}: header loss {loss.item():.3f} ({time.perf_counter() - start:.0f} s)", flush=True)
        if step % args.eval_every == 0 or step == args.steps:
            print(f"step {step}: {probe()}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
