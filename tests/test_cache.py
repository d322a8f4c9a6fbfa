"""`flanx cache` (Apache Beam, DirectRunner) and reading the cache: seqio's layout, the same batches and
examples as the uncached tasks (packed, sharded, several epochs, resumed across the two paths), the
not-cached error, and training from a cached DialogSum slice with the same losses as uncached."""
from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest
from helpers import assert_same_batches, take
import seqio
import yaml

import flanx.data
from flanx import cli
from flanx.data import cache, mixtures, pipeline, tasks

pytest.importorskip("apache_beam")
pytestmark = pytest.mark.slow  # every test here runs Beam pipelines (DirectRunner) or reads their output

LENGTHS = {"inputs": 64, "targets": 8}


def _eight(templates: list[dict]) -> list[dict]:
    """Card files with FLAN task names need 8 templates: vary the given ones with a numbered prefix."""
    return [dict(t, input=f"({i}) {t['input']}") for i in range(8) for t in templates][:8]


SUM_CARD = {"name": "cachetest_sum", "group": "cache_test", "vocabulary": "byte",
            "source": {"type": "synthetic", "generator": "order_total", "seed": 3},
            "splits": {"train": {"size": 23}, "validation": {"size": 7}},
            "fields": {"a": "price_a", "b": "price_b", "x": "item_a", "y": "item_b", "total": "total"},
            "templates": _eight([{"input": "{x} ${a} + {y} ${b} = ?", "target": "{total}"},
                                 {"input": "Total of ${a} and ${b}?", "target": "{total}"}]),
            "formats": ["zsnoopt"]}
REFUND_CARD = {"name": "cachetest_refund", "group": "cache_test", "vocabulary": "byte",
               "source": {"type": "synthetic", "generator": "chat", "seed": 4},
               "splits": {"train": {"size": 11}, "validation": {"size": 6}},
               "fields": {"chat": "chat", "label": "refund"}, "labels": {"yes": "yes", "no": "no"},
               "metrics": ["accuracy"],
               "templates": _eight([{"input": "Refund wanted?\n{chat}{options}", "target": "{label}"}]),
               "formats": ["zsopt"]}
SUM_TASK = "cachetest_sum_template_0to7_zsnoopt"
REFUND_TASK = "cachetest_refund_template_0to7_zsopt"
SCORING_TASK = REFUND_TASK + "_scoring"
MIX = "cachetest_mix"


def _flanx(*args) -> tuple[int, dict | None]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = cli.main(list(map(str, args)))
    lines = out.getvalue().strip().splitlines()
    return rc, (json.loads(lines[-1]) if rc == 0 and lines else None)


@pytest.fixture(scope="module")
def cache_dirs():
    """seqio's global cache dirs, restored afterwards (they are process-wide)."""
    saved = list(seqio.utils.get_global_cache_dirs())
    yield
    seqio.set_global_cache_dirs(saved)


@pytest.fixture(scope="module")
def synthetic_cache(tmp_path_factory, cache_dirs):
    root = tmp_path_factory.mktemp("synthetic_cache")
    card_files = []
    for card in (SUM_CARD, REFUND_CARD):
        path = root / f"{card['name']}.yaml"
        path.write_text(yaml.safe_dump(card))
        card_files.append(path)
        flanx.data.register_task_card(str(path), refresh_mixtures=False)
    mixtures.register_examples_mixture(MIX, ["cachetest_sum", "cachetest_refund"], cap=None)
    out = root / "cache"
    rc, summary = _flanx("cache", MIX, "cachetest_refund_template_0to*_scoring", "--output_cache_dir", out,
                         "--task_card", card_files[0], "--task_card", card_files[1], "--min_shards", 3)
    assert rc == 0
    cache.use_cache_dirs([str(out)])
    yield out, card_files, summary
    for card in (SUM_CARD, REFUND_CARD):
        tasks.unregister_card(card["name"])


def _task_names():
    return [t.name for t in seqio.get_mixture_or_task(MIX).tasks] + [SCORING_TASK]


def test_cache_has_seqios_layout_and_stats(synthetic_cache):
    out, _, summary = synthetic_cache
    assert set(summary["cached"]) == {SUM_TASK, REFUND_TASK, SCORING_TASK}
    for name in _task_names():
        task_dir = out / name
        assert (task_dir / "COMPLETED").is_file()
        for split in ("train", "validation"):
            assert sorted(p.name for p in task_dir.glob(f"{split}.tfrecord-*")) == [
                f"{split}.tfrecord-0000{i}-of-00003" for i in range(3)]
            info = json.loads((task_dir / f"info.{split}.json").read_text())
            assert info["num_shards"] == 3 and info["features"]["inputs"] == {"dtype": "int32", "shape": [None]}
            # stats against the uncached examples, counted here (tokens exclude EOS, as seqio counts)
            examples = pipeline.get_eval_dataset(name, split)
            stats = json.loads((task_dir / f"stats.{split}.json").read_text())
            assert stats["examples"] == len(examples) == summary["cached"][name][split]
            assert stats["inputs_tokens"] == sum(int((ex["inputs"] > 1).sum()) for ex in examples)
            assert stats["targets_max_tokens"] == max(int((ex["targets"] > 1).sum()) for ex in examples)


def test_plain_seqio_reads_the_cache(synthetic_cache):
    """A plain seqio.Task (not flanx's) reads the cache with use_cached=True: the same examples, in some order."""
    flanx_task = seqio.get_mixture_or_task(SCORING_TASK)
    plain = seqio.Task(SCORING_TASK, source=flanx_task.source, output_features=flanx_task.output_features,
                       preprocessors=flanx_task.preprocessors)
    assert type(plain) is seqio.Task

    def rows(ds):
        return sorted((tuple(ex["inputs"]), tuple(ex["targets"]), tuple(ex["idx"]), bool(ex["is_correct"]))
                      for ex in ds.as_numpy_iterator())
    cached = plain.get_dataset(None, "validation", use_cached=True, shuffle=False)
    uncached = plain.get_dataset(None, "validation", use_cached=False, shuffle=False)
    assert rows(cached) == rows(uncached)


def test_cached_batches_are_the_uncached_batches(synthetic_cache):
    # a mixture, packed, well past one epoch of each task (23 + 11 examples, 4 per batch)
    kwargs = dict(task_feature_lengths=LENGTHS, batch_size=4, seed=5)
    assert_same_batches(take(pipeline.get_dataset(MIX, **kwargs), 25),
                        take(pipeline.get_dataset(MIX, use_cached=True, **kwargs), 25))
    # a task, unpacked, host 1 of 2
    kwargs = dict(task_feature_lengths=LENGTHS, batch_size=3, seed=9, pack=False, shard_info=seqio.ShardInfo(1, 2))
    assert_same_batches(take(pipeline.get_dataset(SUM_TASK, **kwargs), 12),
                        take(pipeline.get_dataset(SUM_TASK, use_cached=True, **kwargs), 12))


def test_resume_continues_across_cached_and_uncached(synthetic_cache):
    kwargs = dict(task_feature_lengths=LENGTHS, batch_size=4, seed=2)
    reference = take(pipeline.get_dataset(MIX, **kwargs), 13)
    for first, then in ((False, True), (True, False)):
        it = pipeline.get_dataset(MIX, use_cached=first, **kwargs)
        take(it, 9)
        state = json.loads(json.dumps(it.state()))
        resumed = pipeline.get_dataset(MIX, use_cached=then, start_state=state, **kwargs)
        assert_same_batches(take(resumed, 4), reference[9:])


def test_eval_examples_including_scoring_features_match(synthetic_cache):
    for name in (SCORING_TASK, SUM_TASK):
        for split in ("validation", "train"):
            assert_same_batches(pipeline.get_eval_dataset(name, split, LENGTHS),
                                pipeline.get_eval_dataset(name, split, LENGTHS, use_cached=True))
    ex = pipeline.get_eval_dataset(SCORING_TASK, "validation", use_cached=True)[0]
    assert ex["idx"].shape == (2,) and isinstance(ex["is_correct"], bool)


def test_rerun_skips_cached_splits_adds_missing_ones_and_overwrite_recreates(synthetic_cache):
    out, card_files, _ = synthetic_cache
    task_dir = out / SUM_TASK
    train_files = {p: p.stat().st_mtime_ns for p in task_dir.glob("*train*")}
    rc, summary = _flanx("cache", SUM_TASK, "--output_cache_dir", out, "--task_card", card_files[0])
    assert rc == 0 and summary["cached"] == {} and summary["skipped"] == 1
    # a split missing from a completed cache is added; the other split is left alone
    stats = (task_dir / "stats.validation.json").read_text()
    for p in task_dir.glob("*validation*"):
        p.unlink()
    rc, summary = _flanx("cache", SUM_TASK, "--output_cache_dir", out, "--task_card", card_files[0],
                         "--min_shards", 3)
    assert rc == 0 and summary["cached"] == {SUM_TASK: {"validation": 7}}
    assert (task_dir / "COMPLETED").is_file() and (task_dir / "stats.validation.json").read_text() == stats
    assert {p: p.stat().st_mtime_ns for p in task_dir.glob("*train*")} == train_files
    # --overwrite re-creates the splits asked for
    (task_dir / "stats.train.json").write_text("{}")
    rc, summary = _flanx("cache", SUM_TASK, "--output_cache_dir", out, "--task_card", card_files[0],
                         "--overwrite", "--splits", "train", "--min_shards", 3)
    assert rc == 0 and summary["cached"] == {SUM_TASK: {"train": 23}}
    assert json.loads((task_dir / "stats.train.json").read_text())["examples"] == 23
    assert_same_batches(pipeline.get_eval_dataset(SUM_TASK, "validation", LENGTHS),
                        pipeline.get_eval_dataset(SUM_TASK, "validation", LENGTHS, use_cached=True))


def test_uncached_tasks_fail_naming_the_task_and_the_command(synthetic_cache, capsys):
    other = "synth_order_total_template_0_zero_shot"
    with pytest.raises(cache.TaskNotCachedError, match=rf"task '{other}' is not cached for split 'train'.*"
                                                       rf"`flanx cache {other} --output_cache_dir DIR --splits train`"):
        pipeline.get_dataset(other, LENGTHS, use_cached=True)
    with pytest.raises(cache.TaskNotCachedError, match=r"of mixture 'synth_multitask' are .*flanx cache synth_multitask"):
        pipeline.get_dataset("synth_multitask", LENGTHS, use_cached=True)
    with pytest.raises(cache.TaskNotCachedError, match="test"):  # cached, but not that split
        pipeline.get_eval_dataset(SUM_TASK, "test", use_cached=True)
    saved = list(seqio.utils.get_global_cache_dirs())
    seqio.set_global_cache_dirs([])
    try:
        with pytest.raises(ValueError, match="TASK_CACHE_DIRS"):
            cache.configure(True, None)
        assert cache.configure(False, None) is False
    finally:
        seqio.set_global_cache_dirs(saved)
    assert _flanx("cache", "cachetest_sum_templat_0to7", "--output_cache_dir", "unused")[0] == 1
    assert "did you mean: cachetest_sum_template_0to7_zsnoopt" in capsys.readouterr().err
    # Beam options pass through; a task name after them would silently not be cached
    assert _flanx("cache", SUM_TASK, "--output_cache_dir", "unused", "--project", "p", REFUND_TASK)[0] == 2
    assert f"['{REFUND_TASK}'] come after the options" in capsys.readouterr().err


# ----------------------------------------------------------------------------- real data: DialogSum

DIALOGSUM_SLICE = {  # 26 training and 10 validation dialogues, eight templates
    "name": "cachetest_dialogsum", "dataset": "dialogsum", "source": {"type": "jsonl"},
    "splits": {"train": {"files": "dialogsum/dialogsum.train.jsonl", "take_every": [480, 0]},
               "validation": {"files": "dialogsum/dialogsum.dev.jsonl", "take_every": [50, 0]}},
    "fields": {"dialogue": "dialogue", "summary": "summary"}, "metrics": ["rouge"],
    "templates": _eight([{"input": "Summarize the following conversation.\n\n{dialogue}\n\nSummary: ",
                          "target": "{summary}"},
                         {"input": "{dialogue}\n\nTL;DR:", "target": "{summary}"}]),
    "formats": ["zsnoopt"]}
DIALOGSUM_TASK = "cachetest_dialogsum_template_0to7_zsnoopt"
DIALOGSUM_LENGTHS = {"inputs": 128, "targets": 32}


@pytest.mark.needs_data
def test_dialogsum_cache_gives_the_uncached_batches_and_training(tmp_path, data_root, cache_dirs):
    card = tmp_path / "dialogsum_slice.yaml"
    card.write_text(yaml.safe_dump(DIALOGSUM_SLICE))
    flanx.data.register_task_card(str(card), refresh_mixtures=False)
    try:
        rc, summary = _flanx("cache", DIALOGSUM_TASK, "--output_cache_dir", tmp_path / "cache", "--task_card", card,
                             "--min_shards", 4, "--data_dir", data_root)
        assert rc == 0 and summary["cached"] == {DIALOGSUM_TASK: {"train": 26, "validation": 10}}
        cache.use_cache_dirs([str(tmp_path / "cache")])
        kwargs = dict(task_feature_lengths=DIALOGSUM_LENGTHS, batch_size=4, seed=1)
        uncached = take(pipeline.get_dataset(DIALOGSUM_TASK, **kwargs), 30)
        assert_same_batches(uncached, take(pipeline.get_dataset(DIALOGSUM_TASK, use_cached=True, **kwargs), 30))
        assert uncached[0]["encoder_input_tokens"].max() > 1000  # T5 SentencePiece ids, real text

        # A few steps of the tiny model (T5 vocabulary) through `flanx train`, from the cache and
        # uncached: the same batches, hence the same losses.
        from flanx import entrypoints
        from flanx.train.writers import read_metrics

        losses = {}
        for cached in (True, False):
            model_dir = tmp_path / f"model_{cached}"
            out = io.StringIO()
            with contextlib.redirect_stdout(out):
                rc = entrypoints.train([
                    "--gin_file=models/tiny.gin", "--gin_file=runs/pretrain.gin", "--gin.flanx.T5Config.vocab_size=32128",
                    f"--gin.MODEL_DIR='{model_dir}'", f"--gin.MIXTURE_OR_TASK_NAME='{DIALOGSUM_TASK}'",
                    f"--gin.TASK_FEATURE_LENGTHS={DIALOGSUM_LENGTHS}", "--gin.BATCH_SIZE=4", "--gin.TRAIN_STEPS=3",
                    "--gin.LOG_EVERY=1", f"--gin.USE_CACHED_TASKS={cached}",
                    f"--gin.TASK_CACHE_DIRS=['{tmp_path / 'cache'}']"])
            assert rc == 0
            losses[cached] = [r["loss"] for r in read_metrics(str(model_dir), "train")]
        assert len(losses[True]) == 3 and all(np.isfinite(losses[True]))
        assert losses[True] == losses[False]
    finally:
        tasks.unregister_card("cachetest_dialogsum")
