"""The edit_distance metric (T5's word-level edit distance), checked against distances counted by hand."""
from __future__ import annotations

import math

import pytest

from flanx.eval import edit_metrics, metrics


def test_word_edit_distance_by_hand():
    # Lower-cased, split at every non-word character: "hello, world." -> [hello, "", world, ""].
    assert edit_metrics.word_edit_distance("Hello, world.", "hello world") == 2   # two empty words missing
    assert edit_metrics.word_edit_distance("The Cat", "the cat") == 0            # case is ignored, as in T5
    assert edit_metrics.word_edit_distance("The Cat", "the cat", lower=False) == 2
    assert edit_metrics.word_edit_distance("the cat sat", "thecat sat") == 2     # substitute + delete
    assert edit_metrics.word_edit_distance("a b c", "a x c") == 1
    assert edit_metrics.word_edit_distance("", "one two") == 2                   # [""] -> [one, two]


def test_edit_distance_reports_the_distribution_over_examples():
    m = metrics.METRICS["edit_distance"](["Hello, world.", "The Cat", "the cat sat"],
                                         ["hello world", "the cat", "thecat sat"])
    assert m == pytest.approx({"mean_edit": 4 / 3, "median_edit": 2.0, "min_edit": 0.0, "max_edit": 2.0,
                               "sum_edit": 4.0})
    assert all(math.isnan(v) for v in metrics.METRICS["edit_distance"]([], []).values())
    with pytest.raises(ValueError, match="one reference per example"):
        metrics.METRICS["edit_distance"]([["a", "b"]], ["a"])
    assert getattr(metrics.METRICS["edit_distance"], "single_reference", False)
