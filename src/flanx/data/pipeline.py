"""The data pipeline trainers and evaluators call: resumable batches and evaluation examples.

    it = get_dataset("synth_multitask", {"inputs": 256, "targets": 64}, batch_size=8, seed=0)
    batch = next(it)            # numpy int32 [8, L] arrays, T5X EncDecFeatureConverter names
    saved = it.state()          # JSON-able: where the iterator is and how it was built
    it2 = get_dataset(..., start_state=saved)   # or it2.restore(saved): same next batches

Batches come from `seqio.get_dataset` with `EncDecFeatureConverter(pack=...)`:
`encoder_input_tokens`, `decoder_input_tokens`, `decoder_target_tokens`,
`decoder_loss_weights`, plus `encoder_segment_ids`, `encoder_positions`,
`decoder_segment_ids`, `decoder_positions` when packed. The pipeline is
deterministic for a given (name, lengths, split, batch size, seed, packing,
shard, epochs): the same seed gives the same batches, `seqio.ShardInfo(i, n)`
gives host i a disjoint 1/n slice of every task, and resuming rebuilds the
same pipeline and skips the batches already consumed (cost: re-reading them
once, about a second per few thousand examples).

`use_cached=True` reads the tasks from their offline cache (`flanx cache`,
`flanx.data.cache`) and fails at construction, naming the command, when a task
is not cached. A cached task gives exactly the uncached batches, so
`use_cached` is not part of the position: a state saved on one path resumes
on the other.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np
import seqio
import tensorflow as tf

from flanx.data import cache, register_all, tasks

STATE_VERSION = 1


def check_name(name: str) -> None:
    """KeyError naming close matches unless `name` is a registered task or mixture (registers the collection)."""
    register_all()
    if name not in seqio.TaskRegistry.names() and name not in seqio.MixtureRegistry.names():
        from flanx.data import mixtures  # noqa: PLC0415
        raise tasks.unknown_name("task or mixture", name, list(seqio.TaskRegistry.names()) + list(mixtures.MIXTURES))


_check_name = check_name


class DataIterator:
    """An iterator of numpy batches that can report and restore its position exactly."""

    def __init__(self, name: str, task_feature_lengths: Mapping[str, int], split: str = "train",
                 batch_size: int = 8, shuffle: bool = True, seed: int = 0, pack: bool = True,
                 shard_info: seqio.ShardInfo | None = None, num_epochs: int | None = None,
                 use_cached: bool = False):
        _check_name(name)
        if use_cached:
            cache.require_cached(name, split)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if seed is None:
            raise ValueError("seed must be an int: every host must shuffle the same way for disjoint shards")
        self.config = {
            "name": name, "task_feature_lengths": {k: int(v) for k, v in dict(task_feature_lengths).items()},
            "split": split, "batch_size": int(batch_size), "shuffle": bool(shuffle), "seed": int(seed),
            "pack": bool(pack), "shard": [shard_info.index, shard_info.num_shards] if shard_info else [0, 1],
            "num_epochs": num_epochs,
        }
        self.use_cached = bool(use_cached)  # not in `config`: both paths give the same batches
        self.batches = 0
        self._it = None

    def _dataset(self, skip: int) -> tf.data.Dataset:
        c = self.config
        index, num_shards = c["shard"]
        ds = seqio.get_dataset(
            c["name"], task_feature_lengths=c["task_feature_lengths"],
            feature_converter=seqio.EncDecFeatureConverter(pack=c["pack"]),
            dataset_split=c["split"], shuffle=c["shuffle"], num_epochs=c["num_epochs"],
            shard_info=seqio.ShardInfo(index, num_shards) if num_shards > 1 else None,
            seed=c["seed"], batch_size=c["batch_size"], use_cached=self.use_cached, verbose=False)
        options = tf.data.Options()
        options.deterministic = True
        ds = ds.with_options(options)
        if skip:
            ds = ds.skip(skip)
        return ds.prefetch(2)

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        if self._it is None:
            self._it = self._dataset(self.batches).as_numpy_iterator()
        batch = next(self._it)
        self.batches += 1
        return {k: np.asarray(v, np.int32) for k, v in batch.items()}

    def state(self) -> dict:
        """JSON-serialisable position (batches consumed) plus the settings that define the stream."""
        return {"version": STATE_VERSION, "batches": self.batches, **self.config}

    def restore(self, state: Mapping) -> None:
        """Continue after `state["batches"]` batches; the settings must match this iterator's."""
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"data iterator state version {state.get('version')!r} is not {STATE_VERSION}")
        diffs = [f"{k}: saved {state.get(k)!r} vs now {v!r}" for k, v in self.config.items()
                 if _normalize(state.get(k)) != _normalize(v)]
        if diffs:
            raise ValueError("cannot resume the data iterator with different settings ("
                             + "; ".join(diffs) + "); resume with the saved settings")
        self.batches = int(state["batches"])
        self._it = None


def _normalize(value):
    return list(value) if isinstance(value, tuple) else value


def get_dataset(name: str, task_feature_lengths: Mapping[str, int] | None = None, split: str = "train",
                batch_size: int = 8, shuffle: bool = True, seed: int = 0, pack: bool = True,
                shard_info: seqio.ShardInfo | None = None, num_epochs: int | None = None,
                start_state: Mapping | None = None, use_cached: bool = False) -> DataIterator:
    """A resumable iterator of numpy batches of task or mixture `name` (see the module docstring)."""
    it = DataIterator(name, task_feature_lengths or {"inputs": 512, "targets": 128}, split, batch_size,
                      shuffle, seed, pack, shard_info, num_epochs, use_cached)
    if start_state is not None:
        it.restore(start_state)
    return it


def _decode(value):
    if isinstance(value, bytes):
        return value.decode("utf-8")
    return value.item() if isinstance(value, np.generic) else value


def get_eval_dataset(task: str, split: str = "validation", feature_lengths: Mapping[str, int] | None = None,
                     num_examples: int | None = None, use_cached: bool = False) -> list[dict]:
    """The first `num_examples` examples of `task`'s `split`, in order, as plain dicts.

    Each dict has `inputs` / `targets` (int32 token ids ending with EOS, trimmed
    to `feature_lengths`), `inputs_pretokenized` / `targets_pretokenized` (str)
    and, for `*_scoring` tasks, `idx` ([example, option]) and `is_correct`.
    seqio's Evaluator works on the same task; `seqio.get_mixture_or_task(task)`
    carries its metric functions and postprocessor. `use_cached` reads the
    offline cache (same examples, same order).
    """
    _check_name(task)
    if task not in seqio.TaskRegistry.names():
        raise ValueError(f"{task!r} is a mixture; evaluate its tasks one by one "
                         f"(seqio.get_mixture_or_task({task!r}).tasks)")
    if use_cached:
        cache.require_cached(task, split)
    ds = seqio.get_mixture_or_task(task).get_dataset(
        sequence_length=dict(feature_lengths) if feature_lengths else None, split=split, shuffle=False,
        num_epochs=1, seed=None, use_cached=use_cached)
    if num_examples is not None:
        ds = ds.take(num_examples)
    out = []
    for ex in ds.as_numpy_iterator():
        out.append({k: (np.asarray(v, np.int32) if k in ("inputs", "targets", "idx") else _decode(v))
                    for k, v in ex.items()})
    return out


def make_eval_batch(examples: list[dict], feature_lengths: Mapping[str, int]) -> dict[str, np.ndarray]:
    """Pad examples from `get_eval_dataset` into one unpacked EncDec batch (int32)."""
    n, li, lt = len(examples), feature_lengths["inputs"], feature_lengths["targets"]
    enc = np.zeros((n, li), np.int32)
    tgt = np.zeros((n, lt), np.int32)
    for i, ex in enumerate(examples):
        x, y = ex["inputs"][:li], ex["targets"][:lt]
        enc[i, :len(x)], tgt[i, :len(y)] = x, y
    dec_in = np.zeros_like(tgt)
    dec_in[:, 1:] = tgt[:, :-1]
    return {"encoder_input_tokens": enc, "decoder_input_tokens": dec_in, "decoder_target_tokens": tgt,
            "decoder_loss_weights": (tgt > 0).astype(np.int32)}
