"""The files of a fine-tuned checkpoint (`<run dir>/checkpoint/`), each name spelled once:
`finetune.save_checkpoint` writes them; inference (`generate`), the evaluator's baselines,
MLflow (`tracking`) and the page read them. The prompt format's own file is the prompt
module's (`prompt.FILENAME`). Names only: importing this loads nothing."""

CHECKPOINT_DIR = "checkpoint"  # in a training run's directory
MERGED_DIR = "merged"  # the merged model and tokenizer with the files below: what inference loads
ADAPTER_DIR = "adapter"  # the LoRA adapter alone (none without LoRA)
TRAINED_CONFIG = "derivanim_config.json"  # in merged/: the training run's resolved config
RUN_INFO = "run_info.json"  # in merged/: the MLflow run that trained it, its step and metrics
DRAFT_CORPUS = (
    "draft_corpus.json"  # in merged/: the training scenes speculative decoding drafts from
)


def is_bare_base(directory) -> bool:
    """A base model as pretraining leaves it (`outputs/base/<stage>`, `models/derivanim-tiny`):
    a model config, but neither the training config nor the prompt format a checkpoint carries
    (a hand-made checkpoint has the prompt format: it is no base)."""
    from pathlib import Path

    from derivative_animator.data.prompt import FILENAME as PROMPT_FORMAT_FILE

    directory = Path(directory)
    return (
        (directory / "config.json").is_file()
        and not (directory / TRAINED_CONFIG).exists()
        and not (directory / PROMPT_FORMAT_FILE).exists()
    )
