"""The study's uncertainty: seed means and spread, the documented bootstrap, Pareto fronts."""
from __future__ import annotations

import math

import numpy as np
import pytest

from flanx.experiments import stats


def test_point_is_mean_and_sample_std_over_seeds():
    mean, std = stats.point(np.array([0.2, 0.4, 0.9]))
    assert mean == pytest.approx(0.5)
    assert std == pytest.approx(math.sqrt(((0.3 ** 2) + (0.1 ** 2) + (0.4 ** 2)) / 2))
    assert math.isnan(stats.point(np.array([0.3]))[1])


def test_bootstrap_follows_its_documented_draws():
    """Redo the draws exactly as the module docstring describes them, with plain loops."""
    rng = np.random.default_rng(5)
    scores = {"t1": rng.random((3, 7)), "t2": (rng.random((3, 4)) > 0.5).astype(float)}
    boot = stats.Bootstrap({"t1": 7, "t2": 4}, samples=50, seed=11)
    draw = np.random.default_rng(11)
    ex = {"t1": draw.integers(0, 7, size=(50, 7)), "t2": draw.integers(0, 4, size=(50, 4))}
    seeds = np.random.default_rng([11, 3]).integers(0, 3, size=(50, 3))
    for task, x in scores.items():
        expected = [np.mean([np.mean([x[s, i] for i in ex[task][b]]) for s in seeds[b]]) for b in range(50)]
        np.testing.assert_allclose(boot.replicates(task, x), expected, rtol=1e-12)
    with pytest.raises(ValueError, match="same examples"):
        boot.replicates("t1", np.zeros((3, 6)))


def test_bootstrap_interval_covers_the_mean_and_shrinks_with_more_examples():
    rng = np.random.default_rng(0)
    small, large = rng.random((3, 20)), rng.random((3, 2000))
    b_small = stats.Bootstrap({"t": 20}, samples=400).replicates("t", small)
    b_large = stats.Bootstrap({"t": 2000}, samples=400).replicates("t", large)
    lo, hi = stats.interval(b_small)
    assert lo < small.mean() < hi
    assert np.subtract(*stats.interval(b_large)[::-1]) < 0.5 * (hi - lo)


def test_pareto_front():
    points = {"base": (0.0, 0.0), "a": (0.3, 0.5), "b": (0.1, 0.4), "c": (0.2, 0.3),  # c: beaten by b
              "d": (0.3, 0.45), "e": (float("nan"), 1.0), "f": (-0.01, -0.02)}
    assert sorted(stats.pareto_front(points)) == ["a", "b", "base", "f"]
    # Equal points do not knock each other out.
    assert sorted(stats.pareto_front({"x": (0.1, 0.2), "y": (0.1, 0.2)})) == ["x", "y"]
