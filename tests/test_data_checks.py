"""Start-up checks: a task's vocabulary against the model's vocab_size, and truncating feature lengths."""
from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import seqio
import yaml

import flanx.data
from flanx import entrypoints
from flanx.data import checks, tasks, vocab


@pytest.fixture
def wide_vocabulary():
    """A file-free vocabulary of 559 ids (seqio's bytes plus 300 extra ids): too many for tiny's 384."""
    vocab.VOCABULARIES.register("ut_wide_bytes", vocab.VocabularyType(
        seqio=lambda required: seqio.ByteVocabulary(extra_ids=300),
        encode=lambda text: [b + 3 for b in text.encode("utf-8")]))
    yield "ut_wide_bytes"
    vocab.VOCABULARIES.unregister("ut_wide_bytes")


def _card(name, vocabulary, rows, tmp_path):
    (tmp_path / f"{name}.json").write_text(json.dumps(rows))
    spec = {"name": name, "vocabulary": vocabulary, "task_naming": "plain", "group": "target",
            "source": {"type": "json", "root": str(tmp_path)}, "splits": {"train": f"{name}.json"},
            "fields": {"text": "text", "summary": "summary"},
            "templates": [{"input": "Summarize: {text}", "target": "{summary}"}]}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_vocabulary_larger_than_the_model_is_refused_naming_model_gins(tmp_path, wide_vocabulary):
    flanx.data.register_task_card(str(_card("ut_wide", wide_vocabulary, [{"text": "a", "summary": "b"}], tmp_path)),
                                  refresh_mixtures=False)
    try:
        with pytest.raises(checks.VocabularyMismatch) as info:
            checks.check_vocabulary("ut_wide", 384, "the model (MODEL_CONFIG: preset 'tiny')")
        message = str(info.value)
        assert message.startswith("MIXTURE_OR_TASK_NAME 'ut_wide' uses the 'ut_wide_bytes' vocabulary (559 token ids), "
                                  "but the model (MODEL_CONFIG: preset 'tiny') has vocab_size 384")
        # The smallest model gins with room for 559 ids, smallest first; and the field to set instead.
        assert "e.g. --gin_file=models/tiny_spm.gin (vocab_size 32,128), --gin_file=models/" in message
        assert message.endswith("or set --gin.flanx.T5Config.vocab_size=640 on this model")
        checks.check_vocabulary("ut_wide", 559)  # exactly enough ids
        assert checks.model_gins_for(384)[0] == ("models/tiny.gin", 384)
    finally:
        tasks.unregister_card("ut_wide")


@pytest.mark.needs_data
def test_spm_task_on_tiny_fails_at_start_before_model_dir_exists(tmp_path):
    """The reported case: models/tiny.gin (byte vocabulary, 384 ids) with a SentencePiece card."""
    _card("ut_spm_card", "t5_spm", [{"text": "a chat", "summary": "short"}] * 4, tmp_path)
    with pytest.raises(checks.VocabularyMismatch, match=r"uses the 't5_spm' vocabulary \(32,100 token ids\), but the "
                                                        r"model \(MODEL_CONFIG: preset 'tiny'\) has vocab_size 384.*"
                                                        r"--gin_file=models/tiny_spm.gin"):
        entrypoints.train(["--gin_file=models/tiny.gin", "--gin_file=runs/pretrain.gin",
                           f"--gin.MODEL_DIR='{tmp_path / 'run'}'", f"--gin.MIXTURE_OR_TASK_MODULE='{tmp_path}'",
                           "--gin.MIXTURE_OR_TASK_NAME='ut_spm_card'", "--gin.TRAIN_STEPS=2"])
    assert not (tmp_path / "run").exists()


def test_truncating_lengths_warn_with_percentiles(tmp_path, caplog):
    rng = np.random.default_rng(0)
    rows = [{"text": "x" * int(n), "summary": "y" * int(m)}
            for n, m in zip(rng.integers(10, 300, 400), rng.integers(1, 40, 400))]
    flanx.data.register_task_card(str(_card("ut_long", "byte", rows, tmp_path)), refresh_mixtures=False)
    try:
        # Independent reference: byte lengths of the rendered input ("Summarize: " + text) and target, + EOS.
        inputs = np.sort([len("Summarize: ") + len(r["text"]) + 1 for r in rows])
        targets = np.sort([len(r["summary"]) + 1 for r in rows])
        report = checks.length_report("ut_long", {"inputs": 128, "targets": 64})
        assert report.examples == 400  # fewer rows than the sample size: all of them
        for feature, values in (("inputs", inputs), ("targets", targets)):
            for q in (50, 90, 95, 99):
                assert report.percentiles[feature][q] == values[int(np.ceil(q / 100 * len(values))) - 1]
            assert report.percentiles[feature][100] == values[-1]
        assert report.truncated["inputs"] == pytest.approx(np.mean(inputs > 128))
        assert report.truncated["targets"] == 0.0
        with caplog.at_level(logging.WARNING, logger="flanx"):
            assert checks.warn_truncation("ut_long", {"inputs": 128, "targets": 64}) is not None
        (line,) = [r.getMessage() for r in caplog.records if "truncates" in r.getMessage()]
        share = f"{np.mean(inputs > 128):.0%}"
        assert f"inputs: {share} longer than 128 (token lengths p50 {report.percentiles['inputs'][50]}, " in line
        p99 = int(np.ceil(report.percentiles["inputs"][99] / 16) * 16)
        assert line.endswith(f"--gin.TASK_FEATURE_LENGTHS=\"{{'inputs': {p99}, 'targets': 64}}\"")
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="flanx"):
            assert checks.warn_truncation("ut_long", {"inputs": 512, "targets": 64}) is None
        assert not caplog.records
    finally:
        tasks.unregister_card("ut_long")
