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
