"""Evaluation broken down by the examples' metadata (`flanx.eval.breakdown`): metrics per template within a
task and per format (`_template_type`) over tasks, recomputed with each task's own metric functions."""
from __future__ import annotations

import collections

import numpy as np
import pytest

import flanx.data
from flanx.data import pipeline
from flanx.eval import breakdown as breakdown_lib
from flanx.eval import evaluator
from flanx.models import get_config
from flanx.predict import DecodeConfig

ZS, FS = "synth_chat_intent_template_0to7_zsopt", "synth_chat_intent_template_0to7_fsopt"
LENGTHS = {"inputs": 512, "targets": 16}
N = 24


def test_breakdown_of_recorded_results_by_hand():
    flanx.data.register_all()
    records = {
        ZS: {"meta": {"_template_idx": [0, 0, 1, 1, 1], "_template_type": ["zs_opt"] * 5},
             "targets": ["refund", "billing", "refund", "cancel", "cancel"],
             "inferences": {"prediction": ["refund", "refund", "refund", "cancel", "billing"]},
             "metrics": {"accuracy": 0.6}},
        FS: {"meta": {"_template_idx": [3, 3], "_template_type": ["fs_opt"] * 2}, "targets": ["a", "b"],
             "inferences": {"prediction": ["a", "b"]}, "metrics": {"accuracy": 1.0}},
        "other_task_same_format": {"meta": {"_template_idx": [0], "_template_type": ["zs_opt"]}, "targets": ["x"],
                                   "inferences": {"prediction": ["y"]}, "metrics": {"accuracy": 0.0}},
    }
    got = breakdown_lib.breakdown(records)
    assert got["by_template"] == {ZS: {0: {"accuracy": 0.5, "examples": 2}, 1: {"accuracy": 2 / 3, "examples": 3}}}
    assert got["by_template_type"] == {"zs_opt": {"accuracy": 0.3, "tasks": 2}, "fs_opt": {"accuracy": 1.0, "tasks": 1}}


@pytest.mark.slow
def test_eval_runner_reports_metrics_by_template_and_format(monkeypatch):
    flanx.data.register_all()

    def fake_predict_fn(params, model_config, decode):  # right on even example indices, wrong on odd ones
        def predict_fn(dataset, model_feature_shapes=None):
            out = []
            for idx, features in dataset.as_numpy_iterator():
                target = [int(t) for t in features["decoder_target_tokens"]]
                out.append((int(idx), target if idx % 2 == 0 else [ord("?") + 3, 1] + [0] * (len(target) - 2)))
            return out
        return predict_fn

    monkeypatch.setattr(evaluator, "make_predict_fn", fake_predict_fn)
    runner = evaluator.EvalRunner(get_config("tiny"), [ZS, FS], "validation", LENGTHS, DecodeConfig(), N)
    try:
        results = runner(params=None, step=7)
    finally:
        runner.close()
    got = runner.breakdown
    for task in (ZS, FS):
        examples = pipeline.get_eval_dataset(task, "validation", LENGTHS, N)
        assert results[task]["accuracy"] == pytest.approx(np.mean([i % 2 == 0 for i in range(N)]))
        by_template = collections.defaultdict(list)
        for i, ex in enumerate(examples):
            by_template[ex["_template_idx"]].append(i % 2 == 0)
        assert got["by_template"][task] == {t: {"accuracy": pytest.approx(np.mean(hits)), "examples": len(hits)}
                                            for t, hits in by_template.items()}
        assert sum(v["examples"] for v in got["by_template"][task].values()) == N
    assert got["by_template_type"] == {"zs_opt": {"accuracy": pytest.approx(0.5), "tasks": 1},
                                       "fs_opt": {"accuracy": pytest.approx(0.5), "tasks": 1}}
