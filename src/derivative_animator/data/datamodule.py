"""Tokenized (prompt, scene) pairs for causal-LM fine-tuning.

Each example is `prompt tokens + completion tokens + EOS`, the prompt coming from the
prompt module (`prompt.encode_prompt`, the very call inference makes). Labels are -100 on
the prompt: the loss is on the response only, as in DeepSeek's own fine-tuning script.
Batches are drawn from length-sorted buckets so little compute goes to padding.

A scene sample stops where the model's part of the scene ends (`scenes.written_length`): the
math header, the code all styles share and the style's opening (at the header where that
would pass `max_length`). Decoding writes the rest
(decoding.SharedCode, docs/decisions/0014-shared-code.md), the same text for every function,
so it costs no training and scenes of any length fit `model.max_length`.
Header practice (`full_scenes=N`): train samples after the first N stop at the end of their
math header (`math_header_length`). The header is what differs per function; the samples with
the shared code teach the model to pick a style after it, and a header costs a tenth of their
compute.
"""

from __future__ import annotations

import math
import random

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from derivative_animator import paths
from derivative_animator.data import dataset
from derivative_animator.data.dataset_schema import Record
from derivative_animator.data.prompt import (
    DEFAULT_FORMAT,
    PromptFormat,
    encode_prompt,
    require_same,
)
from derivative_animator.data.scenes import written_length
from derivative_animator.math.header import math_header_length

IGNORE_INDEX = -100


def encode_example(
    tokenizer, prompt_text: str, completion: str, header_only: bool = False
) -> dict[str, list[int]]:
    return encode_examples(tokenizer, [prompt_text], [completion], [header_only])[0]


def _tokens_before(ids: list[int], starts: list[int], end: int | None) -> list[int]:
    """A scene's own tokens that start before character `end` (all for None): the very ids a
    whole sample has there, not a re-tokenized prefix."""
    return ids if end is None else ids[: sum(start < end for start in starts)]


ENCODE_CHUNK = 512  # completions per tokenizer call: 31,000 whole scenes at once took 20 GB


def encode_examples(
    tokenizer,
    prompts: list[str],
    completions: list[str],
    header_only: list[bool],
    max_length: int | None = None,
) -> list[dict[str, list[int]]]:
    """Examples for many samples: the completions in one batched tokenizer call (the fast
    tokenizer works through a batch in parallel: 7 s instead of 18 s for 4,400 scenes),
    the same ids as one call per sample. A sample whose style opening lies past `max_length`
    (a long header before the code all styles share) ends at its header."""
    examples = []
    for i, (prompt_text, completion) in enumerate(zip(prompts, completions, strict=True)):
        if i % ENCODE_CHUNK == 0:  # chunks: whole scenes' encodings, offsets and all, are large
            encoded = tokenizer(
                list(completions[i : i + ENCODE_CHUNK]),
                add_special_tokens=False,
                return_offsets_mapping=True,
            )
        prompt_ids = encode_prompt(tokenizer, prompt_text)
        completion_ids = encoded["input_ids"][i % ENCODE_CHUNK] + [tokenizer.eos_token_id]
        starts = [start for start, _ in encoded["offset_mapping"][i % ENCODE_CHUNK]]
        header = _tokens_before(completion_ids, starts, math_header_length(completion))
        if not header_only[i]:
            written = _tokens_before(completion_ids, starts, written_length(completion))
            fits = max_length is None or len(prompt_ids) + len(written) <= max_length
            completion_ids = written if fits else header
        else:
            completion_ids = header
        examples.append(
            {
                "input_ids": prompt_ids + completion_ids,
                "labels": [IGNORE_INDEX] * len(prompt_ids) + completion_ids,
            }
        )
    return examples


class TokenizedSplit(Dataset):
    def __init__(
        self,
        records: list[Record],
        tokenizer,
        max_length: int,
        prompt_format: PromptFormat,
        full_scenes: int | None = None,
    ):
        # The prompt is re-made by the prompt module, never read back from the file.
        self.examples = encode_examples(
            tokenizer,
            [prompt_format.format(record.function) for record in records],
            [record.completion for record in records],
            [full_scenes is not None and index >= full_scenes for index in range(len(records))],
            max_length,
        )
        for record, example in zip(records, self.examples, strict=True):
            if len(example["input_ids"]) > max_length:
                raise ValueError(
                    f"sample {record.id} is {len(example['input_ids'])} tokens, over "
                    f"model.max_length={max_length}; raise model.max_length or use shorter scenes"
                )

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> dict[str, list[int]]:
        return self.examples[index]

    @property
    def lengths(self) -> list[int]:
        return [len(e["input_ids"]) for e in self.examples]


class BucketBatchSampler(Sampler[list[int]]):
    """Shuffle, cut into buckets, sort each bucket by length, batch, shuffle the batches.
    Seeded by epoch, so runs repeat; `state_dict` says where in which epoch it is, so a run
    resumed mid-epoch goes on with the very next batch (ResumableLoader). With `max_tokens`, a
    batch also stops before its padded size (samples x the longest) would pass it: large
    batches of short headers, small ones of whole scenes, memory bounded either way."""

    def __init__(
        self,
        lengths: list[int],
        batch_size: int,
        bucket_size: int,
        shuffle: bool,
        seed: int,
        num_replicas: int = 1,
        rank: int = 0,
        max_tokens: int | None = None,
    ):
        self.lengths, self.batch_size, self.shuffle, self.seed = lengths, batch_size, shuffle, seed
        self.max_tokens = max_tokens
        self.bucket_size = max(bucket_size, batch_size)
        self.num_replicas, self.rank = num_replicas, rank  # DDP: each rank takes every n-th batch
        self.epoch = 0
        self._position = {"epoch": 0, "taken": 0}  # the running epoch, and batches handed out of it
        self._resume_at: dict | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def state_dict(self) -> dict:
        return dict(self._position)

    def load_state_dict(self, state: dict) -> None:
        self._resume_at = dict(state)

    def batches(self, epoch: int) -> list[list[int]]:
        rng = random.Random(self.seed + epoch)
        order = list(range(len(self.lengths)))
        if self.shuffle:
            rng.shuffle(order)
        batches = []
        for start in range(0, len(order), self.bucket_size):
            bucket = sorted(order[start : start + self.bucket_size], key=lambda i: self.lengths[i])
            batches += self._cut(bucket)
        if self.shuffle:
            rng.shuffle(batches)
        usable = len(batches) - len(batches) % self.num_replicas  # same step count on every rank
        return batches[self.rank : usable : self.num_replicas]

    def _cut(self, bucket: list[int]) -> list[list[int]]:
        """A length-sorted bucket as batches of at most batch_size samples (and max_tokens)."""
        cap = math.inf if self.max_tokens is None else self.max_tokens
        batches, batch = [], []
        for index in bucket:  # ascending lengths: the newest sample is the batch's longest
            full = len(batch) == self.batch_size
            if batch and (full or (len(batch) + 1) * self.lengths[index] > cap):
                batches.append(batch)
                batch = []
            batch.append(index)
        return batches + [batch] if batch else batches

    def __iter__(self):
        epoch, skip = self.epoch, 0
        if self._resume_at is not None:
            epoch, skip, self._resume_at = self._resume_at["epoch"], self._resume_at["taken"], None
        self.epoch = epoch + 1
        self._position = {"epoch": epoch, "taken": skip}
        for batch in self.batches(epoch)[skip:]:
            self._position["taken"] += 1
            yield batch

    def __len__(self) -> int:  # with max_tokens the count depends on which lengths share a bucket
        return len(self.batches(self.epoch))


class ResumableLoader(DataLoader):
    """A DataLoader Lightning saves and restores with each checkpoint (it has state_dict and
    load_state_dict): its batch sampler's place in the epoch."""

    def state_dict(self) -> dict:
        return self.batch_sampler.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.batch_sampler.load_state_dict(state)


def collate(examples: list[dict[str, list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    width = max(len(e["input_ids"]) for e in examples)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    attention = torch.zeros((len(examples), width), dtype=torch.long)
    for row, example in enumerate(examples):
        n = len(example["input_ids"])
        input_ids[row, :n] = torch.tensor(example["input_ids"])
        labels[row, :n] = torch.tensor(example["labels"])
        attention[row, :n] = 1
    return {"input_ids": input_ids, "labels": labels, "attention_mask": attention}


def padding_share(lengths: list[int], batches: list[list[int]]) -> float:
    """Fraction of the batch tensors' positions that are padding."""
    real = sum(lengths[i] for batch in batches for i in batch)
    total = sum(max(lengths[i] for i in batch) * len(batch) for batch in batches)
    return 1 - real / total if total else 0.0


class DerivativeDataModule(pl.LightningDataModule):
    def __init__(
        self,
        data_dir: str,
        tokenizer,
        micro_batch_size: int = 4,
        max_length: int = 2048,
        bucket_size: int = 64,
        num_workers: int = 0,
        seed: int = 42,
        max_tokens: int | None = None,
        limit_train_samples: int | None = None,
        prompt_format: PromptFormat = DEFAULT_FORMAT,
        full_scenes: int | None = None,
    ):
        super().__init__()
        if full_scenes is not None and full_scenes < 1:
            raise ValueError(
                "full_scenes must be at least 1 (or null: every train sample whole), "
                f"got {full_scenes}"
            )
        self.full_scenes = full_scenes
        self.data_dir, self.tokenizer = data_dir, tokenizer
        self.micro_batch_size, self.max_length = micro_batch_size, max_length
        self.bucket_size, self.num_workers, self.seed = bucket_size, num_workers, seed
        self.max_tokens = max_tokens
        self.limit_train_samples, self.prompt_format = limit_train_samples, prompt_format
        self.splits: dict[str, TokenizedSplit] = {}

    @classmethod
    def from_config(cls, cfg, tokenizer, **overrides) -> DerivativeDataModule:
        """The data module conf/train.yaml describes: train.py's, and what the benchmark times."""
        arguments = {
            "data_dir": cfg.data.dir,
            "micro_batch_size": cfg.optim.micro_batch_size,
            "max_length": cfg.model.max_length,
            "bucket_size": cfg.loader.bucket_size,
            "max_tokens": cfg.loader.max_tokens,
            "num_workers": cfg.loader.num_workers,
            "seed": cfg.seed,
            "limit_train_samples": cfg.get("limit_train_samples"),
            "full_scenes": cfg.get("full_scenes"),
        }
        return cls(tokenizer=tokenizer, **{**arguments, **overrides})

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        directory = paths.resolve(self.data_dir)
        # Refuse a dataset whose prompts were made with another format.
        require_same(PromptFormat.load(directory), self.prompt_format)
        for split in ("train", "validation", "test"):
            records = dataset.read_split(directory, split)
            if split == "train" and self.limit_train_samples:
                records = records[: self.limit_train_samples]
            self.splits[split] = TokenizedSplit(
                records,
                self.tokenizer,
                self.max_length,
                self.prompt_format,
                full_scenes=self.full_scenes if split == "train" else None,
            )

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        data = self.splits[split]
        trainer = getattr(self, "trainer", None)
        replicas, rank = (
            (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        )
        sampler = BucketBatchSampler(
            data.lengths,
            self.micro_batch_size,
            self.bucket_size,
            shuffle,
            self.seed,
            replicas,
            rank,
            self.max_tokens,
        )
        pad_id = (
            self.tokenizer.pad_token_id
            if self.tokenizer.pad_token_id is not None
            else self.tokenizer.eos_token_id
        )
        loader = ResumableLoader if shuffle else DataLoader
        return loader(
            data,
            batch_sampler=sampler,
            num_workers=self.num_workers,
            collate_fn=lambda examples: collate(examples, pad_id),
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("validation", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)
