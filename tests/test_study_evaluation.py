"""The study's evaluation: the same numbers as seqio's Evaluator, per-example scores, fixed examples, chance."""
from __future__ import annotations

import jax
import numpy as np
import pytest

import flanx.data
from flanx.data import tasks
from flanx.experiments.evaluation import EvalSuite, select_indices
from flanx.models import get_config, init_params
from flanx.predict import DecodeConfig

CARD = {"name": "evalsuite_mini", "source": {"type": "synthetic", "generator": "chat", "seed": 3},
        "splits": {"train": {"size": 20}, "validation": {"size": 9}},
        "fields": {"chat": "chat", "label": "intent", "summary": "summary"},
        "labels": {"delivery": "delivery", "refund": "refund", "password": "password", "billing": "billing",
                   "cancel": "cancel"},
        "metrics": ["accuracy"],
        "templates": [{"input": "{chat}\nIntent?{options}", "target": "{label}"},
                      {"input": "Intent of: {chat}{options}", "target": "{label}"}],
        "vocabulary": "byte", "group": "test_group"}
SUMMARY = {**CARD, "name": "evalsuite_sum", "metrics": ["rouge"], "labels": None,
           "templates": [{"input": "Summarize: {chat}", "target": "{summary}"},
                         {"input": "{chat}\nIn short:", "target": "{summary}"}]}
LENGTHS = {"inputs": 128, "targets": 16}


@pytest.fixture(scope="module")
def model():
    flanx.data.register_task_card(CARD, refresh_mixtures=False)
    flanx.data.register_task_card(SUMMARY, refresh_mixtures=False)
    config = get_config("tiny", d_model=32, head_dim=8, d_ff=64)
    yield config, init_params(config, jax.random.PRNGKey(1))
    tasks.unregister_card("evalsuite_mini")
    tasks.unregister_card("evalsuite_sum")


def test_select_indices_spread_over_the_split():
    assert select_indices(5, 10) == [0, 1, 2, 3, 4]
    assert select_indices(10, 4) == [0, 2, 5, 7]
    assert select_indices(7, None) == list(range(7))


@pytest.mark.slow
def test_suite_matches_seqio_evaluator_and_keeps_per_example_scores(model):
    from flanx.eval import evaluator

    config, params = model
    names = ["evalsuite_mini_template_0to1_zsopt", "evalsuite_mini_template_0to1_zsopt_scoring",
             "evalsuite_sum_template_0to1_zsnoopt"]
    decode = DecodeConfig(max_decode_length=8, batch_size=4)
    suite = EvalSuite({n: "validation" for n in names}, LENGTHS, decode)  # all 9 examples
    ours = suite(params, config)
    theirs = evaluator.evaluate(params, config, names, split="validation", feature_lengths=LENGTHS, decode=decode)
    for name in names:
        assert ours[name]["metrics"] == pytest.approx(theirs[name], abs=1e-9), name
        assert ours[name]["num_examples"] == 9
        for metric, values in ours[name]["per_example"].items():
            assert len(values) == 9 and np.mean(values) == pytest.approx(ours[name]["metrics"][metric])
    assert set(ours[names[2]]["per_example"]) == {"rouge1", "rouge2", "rougeL", "rougeLsum"}
    scoring = ours[names[1]]
    assert set(scoring["per_example"]["rank_accuracy"]) <= {0.0, 1.0}
    assert scoring["chance"] == pytest.approx(1 / 5)  # one correct label among five options
    assert ours[names[0]]["chance"] is None


def test_limit_scores_the_first_examples_of_the_same_selection(model):
    config, params = model
    name = "evalsuite_mini_template_0to1_zsopt_scoring"
    suite = EvalSuite({name: "validation"}, LENGTHS, DecodeConfig(batch_size=4), num_examples=6)
    full = suite(params, config)[name]
    part = suite(params, config, limit=3)[name]
    assert full["num_examples"] == 6 and part["num_examples"] == 3
    assert part["per_example"]["rank_accuracy"] == full["per_example"]["rank_accuracy"][:3]
    # Evenly spaced examples of the 9: rows of examples 0, 1, 3, 4, 6, 7; every option of each.
    picked = [int(group[0]["idx"][0]) for group in suite.data[name].examples]
    assert picked == [0, 1, 3, 4, 6, 7]
    assert all(len(group) == 5 for group in suite.data[name].examples)


@pytest.mark.slow
def test_compare_models_reports_a_held_out_comparison(model, tmp_path):
    from flanx.experiments.compare import compare_models

    config, params = model
    other = init_params(config, jax.random.PRNGKey(2))
    tasks = {"evalsuite_mini_template_0to1_zsopt_scoring": "validation"}
    out = compare_models({"base": (params, config), "tuned": {0: (other, config), 1: (params, config)}}, tasks,
                         str(tmp_path), LENGTHS, DecodeConfig(batch_size=4), bootstrap_samples=50)
    res = out["results"]
    assert res["target_task"] is None and res["variants"]["tuned"]["seeds"] == [0, 1]
    name = next(iter(tasks))
    base = res["tasks"]["base"][name]["rank_accuracy"]["mean"]
    tuned = res["tasks"]["tuned"][name]["rank_accuracy"]["mean"]
    assert res["summary"]["tuned"]["forgetting_held_out"]["mean"] == pytest.approx(base - tuned)
    assert (tmp_path / "report.md").is_file() and (tmp_path / "per_task_change.png").is_file()
