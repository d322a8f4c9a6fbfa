"""Reading tasks cached offline by `flanx cache`: cache directories, the cached-task check, exact order.

`flanx cache` (`flanx.data.cache_pipeline`) runs seqio's Beam transforms over
flanx's tasks and writes seqio's cache layout under `CACHE_DIR/<task>/`:
`{split}.tfrecord-XXXXX-of-NNNNN` shards of `tf.train.Example`s, `info.{split}.json`
(features, shard count), `stats.{split}.json` (examples, token counts) and
`COMPLETED`. Each example holds what flanx's preprocessors produce before the
`seqio.CacheDatasetPlaceholder` (`inputs_pretokenized`, `targets_pretokenized`,
tokenized `inputs` / `targets` without EOS, `idx` / `is_correct` for scoring
tasks) plus seqio's provenance features, among them the example's position in
the rendered split.

Reading (`use_cached=True` anywhere seqio takes it, e.g.
`flanx.data.pipeline.get_dataset(..., use_cached=True)`): `CacheableTask`, the
`seqio.Task` class of every flanx task, reads the shards, puts the examples
back in the rendered split's order and shuffles them exactly as the uncached
source does, then runs the post-cache preprocessors (EOS after trimming). So a
cached task yields the very examples, in the very order, of the uncached
task for the same seed and shard, every epoch; a data iterator's saved
position means the same thing on either path. Beam writes shards in a random
order, which is why the order is restored from the provenance index.

Cache directories are seqio's global cache dirs: `use_cache_dirs(dirs)` adds
them (the entry points call it with the `TASK_CACHE_DIRS` gin macro).
`require_cached(name, split)` raises `TaskNotCachedError`, naming each
uncached task and the `flanx cache` command that caches it.
"""
from __future__ import annotations

import functools
import os
from typing import Iterable, Mapping, Sequence

import seqio
import tensorflow as tf

# seqio.beam_utils' provenance keys (that module imports apache_beam, so they are restated here).
PROVENANCE_PREFIX = "provenance/"
SHARD_INDEX_KEY = "provenance/source_shard_index"
INDEX_WITHIN_SHARD_KEY = "provenance/index_within_shard"
CACHE_DIRS_MACRO = "TASK_CACHE_DIRS"


class TaskNotCachedError(ValueError):
    """A task asked for with `use_cached=True` has no completed cache for the split."""


def use_cache_dirs(dirs: str | Iterable[str] | None) -> list[str]:
    """Add cache directories (local or `gs://`) to seqio's global list; returns the whole list."""
    if dirs:
        dirs = [dirs] if isinstance(dirs, (str, os.PathLike)) else list(dirs)
        seqio.add_global_cache_dirs([os.fspath(d) for d in dirs])
    return list(seqio.utils.get_global_cache_dirs())


def configure(use_cached, cache_dirs=None) -> bool:
    """The entry points' hook: `USE_CACHED_TASKS` and `TASK_CACHE_DIRS` -> use_cached (bool).

    With `use_cached` true, at least one cache directory must be known (given
    here or added earlier with `use_cache_dirs`).
    """
    dirs = use_cache_dirs(cache_dirs)
    if use_cached and not dirs:
        raise ValueError(f"USE_CACHED_TASKS is true but no cache directory is set: pass "
                         f"--gin.{CACHE_DIRS_MACRO}=\"['/path/or/gs://bucket/cache']\" (the --output_cache_dir "
                         "given to `flanx cache`)")
    return bool(use_cached)


def _leaf_tasks(name: str) -> list[seqio.Task]:
    provider = seqio.get_mixture_or_task(name)
    return list(provider.tasks) if isinstance(provider, seqio.Mixture) else [provider]


def cache_command(task_names: Sequence[str], split: str | None = None) -> str:
    splits = f" --splits {split}" if split else ""
    return f"flanx cache {' '.join(task_names)} --output_cache_dir DIR{splits}"


def require_cached(name: str, split: str) -> None:
    """Raise `TaskNotCachedError` unless every task of task/mixture `name` is cached for `split`.

    The caller registers the tasks first (`flanx.data.register_all()`)."""
    missing = []
    for task in _leaf_tasks(name):
        if split not in task.splits:
            continue  # seqio skips tasks without the split
        if not task.supports_caching:
            raise TaskNotCachedError(f"task {task.name!r} cannot be cached (no seqio.CacheDatasetPlaceholder "
                                     "among its preprocessors); read it with use_cached=False")
        cache_dir = task.cache_dir
        if not cache_dir or not tf.io.gfile.exists(seqio.utils.get_cached_info_path(cache_dir, split)):
            missing.append(task.name)
    if missing:
        dirs = seqio.utils.get_global_cache_dirs()
        if missing == [name]:
            what, command = f"task {name!r} is", cache_command([name], split)
        else:
            shown = ", ".join(repr(t) for t in missing[:5]) + (f" and {len(missing) - 5} more"
                                                              if len(missing) > 5 else "")
            what = f"{len(missing)} task(s) of mixture {name!r} are ({shown})"
            command = cache_command([name], split)  # caches the mixture's tasks, skipping cached ones
        raise TaskNotCachedError(f"{what} not cached for split {split!r} in the task cache dirs {dirs}; "
                                 f"cache with `{command}` (DIR: one of those dirs), or read the task uncached "
                                 "(USE_CACHED_TASKS = False)")


def _restore_order(batch: Mapping[str, tf.Tensor], num_examples: int, cache_dir: str) -> dict[str, tf.Tensor]:
    """All examples of a split (one ragged batch) -> the rendered split's order, provenance dropped."""
    index = batch[INDEX_WITHIN_SHARD_KEY]
    check = tf.debugging.assert_equal(
        tf.size(index, out_type=tf.int64), tf.constant(num_examples, tf.int64),
        message=f"cache {cache_dir}: the shards hold a different number of examples than its stats file; "
                "re-create it with `flanx cache ... --overwrite`")
    with tf.control_dependencies([check]):
        order = tf.argsort(index, stable=True)
    if SHARD_INDEX_KEY in batch:  # several source shards: shard-major, then position within the shard
        shard = tf.gather(batch[SHARD_INDEX_KEY], order)
        order = tf.gather(order, tf.argsort(shard, stable=True))
    return {k: tf.gather(v, order) for k, v in batch.items() if not k.startswith(PROVENANCE_PREFIX)}


def _rows(batch: Mapping[str, tf.Tensor], num_examples: int) -> tf.data.Dataset:
    """One ragged batch -> a dataset of its rows as dense tensors."""
    def row(i):
        return {k: v[i] for k, v in batch.items()}
    return tf.data.Dataset.range(num_examples).map(row)


class OrderedCacheSource(seqio.FunctionDataSource):
    """A cached split served like `flanx.data.tasks.FlanxSource` serves the rendered one.

    `files` is seqio's reader of the split's shards. The whole split is read
    once (lazily, at iteration), sorted back into the rendered order and held
    in memory, as the uncached source holds the rendered strings; with
    `shuffle` and a seed, one full shuffle per epoch with the uncached
    source's seed, which permutes the same way for a split of the same size.
    """

    def __init__(self, files: seqio.DataSource, split: str, cache_dir: str):
        self.cache_dir = cache_dir
        num_examples = int(files.num_input_examples(split))

        def dataset_fn(split: str, shuffle_files: bool, seed: int | None = None) -> tf.data.Dataset:
            ds = files.get_dataset(split=split, shuffle=False)
            if INDEX_WITHIN_SHARD_KEY not in ds.element_spec:
                raise ValueError(f"cache {cache_dir} has no {INDEX_WITHIN_SHARD_KEY!r} feature, so its order "
                                 "cannot be restored; re-create it with `flanx cache ... --overwrite`")
            # The whole split, sorted, cached: every epoch re-reads it from memory, not from the files.
            whole = ds.ragged_batch(max(num_examples, 1)).take(1).map(
                functools.partial(_restore_order, num_examples=num_examples, cache_dir=cache_dir)).cache()
            ds = whole.flat_map(functools.partial(_rows, num_examples=num_examples))
            if shuffle_files and seed is not None:
                ds = ds.shuffle(max(num_examples, 1), seed=int(seed), reshuffle_each_iteration=True)
            return ds

        super().__init__(dataset_fn=dataset_fn, splits=(split,), caching_permitted=False)

    def num_input_examples(self, split: str) -> None:
        return None  # as FlanxSource: no in-memory `cache()` that would freeze the first epoch's order


class CacheableTask(seqio.Task):
    """flanx's seqio.Task: reads its offline cache in the uncached order (see the module docstring)."""

    def _get_cached_source(self, split: str, file_shuffle_buffer_size: int | None = None) -> OrderedCacheSource:
        try:
            files = super()._get_cached_source(split, file_shuffle_buffer_size)
        except (AssertionError, tf.errors.NotFoundError) as e:
            raise TaskNotCachedError(f"task {self.name!r} is not cached for split {split!r} in "
                                     f"{seqio.utils.get_global_cache_dirs()}; cache it with "
                                     f"`{cache_command([self.name], split)}`") from e
        return OrderedCacheSource(files, split, self.cache_dir)

    def get_dataset(self, sequence_length=None, split="train", use_cached=False, shuffle=True,
                    shuffle_buffer_size=None, seed=None, shard_info=None, num_epochs=1,
                    trim_output_features=True, try_in_mem_cache=True) -> tf.data.Dataset:
        # seqio's in-memory `cache()` of small cached splits would replay the first epoch's
        # shuffle forever; OrderedCacheSource already holds the split in memory.
        return super().get_dataset(
            sequence_length=sequence_length, split=split, use_cached=use_cached, shuffle=shuffle,
            shuffle_buffer_size=shuffle_buffer_size, seed=seed, shard_info=shard_info, num_epochs=num_epochs,
            trim_output_features=trim_output_features, try_in_mem_cache=try_in_mem_cache and not use_cached)
