"""GPU check: the training and inference paths on CUDA, and what the 1.3B model costs there.

    python scripts/gpu_check.py --out DIR [--scenes 20] [--skip-tiny] [--skip-large]
    python scripts/gpu_check.py --out DIR --smoke     # the same steps, shrunk, on the CPU (tests)
    python scripts/gpu_check.py --out DIR --seeds 42,43,44 [--smoke]   # the spread over seeds

Runs where the GPU is, with torch (CUDA), transformers, peft, pytorch_lightning, sympy,
hydra-core and rich; no MLflow or Manim needed. Settings come from conf/train.yaml composed
with Hydra's compose API (model=<the step's>, trainer=gpu, data=default, lora=default); scenes
are checked without rendering (syntax, structure, math). Prints one JSON object and writes it
to DIR/gpu_check.json.

1. tiny: the embedded model (models/derivanim-tiny, in the repository)
   fine-tuned on the default dataset with the CPU default's settings (one epoch, 500
   whole scenes, the rest header practice) under conf/trainer/gpu.yaml (bf16-mixed);
   the fit is timed, the merged checkpoint is saved to DIR/tiny-checkpoint, and it writes
   scenes for the first --scenes test functions on CUDA (SceneGenerator.load, as the CLI).
2. large: a model of DeepSeek-Coder-1.3B's shape with random weights (the hub is out of
   reach) in bf16, with the original LoRA (r=64, alpha=128, every linear projection) and
   gradient checkpointing, as conf/model/deepseek_coder_1_3b.yaml trains it: seconds per
   micro-batch of 4 whole scenes and of 4 header samples (forward, backward, fused AdamW
   step), an epoch of the default split estimated from them, and decoding speed for a
   scene's length of new tokens (HF generate, KV cache, greedy, the merged model).

--seeds replaces both: the tiny model fine-tuned once per seed (all at once, one process each)
and each checkpoint's greedy math headers for the test split and every benchmark, judged by
the math judge (raw math where decoding writes the code), with the median over seeds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from derivative_animator import environment, paths  # noqa: E402
from derivative_animator.data import dataset  # noqa: E402
from derivative_animator.data.datamodule import IGNORE_INDEX, DerivativeDataModule  # noqa: E402
from derivative_animator.data.dataset_schema import DataConfig  # noqa: E402
from derivative_animator.eval import header_math  # noqa: E402
from derivative_animator.model import finetune  # noqa: E402
from derivative_animator.model.base_model import BaseModelConfig  # noqa: E402
from derivative_animator.model.generate import SceneGenerator  # noqa: E402
from derivative_animator.model.pretrain import build_base  # noqa: E402
from derivative_animator.model.settings import LoraSettings, ModelSettings  # noqa: E402
from derivative_animator.render import checks  # noqa: E402

# deepseek-ai/deepseek-coder-1.3b-base's config.json (its vocabulary holds the tiny tokenizer's ids)
DEEPSEEK_CODER_1_3B = {
    "vocab_size": 32256,
    "hidden_size": 2048,
    "intermediate_size": 5504,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "num_key_value_heads": 16,
    "max_position_embeddings": 16384,
    "rope_theta": 100000.0,
    "rms_norm_eps": 1e-6,
}
LARGE = "deepseek_coder_1_3b"  # conf/model/<LARGE>.yaml: how part 2's model trains
# The training groups the check runs under, besides the model (conf/train.yaml's other defaults
# stay).
GROUPS = ("trainer=gpu", "data=default", "lora=default")


@dataclass(frozen=True)
class Plan:
    """What the check runs. SMOKE shrinks every step to seconds on a CPU (a test runs it)."""

    device: str = "cuda"
    base: str = "tiny"  # conf/model/<base>.yaml: the embedded model fine-tuned in part 1
    data_sizes: dict | None = None  # None: conf/data/default.yaml's
    data_workers: int | str = "auto"
    train_batches: int | None = None  # None: the whole epoch
    full_scenes: int | None = None  # None: conf/train.yaml's (the rest is header practice)
    scenes: int = 20
    max_new_tokens: int | None = None  # None: conf/generate's (a scene's budget)
    large_shape: dict = field(default_factory=lambda: DEEPSEEK_CODER_1_3B)
    repeats: int = 6
    new_tokens: int | None = None  # None: the median test scene's
    header_functions: int | None = None  # --seeds: functions per set (None: all)
    header_batch: int = 64  # --seeds: headers decoded at once


SMOKE = Plan(
    device="cpu",
    base="micro",
    data_sizes={"train": 24, "validation": 4, "test": 4},
    data_workers=1,
    train_batches=4,
    full_scenes=12,
    scenes=2,
    max_new_tokens=40,
    large_shape={
        **DEEPSEEK_CODER_1_3B,
        "vocab_size": 1024,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 2,
    },
    repeats=2,
    new_tokens=12,
    header_functions=3,
    header_batch=2,
)


def compose(model: str) -> dict:
    """conf/train.yaml composed by Hydra with model=<model> and GROUPS, resolved as train.py
    resolves it (Hydra's own node is left out: nothing here reads it)."""
    with initialize_config_dir(config_dir=str(paths.CONF_DIR), version_base="1.3"):
        cfg = hydra_compose(config_name="train", overrides=[f"model={model}", *GROUPS])
    return OmegaConf.to_container(cfg, resolve=True)


def trainer_kwargs(plan: Plan, **overrides) -> dict:
    settings = {k: v for k, v in compose(plan.base)["trainer"].items() if not k.startswith("_")}
    if plan.device == "cpu":
        settings.update(accelerator="cpu", precision="32-true")
    settings["precision"] = environment.resolve_precision(
        str(settings["precision"]), settings["accelerator"]
    )
    return {**settings, **overrides}


def build_data(directory: Path, plan: Plan) -> Path:
    data = compose(plan.base)["data"]
    config = DataConfig(
        dir=str(directory),
        seed=data["seed"],
        sizes=plan.data_sizes or data["sizes"],
        levels=data["levels"],
        styles=data["styles"],
    )
    start = time.perf_counter()
    dataset.build(config, workers=dataset.build_workers(plan.data_workers))
    print(f"dataset built in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    return directory


def load_embedded(plan: Plan):
    """(model settings, tokenizer, model) of the embedded base; the micro one is built here,
    the tiny one is the shipped base (models/, in the repository)."""
    settings = compose(plan.base)[
        "model"
    ]  # resolved: micro's output_dir may name the tests' own outputs
    directory = paths.resolve(settings["build"]["publish_dir"] or settings["build"]["output_dir"])
    if plan.base == "micro":
        build_base(BaseModelConfig(**settings["build"]))
    elif not (directory / "config.json").is_file():
        raise FileNotFoundError(
            f"{directory} is missing: the shipped base comes with the repository "
            "(make pretrain rebuilds it)"
        )
    tokenizer, model = finetune.load_base(
        replace(ModelSettings.from_config(settings), pretrained=str(directory))
    )
    return settings, tokenizer, model


def fine_tune(data_dir: Path, out: Path, plan: Plan, seed: int | None = None) -> tuple[Path, dict]:
    """The embedded base fine-tuned as conf/train.yaml says (under the gpu trainer), seeded with
    `seed` (None: the config's); (merged checkpoint, what the fit measured)."""
    import pytorch_lightning as pl

    train = compose(plan.base)
    full_scenes = plan.full_scenes or train["full_scenes"]
    seed = train["seed"] if seed is None else seed
    pl.seed_everything(seed, workers=True)
    tiny, tokenizer, model = load_embedded(plan)
    model = finetune.add_lora(model, LoraSettings.from_config(train["lora"]))
    data = DerivativeDataModule(
        str(data_dir),
        tokenizer,
        micro_batch_size=tiny["micro_batch_size"],
        max_length=tiny["max_length"],
        bucket_size=train["loader"]["bucket_size"],
        max_tokens=tiny.get("max_batch_tokens"),
        seed=seed,
        full_scenes=full_scenes,
    )
    module = finetune.LoRAFineTuner(
        model, lr=tiny["lr"], warmup_ratio=train["optim"]["warmup_ratio"]
    )
    trainer = pl.Trainer(
        **trainer_kwargs(
            plan,
            max_epochs=1,
            logger=False,
            enable_checkpointing=False,
            limit_train_batches=plan.train_batches,
            default_root_dir=tempfile.mkdtemp(prefix="gpu-check-"),
        )
    )
    start = time.perf_counter()
    trainer.fit(module, datamodule=data)
    fit_s = time.perf_counter() - start
    metrics = {
        k: round(float(v), 4) for k, v in trainer.callback_metrics.items() if k.startswith("val/")
    }
    steps = trainer.global_step
    merged = finetune.save_checkpoint(
        module.model,
        tokenizer,
        out / "tiny-checkpoint",
        {"model": tiny},
        {"global_step": steps, "metrics": metrics},
        draft_corpus=[r.completion for r in dataset.read_split(data_dir, "train")[:full_scenes]],
    )
    fit = {
        "seed": seed,
        "precision": trainer_kwargs(plan)["precision"],
        "optimizer_steps": steps,
        "fit_s": round(fit_s, 1),
        **metrics,
    }
    return merged, fit


def check_tiny(data_dir: Path, out: Path, plan: Plan) -> dict:
    merged, fit = fine_tune(data_dir, out, plan)

    generator = SceneGenerator.load(merged, device=plan.device)  # on CUDA: bf16 weights, as the CLI
    generate = paths.conf_group("generate")
    budget = plan.max_new_tokens or generate.max_new_tokens
    rows = []
    for record in dataset.read_split(data_dir, "test")[: plan.scenes]:
        generation = generator.generate(record.function, max_new_tokens=budget)
        result = checks.check_code(generation.code, record.function, execute=False)
        rows.append(
            {
                "function": record.function,
                "level": record.level,
                "seconds": round(generation.seconds, 3),
                "new_tokens": generation.new_tokens,
                "syntax": bool(result.syntax),
                "structure": bool(result.structure),
                "math": bool(result.math),
                "error": result.error,
            }
        )
    seconds = [r["seconds"] for r in rows]
    # A sampled try too (verified generation's retries): the sampler draws on the CPU.
    sampled = generator.generate(
        rows[0]["function"],
        max_new_tokens=budget,
        temperature=generate.sample_temperature,
        top_p=generate.top_p,
        seed=1,
    )
    return {
        **fit,
        "scenes": len(rows),
        **{
            f"{check}_pct": round(100 * sum(r[check] for r in rows) / len(rows), 1)
            for check in ("syntax", "structure", "math")
        },
        "generation_s_median": round(statistics.median(seconds), 3),
        "generation_s_max": round(max(seconds), 3),
        "sampled_try": {
            "seconds": round(sampled.seconds, 3),
            "new_tokens": sampled.new_tokens,
            "syntax": bool(
                checks.check_code(sampled.code, rows[0]["function"], execute=False).syntax
            ),
        },
        "rows": rows,
    }


def seed_worker(data_dir: Path, out: Path, plan: Plan, seed: int) -> dict:
    merged, fit = fine_tune(data_dir, out, plan, seed)
    generator = SceneGenerator.load(merged, device=plan.device)
    sets = header_math.function_sets(data_dir)
    report = header_math.header_math(generator, sets, plan.header_batch, plan.header_functions)
    return {**fit, "header_math": report}


def seeds_check(seeds: list[int], data_dir: Path, out: Path, plan: Plan) -> dict:
    """One fine-tuning per seed, all at once (the tiny model leaves the GPU mostly idle: its
    steps wait on kernel launches), each in its own process; each seed's header math and the
    median over seeds."""
    load_embedded(plan)  # builds the micro base once, before the workers read it
    workers = [
        subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--out",
                str(out / f"seed-{seed}"),
                "--data",
                str(data_dir),
                "--seed-worker",
                str(seed),
                *(["--smoke"] if plan is SMOKE else []),
            ]
        )
        for seed in seeds
    ]
    runs = []
    for seed, worker in zip(seeds, workers, strict=True):
        if worker.wait() != 0:
            runs.append({"seed": seed, "error": f"worker exited {worker.returncode}"})
            continue
        runs.append(json.loads((out / f"seed-{seed}" / "seed.json").read_text()))
    done = [r for r in runs if "error" not in r]
    median = {
        name: statistics.median(r["header_math"][name]["math_pct"] for r in done)
        for name in (done[0]["header_math"] if done else {})
    }
    return {"runs": runs, "median_math_pct": median}


def check_large(data_dir: Path, plan: Plan) -> dict:
    from transformers import LlamaConfig, LlamaForCausalLM

    train = compose(LARGE)
    large, lora = train["model"], train["lora"]
    embedded, tokenizer, _ = load_embedded(plan)
    shape = LlamaConfig(
        **plan.large_shape, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id
    )
    torch.manual_seed(0)
    with torch.device(plan.device):
        model = LlamaForCausalLM(shape).to(finetune._dtype(large["dtype"]))
    parameters = sum(p.numel() for p in model.parameters())
    if large["gradient_checkpointing"]:
        model.gradient_checkpointing_enable()
        model.config.use_cache = False
    model = finetune.add_lora(
        model, replace(LoraSettings.from_config(lora), enabled=True, modules_to_save=None)
    )
    module = finetune.LoRAFineTuner(model, lr=large["lr"]).to(plan.device)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=large["lr"], fused=True)

    micro = large["micro_batch_size"]
    full_scenes = plan.full_scenes or train["full_scenes"]
    # The embedded tokenizer's lengths (the micro one's vocabulary is small: long samples).
    max_length = max(large["max_length"], embedded["max_length"])
    data = DerivativeDataModule(
        str(data_dir),
        tokenizer,
        micro_batch_size=micro,
        max_length=max_length,
        seed=train["seed"],
        full_scenes=full_scenes,
    )
    data.setup()
    batches = list(data.train_dataloader())
    whole = [b for b in batches if int(b["attention_mask"].sum(dim=1).min()) > 400]
    header = [b for b in batches if int(b["attention_mask"].sum(dim=1).max()) < 300]

    def synchronize() -> None:
        if plan.device == "cuda":
            torch.cuda.synchronize()

    def seconds_per_batch(chosen: list[dict]) -> tuple[float, int]:
        times, tokens = [], 0
        for index, batch in enumerate(chosen[: plan.repeats + 1]):
            batch = {k: v.to(plan.device) for k, v in batch.items()}
            synchronize()
            start = time.perf_counter()
            with torch.autocast(plan.device, dtype=torch.bfloat16):
                loss = module.response_loss(batch)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            synchronize()
            if index:  # the first pays for allocations and kernel selection
                times.append(time.perf_counter() - start)
                tokens += int(batch["attention_mask"].sum())
        if not times:
            raise ValueError(
                f"fewer than 2 micro-batches of that kind in the train split ({len(chosen)})"
            )
        return statistics.median(times), round(tokens / sum(times))

    whole_s, whole_tps = seconds_per_batch(whole)
    header_s, header_tps = seconds_per_batch(header)
    whole_samples = min(full_scenes, len(data.splits["train"]))
    epoch_s = (
        -(-whole_samples // micro) * whole_s
        + -(-(len(data.splits["train"]) - whole_samples) // micro) * header_s
    )
    memory = torch.cuda.max_memory_allocated() / 2**30 if plan.device == "cuda" else None

    # Inference runs on the merged model, as the CLI loads it; a test scene's length of new tokens.
    merged = finetune.merge(model).eval()
    merged.gradient_checkpointing_disable()
    merged.config.use_cache = True
    test = data.splits["test"]
    prompt_length = test[0]["labels"].count(IGNORE_INDEX)
    prompt = torch.tensor([test[0]["input_ids"][:prompt_length]], device=plan.device)
    new_tokens = plan.new_tokens or int(
        statistics.median(len(e["input_ids"]) - e["labels"].count(IGNORE_INDEX) for e in test)
    )
    decode = []
    with torch.inference_mode():
        for _ in range(3):
            synchronize()
            start = time.perf_counter()
            out = merged.generate(
                prompt, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False
            )
            synchronize()
            decode.append(time.perf_counter() - start)
    decoded = int(out.shape[1] - prompt.shape[1])
    return {
        "parameters": parameters,
        "trainable_parameters": sum(p.numel() for p in trainable),
        "micro_batch_size": micro,
        "whole_scene_batch_s": round(whole_s, 4),
        "whole_scene_tokens_per_s": whole_tps,
        "header_batch_s": round(header_s, 4),
        "header_tokens_per_s": header_tps,
        "epoch_estimate_s": round(epoch_s, 1),
        "peak_memory_gib": round(memory, 1) if memory is not None else None,
        "decode_new_tokens": decoded,
        "decode_s": [round(s, 2) for s in decode],
        "decode_tokens_per_s": round(decoded / statistics.median(decode), 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument(
        "--scenes", type=int, default=20, help="test functions the tiny model writes scenes for"
    )
    parser.add_argument("--skip-tiny", action="store_true")
    parser.add_argument("--skip-large", action="store_true")
    parser.add_argument(
        "--smoke", action="store_true", help="every step shrunk, on the CPU: checks the script"
    )
    parser.add_argument(
        "--seeds",
        help="comma-separated seeds: fine-tune once per seed, in parallel, and report each one's "
        "header math on the test split and the benchmarks (instead of the tiny and large steps)",
    )
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)  # a seed worker's dataset
    parser.add_argument("--seed-worker", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    plan = SMOKE if args.smoke else Plan(scenes=args.scenes)
    if plan.device == "cuda" and not torch.cuda.is_available():
        print(
            "error: no CUDA device here; run this where the GPU is (or pass --smoke)",
            file=sys.stderr,
        )
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    if args.seed_worker is not None:
        result = seed_worker(args.data, args.out, plan, args.seed_worker)
        (args.out / "seed.json").write_text(json.dumps(result, indent=1) + "\n")
        return 0
    if args.seeds:
        seeds = [int(seed) for seed in args.seeds.split(",")]
        start = time.perf_counter()
        report = seeds_check(seeds, build_data(args.out / "data", plan), args.out, plan)
        report["wall_s"] = round(time.perf_counter() - start, 1)
        (args.out / "gpu_check.json").write_text(json.dumps(report, indent=1) + "\n")
        print(json.dumps(report, indent=1))
        return 0 if all("error" not in run for run in report["runs"]) else 1
    report = {
        "device": torch.cuda.get_device_name() if plan.device == "cuda" else "cpu",
        "torch": torch.__version__,
    }
    with tempfile.TemporaryDirectory() as scratch:
        data_dir = build_data(Path(scratch) / "data", plan)
        for name, skip, check in (
            ("tiny", args.skip_tiny, lambda: check_tiny(data_dir, args.out, plan)),
            ("large", args.skip_large, lambda: check_large(data_dir, plan)),
        ):
            if skip:
                continue
            start = time.perf_counter()
            try:
                report[name] = check()
            except Exception as error:  # noqa: BLE001 - the report says which part failed, and why
                import traceback

                traceback.print_exc()
                report[name] = {"error": f"{type(error).__name__}: {error}"}
            report[name]["wall_s"] = round(time.perf_counter() - start, 1)
            if plan.device == "cuda":
                torch.cuda.empty_cache()
            (args.out / "gpu_check.json").write_text(json.dumps(report, indent=1) + "\n")
    print(
        json.dumps(
            {
                k: ({kk: vv for kk, vv in v.items() if kk != "rows"} if isinstance(v, dict) else v)
                for k, v in report.items()
            },
            indent=1,
        )
    )
    return 0 if all("error" not in report.get(k, {}) for k in ("tiny", "large")) else 1


if __name__ == "__main__":
    sys.exit(main())
