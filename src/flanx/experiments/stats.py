"""Uncertainty for the study's numbers: means over seeds, their spread, bootstrap intervals, Pareto fronts.

Scores are per example and per seed: `X[v][t]` is a `[seeds, examples]` array of
variant v's per-example scores on task t (the same examples for every variant).
For every number the report shows (a task's metric, the mean over a group of
tasks, target gain, forgetting):

- mean: the mean over seeds of each seed's mean over examples;
- std: the standard deviation over seeds of those per-seed values (ddof=1;
  NaN with one seed);
- 95% interval: the 2.5th and 97.5th percentiles (numpy's default linear
  interpolation) of `samples` bootstrap replicates that resample examples and
  seeds with replacement.

The bootstrap draws are fixed by `seed` and documented so anyone can redo
them: with `rng = numpy.random.default_rng(seed)`, each task in the given
order draws `rng.integers(0, n_t, size=(samples, n_t))` example indices; the
seeds of a variant with S seeds are `numpy.random.default_rng([seed, S])
.integers(0, S, size=(samples, S))`. Every variant (and the base) uses the same
example draws, so gain and forgetting are paired differences. Replicate b of
a task's score is the mean, over the drawn seeds, of each drawn seed's mean
over the drawn examples.
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np


def point(per_seed: np.ndarray) -> tuple[float, float]:
    """(mean, std over seeds) of per-seed values."""
    per_seed = np.asarray(per_seed, np.float64)
    std = float(np.std(per_seed, ddof=1)) if per_seed.size > 1 else float("nan")
    return float(np.mean(per_seed)), std


def interval(replicates: np.ndarray) -> tuple[float, float]:
    lo, hi = np.percentile(np.asarray(replicates, np.float64), [2.5, 97.5])
    return float(lo), float(hi)


def summary(per_seed: np.ndarray, replicates: np.ndarray) -> dict[str, float]:
    mean, std = point(per_seed)
    lo, hi = interval(replicates)
    return {"mean": mean, "std": std, "ci_low": lo, "ci_high": hi, "seeds": int(np.size(per_seed))}


class Bootstrap:
    """Shared draws over tasks (examples) and seed counts; see the module docstring."""

    def __init__(self, task_sizes: Mapping[str, int], samples: int = 1000, seed: int = 0):
        self.samples, self.seed = int(samples), int(seed)
        rng = np.random.default_rng(self.seed)
        self.examples = {t: rng.integers(0, n, size=(self.samples, n)) for t, n in task_sizes.items()}
        self._seed_draws: dict[int, np.ndarray] = {}

    def seed_draws(self, num_seeds: int) -> np.ndarray:
        if num_seeds not in self._seed_draws:
            rng = np.random.default_rng([self.seed, num_seeds])
            self._seed_draws[num_seeds] = rng.integers(0, num_seeds, size=(self.samples, num_seeds))
        return self._seed_draws[num_seeds]

    def replicates(self, task: str, scores_SN: np.ndarray) -> np.ndarray:
        """[samples] bootstrap replicates of a `[seeds, examples]` score array on `task`."""
        scores_SN = np.asarray(scores_SN, np.float64)
        idx_BN = self.examples[task]
        if scores_SN.shape[1] != idx_BN.shape[1]:
            raise ValueError(f"task {task!r}: {scores_SN.shape[1]} examples, the bootstrap drew from "
                             f"{idx_BN.shape[1]}; every variant must be scored on the same examples")
        per_seed_SB = scores_SN[:, idx_BN].mean(axis=2)
        seeds_BS = self.seed_draws(scores_SN.shape[0])
        return per_seed_SB[seeds_BS, np.arange(self.samples)[:, None]].mean(axis=1)


def pareto_front(points: Mapping[str, tuple[float, float]]) -> list[str]:
    """Names of the points (forgetting, gain) that no other point beats: less or equal forgetting
    and greater or equal gain, one of them strictly. NaN points are never on the front."""
    ok = {k: p for k, p in points.items() if not any(math.isnan(x) for x in p)}
    front = []
    for name, (f, g) in ok.items():
        dominated = any(f2 <= f and g2 >= g and (f2 < f or g2 > g) for other, (f2, g2) in ok.items() if other != name)
        if not dominated:
            front.append(name)
    return front


def mean_over_tasks(arrays: Sequence[np.ndarray]) -> np.ndarray:
    return np.mean(np.stack([np.asarray(a, np.float64) for a in arrays]), axis=0)
