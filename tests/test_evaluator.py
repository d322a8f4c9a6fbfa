"""Evaluation writes its predictions next to its metrics (JSONL per task) and reports progress over examples."""
from __future__ import annotations

import json
import logging

import jax
import numpy as np
import pytest

from flanx.data import pipeline, register_all
from flanx.eval import evaluator
from flanx.models import get_config, init_params
from flanx.predict import DecodeConfig, pad_tokens

TASK = "synth_chat_intent_template_0to7_zsopt"
SCORING = TASK + "_scoring"
LENGTHS = {"inputs": 256, "targets": 16}


def _oracle_decode(examples):
    """decode_tokens that returns the right answer for every other example and "refund" otherwise."""
    answers = {tuple(ex["inputs"]): list(ex["targets"]) for ex in examples}

    def decode(params, config, enc, decode, length, rng_index=0):
        rows = []
        for row in np.asarray(enc):
            ids = tuple(int(t) for t in row if t)
            target = answers[ids]
            rows.append(target if hash(ids) % 2 else [b + 3 for b in b"refund"] + [1])
        return pad_tokens(rows, length), None
    return decode


@pytest.mark.slow
def test_eval_writes_predictions_with_per_example_scores(tmp_path, monkeypatch, caplog):
    register_all()
    examples = pipeline.get_eval_dataset(TASK, "validation", LENGTHS, 40)
    monkeypatch.setattr(evaluator, "decode_tokens", _oracle_decode(examples))
    config = get_config("tiny")
    params = init_params(config, jax.random.PRNGKey(0))
    with caplog.at_level(logging.INFO, logger="flanx"):
        results = evaluator.evaluate(params, config, [TASK, SCORING], feature_lengths=LENGTHS, step=7,
                                     decode=DecodeConfig(batch_size=16), num_examples=40,
                                     predictions_dir=str(tmp_path))
    rows = [json.loads(x) for x in (tmp_path / f"{TASK}-step7.jsonl").read_text().splitlines()]
    assert len(rows) == 40 and all(set(r) == {"inputs", "targets", "prediction", "score"} for r in rows)
    assert [r["inputs"] for r in rows] == [ex["inputs_pretokenized"] for ex in examples]
    assert [r["targets"] for r in rows] == [ex["targets_pretokenized"] for ex in examples]
    right = [r["prediction"] == r["targets"] for r in rows]
    assert 5 < sum(right) < 35  # the oracle answers about half
    assert [r["score"] for r in rows] == [{"accuracy": float(x)} for x in right]
    assert results[TASK]["accuracy"] == pytest.approx(np.mean(right))

    scored = [json.loads(x) for x in (tmp_path / f"{SCORING}-step7.jsonl").read_text().splitlines()]
    options = 5  # delivery, refund, password, billing, cancel: one row per option, 40 rows = 8 examples
    assert len(scored) == 40 and all(set(r) == {"inputs", "targets", "score", "is_correct"} for r in scored)
    assert all(r["score"] < 0 for r in scored) and sum(r["is_correct"] for r in scored) == 8
    assert [r["targets"] for r in scored[:options]] == ["delivery", "refund", "password", "billing", "cancel"]
    # rank accuracy recomputed from the per-option log-likelihoods in the file
    picks = [max(scored[i:i + options], key=lambda r: r["score"])["is_correct"] for i in range(0, len(scored), options)]
    assert results[SCORING]["rank_accuracy"] == pytest.approx(np.mean(picks))

    lines = [r.getMessage() for r in caplog.records]
    assert "[eval] examples 16/40 (40.0%)" in " ".join(lines) and any(x.startswith("[eval] examples 40/40") for x in lines)
    assert any(f"predictions written to {tmp_path / (TASK + '-step7.jsonl')}" in x for x in lines)


def test_per_example_rouge_matches_rouge_score():
    from rouge_score import rouge_scorer

    register_all()
    import seqio
    task = seqio.get_mixture_or_task("synth_chat_summary_template_0_zero_shot")
    target, prediction = "Sofia got a password reset for order 40.", "Sofia got a reset link, order 40."
    got = evaluator.example_metrics(task, target, prediction)
    want = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True).score(target, prediction)
    for key in ("rouge1", "rouge2", "rougeL"):
        assert got[key] == pytest.approx(want[key].fmeasure)
