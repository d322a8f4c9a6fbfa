"""`flanx cache`: cache flanx's tasks offline with Apache Beam, in seqio's cache format.

    flanx cache TASK_OR_MIXTURE... --output_cache_dir DIR [--runner DirectRunner] [--splits train,validation]
        [--min_shards 64] [--max_shards 0] [--overwrite] [--task_card FILE]... [BEAM PIPELINE OPTIONS...]

Names are tasks, mixtures (all their tasks) or shell patterns (`'dialogsum_*'`).
For every task and split, seqio's Beam transforms (`seqio.beam_utils`) render
and tokenize the examples (the task's preprocessors up to its
`seqio.CacheDatasetPlaceholder`), shuffle them and write, under
`DIR/<task>/`, the TFRecord shards, `info.{split}.json` and `stats.{split}.json`,
then `COMPLETED` once all splits are written: the layout seqio's
`use_cached=True` reads. Each example also carries seqio's provenance
features, which `flanx.data.cache` uses to restore the uncached order.

Any argument not listed above goes to Beam's `PipelineOptions`, so the same
command runs on Dataflow, Flink or Spark (`--runner DataflowRunner --project P
--region R --temp_location gs://... --num_workers N ...`; see docs/caching.md).
Tasks already cached in DIR are skipped unless `--overwrite`. Workers re-register
flanx's task collection (plus `--task_card` files) and read the data from
`FLANX_DATA_DIR` (`--data_dir`, default: this machine's value).

One flanx task split is one Beam input shard (its source renders in Python),
so Beam parallelises across tasks and splits, not within one split.
"""
from __future__ import annotations

import argparse
import fnmatch
import functools
import json
import logging
import os
import sys
import time

logger = logging.getLogger("flanx")

_CARD_TASKS: dict[str, list[str]] = {}  # card file -> the task names it registered in this process


def _register(data_dir: str | None, card_files: tuple[str, ...]) -> None:
    """Make flanx's tasks (and extra cards) known in this process: on the launcher and on each Beam worker."""
    if data_dir:
        os.environ["FLANX_DATA_DIR"] = data_dir
    import seqio

    from flanx import data

    data.register_all()
    for path in card_files:
        known = _CARD_TASKS.get(path)
        if not known or any(name not in seqio.TaskRegistry.names() for name in known):
            _CARD_TASKS[path] = data.register_task_card(path)


def select_tasks(names: list[str]) -> list[str]:
    """Task names for tasks, mixtures (their tasks) and shell patterns over task names, sorted, unique."""
    import seqio

    from flanx.data import tasks as tasks_lib

    all_tasks = sorted(seqio.TaskRegistry.names())
    selected: set[str] = set()
    for name in names:
        if any(c in name for c in "*?["):
            matched = fnmatch.filter(all_tasks, name)
            if not matched:
                raise KeyError(f"pattern {name!r} matches no registered task; `flanx tasks list` shows them")
            selected.update(matched)
        elif name in seqio.MixtureRegistry.names():
            selected.update(t.name for t in seqio.get_mixture_or_task(name).tasks)
        elif name in all_tasks:
            selected.add(name)
        else:
            raise tasks_lib.unknown_name("task or mixture", name, all_tasks + list(seqio.MixtureRegistry.names()))
    return sorted(selected)


def _num_shards(num_input_shards: int, min_shards: int, max_shards: int) -> int:
    n = max(num_input_shards, min_shards) if min_shards > 0 else num_input_shards
    return min(n, max_shards) if max_shards > 0 else n


def add_task(pipeline, task, output_dir: str, splits: list[str], setup_fn, min_shards: int = 64,
             max_shards: int = 0):
    """Add the transforms that cache `task`'s `splits` under `output_dir` (seqio's layout) to `pipeline`."""
    import apache_beam as beam
    import seqio
    from seqio import beam_utils

    completion = []
    for split in splits:
        label = f"{task.name}_{split}"
        # add_provenance: each example records its position in the (unshuffled) source split.
        preprocess = beam_utils.PreprocessTask(task, split, setup_fn=setup_fn, add_provenance=True)
        num_shards = _num_shards(len(preprocess.shards), min_shards, max_shards)
        examples = (pipeline
                    | f"{label}_preprocess" >> preprocess
                    | f"{label}_shuffle" >> beam.Reshuffle())
        completion.append(examples | f"{label}_write_tfrecord" >> beam_utils.WriteExampleTfRecord(
            seqio.get_cached_tfrecord_prefix(output_dir, split), num_shards=num_shards))
        # Provenance features go into info.json so that seqio's reader parses them back.
        completion.append(examples
                          | f"{label}_info" >> beam_utils.GetInfo(num_shards, exclude_provenance=False)
                          | f"{label}_write_info" >> beam_utils.WriteJson(seqio.get_cached_info_path(output_dir, split)))
        completion.append(examples
                          | f"{label}_stats" >> beam_utils.GetStats(task.output_features)
                          | f"{label}_write_stats" >> beam_utils.WriteJson(
                              seqio.get_cached_stats_path(output_dir, split)))
    # COMPLETED (what seqio looks for) is written only after every split's outputs are.
    _ = (completion
         | f"{task.name}_all_written" >> beam.Flatten()
         | f"{task.name}_nothing" >> beam.Filter(lambda _: False)
         | f"{task.name}_write_completed" >> beam.io.textio.WriteToText(
             os.path.join(output_dir, "COMPLETED"), num_shards=1, shard_name_template="",
             append_trailing_newlines=False))


def _split_files(output_dir: str, split: str) -> list[str]:
    import seqio
    import tensorflow as tf

    return (tf.io.gfile.glob(seqio.get_cached_tfrecord_prefix(output_dir, split) + "-*")
            + [p for p in (seqio.get_cached_info_path(output_dir, split), seqio.get_cached_stats_path(output_dir, split))
               if tf.io.gfile.exists(p)])


def plan(task_names: list[str], output_cache_dir: str, splits: list[str] | None, overwrite: bool):
    """[(task, output_dir, splits)] still to cache in `output_cache_dir`, clearing what they replace.

    A completed task gets only its missing splits (all `--overwrite` ones: their
    files are removed first; other splits stay), its COMPLETED removed until the
    job re-writes it; a task directory without COMPLETED (an interrupted job) is
    started afresh.
    """
    import seqio
    import tensorflow as tf

    todo = []
    for name in task_names:
        task = seqio.TaskRegistry.get(name)
        if not task.supports_caching:
            raise ValueError(f"task {name!r} has no seqio.CacheDatasetPlaceholder and cannot be cached")
        output_dir = os.path.join(output_cache_dir, seqio.get_task_dir_from_name(name))
        wanted = [s for s in task.splits if splits is None or s in splits]
        if not wanted:
            logger.warning("skipping %s: none of its splits %s is among --splits %s", name, task.splits, splits)
            continue
        completed = os.path.join(output_dir, "COMPLETED")
        if tf.io.gfile.exists(completed):
            if not overwrite:
                wanted = [s for s in wanted if not tf.io.gfile.exists(seqio.get_cached_info_path(output_dir, s))]
            if not wanted:
                logger.info("skipping %s: already cached in %s (--overwrite re-creates it)", name, output_dir)
                continue
            for path in [completed] + [f for s in wanted for f in _split_files(output_dir, s)]:
                tf.io.gfile.remove(path)
        elif tf.io.gfile.exists(output_dir):
            tf.io.gfile.rmtree(output_dir)
        todo.append((task, output_dir, wanted))
    return todo


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="flanx cache", description=__doc__.split("\n\n")[0],
                                epilog="Other arguments are Beam pipeline options (e.g. --project, --region, "
                                       "--temp_location, --num_workers, --direct_num_workers).")
    p.add_argument("names", nargs="+", help="tasks, mixtures or shell patterns over task names")
    p.add_argument("--output_cache_dir", required=True, help="cache root (local or gs://); one folder per task")
    p.add_argument("--runner", default="DirectRunner", help="Beam runner (default: DirectRunner)")
    p.add_argument("--splits", default=None, help="comma-separated splits to cache (default: every split)")
    p.add_argument("--min_shards", type=int, default=64, help="minimum TFRecord shards per split (seqio's default)")
    p.add_argument("--max_shards", type=int, default=0, help="maximum TFRecord shards per split (0: no limit)")
    p.add_argument("--overwrite", action="store_true", help="re-create tasks already cached in the directory")
    p.add_argument("--task_card", action="append", default=[], help="extra task card YAML to register (repeatable)")
    p.add_argument("--data_dir", default=os.environ.get("FLANX_DATA_DIR"),
                   help="FLANX_DATA_DIR for the workers (default: this machine's)")
    return p


def run(args: argparse.Namespace, beam_args: list[str]) -> dict:
    """Run the cache pipeline; returns {task: {split: examples}} read back from the stats files."""
    import apache_beam as beam
    import seqio
    import tensorflow as tf
    from apache_beam.options.pipeline_options import PipelineOptions

    card_files = tuple(os.path.abspath(f) for f in args.task_card)
    _register(args.data_dir, card_files)
    names = select_tasks(args.names)
    splits = [s.strip() for s in args.splits.split(",") if s.strip()] if args.splits else None
    todo = plan(names, args.output_cache_dir, splits, args.overwrite)
    setup_fn = functools.partial(_register, args.data_dir, card_files)
    t0 = time.perf_counter()
    if todo:
        tf.io.gfile.makedirs(args.output_cache_dir)
        options = PipelineOptions([f"--runner={args.runner}"] + beam_args)
        with beam.Pipeline(options=options) as pipeline:
            for task, output_dir, wanted in todo:
                add_task(pipeline, task, output_dir, wanted, setup_fn, args.min_shards, args.max_shards)
    seconds = time.perf_counter() - t0
    counts = {}
    for task, output_dir, wanted in todo:
        counts[task.name] = {}
        for split in wanted:
            with tf.io.gfile.GFile(seqio.get_cached_stats_path(output_dir, split)) as f:
                counts[task.name][split] = int(json.load(f).get("examples", 0))
    total = sum(sum(c.values()) for c in counts.values())
    return {"cached": counts, "skipped": len(names) - len(todo), "examples": total, "seconds": round(seconds, 2),
            "examples_per_s": round(total / seconds, 1) if todo and seconds > 0 else None,
            "output_cache_dir": args.output_cache_dir}


def _stray_names(beam_args: list[str]) -> list[str]:
    """Words among the pass-through arguments that are no option's value (task names given too late)."""
    stray, prev = [], None
    for arg in beam_args:
        if not arg.startswith("-") and not (prev and prev.startswith("-") and "=" not in prev):
            stray.append(arg)
        prev = arg
    return stray


def main(argv: list[str] | None = None) -> int:
    args, beam_args = build_parser().parse_known_args(sys.argv[1:] if argv is None else argv)
    stray = _stray_names(beam_args)
    if stray:
        print(f"flanx cache: {stray} come after the options; give task and mixture names first "
              "(flanx cache NAME... --output_cache_dir DIR ...)", file=sys.stderr)
        return 2
    try:
        import apache_beam  # noqa: F401
    except ImportError:
        print("flanx cache: Apache Beam is not installed; pip install -e '.[cache]' (or 'flanx[cache]')",
              file=sys.stderr)
        return 2
    from flanx.paths import MissingDataError

    try:
        summary = run(args, beam_args)
    except (KeyError, ValueError, MissingDataError) as e:
        print(f"flanx cache: {e.args[0] if isinstance(e, KeyError) else e}", file=sys.stderr)
        return 1
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
