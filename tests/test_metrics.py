"""Metrics and postprocessors, checked against values worked out by hand."""
from __future__ import annotations

import math

import pytest

from flanx.eval import metrics


def test_rouge_by_hand():
    # "the cat sat" vs "the cat": unigram P = 2/2, R = 2/3 -> F = 0.8; bigram P = 1/1, R = 1/2 -> F = 2/3.
    m = metrics.rouge(["the cat sat"], ["the cat"])
    assert m["rouge1"] == pytest.approx(0.8) and m["rouge2"] == pytest.approx(2 / 3)
    assert m["rougeL"] == pytest.approx(0.8) and m["rougeLsum"] == pytest.approx(0.8)
    assert metrics.rouge(["Same words here."], ["same words here"]) == pytest.approx(
        {"rouge1": 1.0, "rouge2": 1.0, "rougeL": 1.0, "rougeLsum": 1.0})
    # Averaged over examples: 1.0 and 0.0.
    assert metrics.rouge(["a b", "c d"], ["a b", "x y"])["rouge1"] == pytest.approx(0.5)


def test_rouge_stems_and_lsum_splits_sentences():
    assert metrics.rouge(["the dogs were running"], ["the dog was run"])["rouge1"] == pytest.approx(0.75)
    # Swapped sentences: the plain LCS drops, the summary-level LCS (one sentence per line) does not.
    m = metrics.rouge(["Tom ate lunch. Ann went home."], ["Ann went home. Tom ate lunch."])
    assert m["rougeLsum"] == pytest.approx(1.0)
    assert m["rougeL"] == pytest.approx(0.5)  # LCS "ann went home" or "tom ate lunch": 3 of 6 words


def test_accuracy_exact_match_and_rank_classification():
    assert metrics.accuracy(["yes", "no", "no"], ["yes", "no", "yes"]) == {"accuracy": pytest.approx(2 / 3)}
    assert metrics.exact_match(["72", "1000", "5"], ["So the answer is 72.", "It is 1,000", "no idea"]) == \
        {"exact_match": pytest.approx(2 / 3)}
    targets = [(0, 0, False), (0, 1, True), (1, 0, True), (1, 1, False), (1, 2, False)]
    scores = [-3.0, -1.0, -2.0, -0.5, -9.0]  # example 0 picks option 1 (right), example 1 picks option 1 (wrong)
    assert metrics.rank_classification(targets, scores) == {"rank_accuracy": 0.5}
    assert math.isnan(metrics.accuracy([], [])["accuracy"])
    with pytest.raises(ValueError, match="2 targets but 1"):
        metrics.accuracy(["a", "b"], ["a"])


def test_postprocessors():
    assert metrics.strip(b"  yes \n") == "yes"
    assert metrics.normalize("  It Is  NOT possible.  ") == "it is not possible"
    assert metrics.gsm8k_number("... 48+24 = 72 clips.\nSo the answer is 72.") == "72"
    assert metrics.gsm8k_number("The answer is 1,234.50 dollars") == "1234.5"
    assert metrics.gsm8k_number("-3") == "-3" and metrics.gsm8k_number("none") == "none"
    assert metrics.bbh_answer("Let's think. So the answer is (B).") == "(B)"
    assert metrics.bbh_answer("No") == "No"
    assert metrics.rank_target("opt", example={"idx": [3, 2], "is_correct": 1}, is_target=True) == (3, 2, True)
    assert metrics.rank_target("opt", example={"idx": [3, 2], "is_correct": 1}) == "opt"
    assert set(metrics.METRICS) == {"rouge", "accuracy", "exact_match", "rank_classification"}
