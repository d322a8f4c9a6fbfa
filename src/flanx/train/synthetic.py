"""TensorFlow-free synthetic batches for tests, benchmarks and smoke runs.

`SyntheticBatches(shard, inputs_length, targets_length, vocab_size, seed)` is
an endless, resumable iterator of T5X-style numpy batches for a learnable
toy task: the target is the first `targets_length - 1` input tokens reversed,
then EOS. Batch `n` is drawn from (seed, n) as a global batch of
`local_batch_size * num_shards` rows of which shard `i` keeps its slice, so
`state()` / `restore(state)` resume exactly and 1 host or N hosts see the same
global batches. Input lengths
vary per example (padding with 0) so masks and loss weights are exercised.

The real data path is `flanx.data.pipeline.get_dataset`; use this where
TensorFlow/seqio should not be needed (trainer tests, `benchmarks/train_bench.py`).
"""
from __future__ import annotations

import numpy as np

from flanx.partitioning import HostShard


class SyntheticBatches:
    def __init__(self, shard: HostShard | int, inputs_length: int = 32, targets_length: int = 16,
                 vocab_size: int = 256, seed: int = 0, min_input_fraction: float = 0.5):
        if isinstance(shard, int):
            shard = HostShard(index=0, num_shards=1, local_batch_size=shard)
        if vocab_size < 4:
            raise ValueError(f"vocab_size={vocab_size} must be >= 4 (0 pad, 1 EOS, tokens from 2)")
        self.shard = shard
        self.inputs_length, self.targets_length = inputs_length, targets_length
        self.vocab_size, self.seed, self.min_input_fraction = vocab_size, seed, min_input_fraction
        self.position = 0

    def state(self) -> dict:
        return {"position": self.position}

    def restore(self, state: dict) -> None:
        self.position = int(state["position"])

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        # Draw the whole global batch, then keep this shard's rows: the global batch is the
        # same however many hosts share it.
        rng = np.random.default_rng([self.seed, self.position])
        self.position += 1
        b, li, lt = self.shard.local_batch_size, self.inputs_length, self.targets_length
        total = b * self.shard.num_shards
        lengths = rng.integers(max(1, int(li * self.min_input_fraction)), li + 1, size=total)
        inputs = rng.integers(2, self.vocab_size, size=(total, li)).astype(np.int32)
        rows = slice(self.shard.index * b, (self.shard.index + 1) * b)
        lengths, inputs = lengths[rows], inputs[rows]
        inputs[np.arange(li)[None, :] >= lengths[:, None]] = 0
        targets = np.zeros((b, lt), np.int32)
        for r in range(b):
            body = inputs[r, :lengths[r]][::-1][:lt - 1]
            targets[r, :len(body)] = body
            targets[r, len(body)] = 1  # EOS
        decoder_inputs = np.concatenate([np.zeros((b, 1), np.int32), targets[:, :-1]], axis=1)
        return {
            "encoder_input_tokens": inputs,
            "decoder_input_tokens": decoder_inputs,
            "decoder_target_tokens": targets,
            "decoder_loss_weights": (targets > 0).astype(np.int32),
        }
