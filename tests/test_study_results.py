"""The committed real-data study report: every number in it recomputed from its evaluation files.

docs/results/<study>/ holds report.md and evals/<variant>/seed<k>.json (per-example scores). This
test reads the files itself (no flanx.experiments.report code), recomputes each cell of the
summary and per-task tables (mean over seeds, std over seeds, the bootstrap interval redone from
the draws documented in flanx.experiments.stats), the best trade-off, the at-chance list, and the
README table, and compares them with what the report says.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
STUDIES = sorted(p.parent for p in (ROOT / "docs" / "results").glob("*/report.md"))
PRIMARY = ("rougeL", "exact_match", "accuracy", "rank_accuracy")
CELL = re.compile(r"^(-?\d+\.\d{4})(?: ± (-?\d+\.\d{4}|n/a))? \[(-?\d+\.\d{4}), (-?\d+\.\d{4})\]$")


def _load(study: Path):
    evals = {}
    for path in sorted((study / "evals").glob("*/seed*.json")):
        body = json.loads(path.read_text())
        evals.setdefault(path.parent.name, {})[body["seed"]] = body
    for variant, seeds in evals.items():
        for seed, body in seeds.items():
            if body.get("same_as"):
                twin = evals[body["same_as"]]
                seeds[seed] = dict(body, tasks=(twin.get(seed) or twin[min(twin)])["tasks"])
    md = (study / "report.md").read_text()
    config = json.loads(md.split("```json\n", 1)[1].split("\n```", 1)[0])
    samples, boot_seed = map(int, re.search(r"(\d+) replicates, seed (\d+)", md).groups())
    return evals, md, config, samples, boot_seed


def _table(md: str, first_header: str) -> list[dict[str, str]]:
    lines = md.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_header} |"))
    names = [c.strip() for c in lines[start].strip("|").split("|")]
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append(dict(zip(names, [c.strip() for c in line.strip("|").split("|")])))
    return rows


class Recomputed:
    """Per-seed means and bootstrap replicates, straight from the documented procedure."""

    def __init__(self, evals, tasks, samples, seed):
        base = evals["base"][min(evals["base"])]["tasks"]
        self.evals, self.tasks = evals, tasks
        self.primary = {t: next(m for m in PRIMARY if m in base[t]["metrics"]) for t in tasks}
        rng = np.random.default_rng(seed)
        self.draws = {t: rng.integers(0, len(base[t]["per_example"][self.primary[t]]),
                                      size=(samples, len(base[t]["per_example"][self.primary[t]]))) for t in tasks}
        self.samples, self.seed = samples, seed

    def scores(self, v, t, m):
        return np.array([self.evals[v][s]["tasks"][t]["per_example"][m] for s in sorted(self.evals[v])], float)

    def replicates(self, v, t, m):
        x = self.scores(v, t, m)
        seeds = np.random.default_rng([self.seed, x.shape[0]]).integers(0, x.shape[0], size=(self.samples, x.shape[0]))
        out = np.empty(self.samples)
        for b in range(self.samples):
            out[b] = np.mean([x[s][self.draws[t][b]].mean() for s in seeds[b]])
        return out


def _check(cell: str, per_seed, replicates):
    match = CELL.match(cell)
    assert match, cell
    mean, std, lo, hi = match.groups()
    assert float(mean) == pytest.approx(np.mean(per_seed), abs=6e-5), cell
    if len(per_seed) > 1:
        assert float(std) == pytest.approx(np.std(per_seed, ddof=1), abs=6e-5), cell
    else:
        assert std is None, cell
    q_lo, q_hi = np.percentile(replicates, [2.5, 97.5])
    assert (float(lo), float(hi)) == (pytest.approx(q_lo, abs=6e-5), pytest.approx(q_hi, abs=6e-5)), cell


@pytest.mark.skipif(not STUDIES, reason="no committed study report under docs/results/")
@pytest.mark.parametrize("study", STUDIES, ids=lambda p: p.name)
def test_committed_report_is_recomputed_from_its_evaluation_files(study):
    evals, md, config, samples, boot_seed = _load(study)
    target = config["target_eval_task"] or config["target_task"]
    held_in, held_out = config["held_in"], config["held_out"]
    tasks = [target, *held_in, *held_out]
    rc = Recomputed(evals, tasks, samples, boot_seed)
    prim = rc.primary
    base_means = {t: rc.scores("base", t, prim[t]).mean() for t in tasks}
    base_reps = {t: rc.replicates("base", t, prim[t]) for t in tasks}

    summary = {row["variant"]: row for row in _table(md, "variant | arm")}
    assert set(summary) == set(evals), "every evaluated variant is in the summary, and only those"
    points = {}
    for v, row in summary.items():
        reps = {t: rc.replicates(v, t, prim[t]) for t in tasks}
        seed_means = {t: rc.scores(v, t, prim[t]).mean(axis=1) for t in tasks}
        _check(row["target"], seed_means[target], reps[target])
        _check(row["target_gain"], seed_means[target] - base_means[target], reps[target] - base_reps[target])
        for group, group_tasks in (("held_in", held_in), ("held_out", held_out)):
            _check(row[f"{group}_mean"], np.mean([seed_means[t] for t in group_tasks], axis=0),
                   np.mean([reps[t] for t in group_tasks], axis=0))
            _check(row[f"forgetting_{group}"], np.mean([base_means[t] - seed_means[t] for t in group_tasks], axis=0),
                   np.mean([base_reps[t] - reps[t] for t in group_tasks], axis=0))
        points[v] = (np.mean([base_means[t] - seed_means[t].mean() for t in held_in]),
                     seed_means[target].mean() - base_means[target])

    for row in _table(md, "task | group"):
        v, t, m = row["variant"], row["task"], row["metric"]
        _check(row["value"], rc.scores(v, t, m).mean(axis=1), rc.replicates(v, t, m))

    front = [v for v, (f, g) in points.items()
             if not any(f2 <= f and g2 >= g and (f2 < f or g2 > g) for w, (f2, g2) in points.items() if w != v)]
    best = max(front, key=lambda v: points[v][1] - points[v][0])
    assert f"**Best trade-off: `{best}`**" in md

    at_chance = md.split("## Where the base model is at chance", 1)[1].split("\n## ", 1)[0]
    for t in tasks:
        chance = evals["base"][min(evals["base"])]["tasks"][t]["chance"]
        lo = np.percentile(base_reps[t], 2.5)
        expected = (chance is not None and lo <= chance + 5e-5) or (chance is None and base_means[t] == 0.0)
        assert (f"`{t}`" in at_chance) == expected, t


@pytest.mark.skipif(not STUDIES, reason="no committed study report under docs/results/")
def test_readme_table_matches_the_committed_report():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## The forgetting study", 1)[1].split("\n## ", 1)[0]
    study = next(s for s in STUDIES if f"docs/results/{s.name}/" in section)
    md = (study / "report.md").read_text()
    summary = {row["variant"]: row for row in _table(md, "variant | arm")}
    rows = _table(section, "variant | target gain")
    assert rows, "the README shows the real-data result"
    for row in rows:
        report_row = summary[row["variant"].strip("`")]
        for key, column in (("target gain", "target_gain"), ("held-in forgetting", "forgetting_held_in"),
                            ("held-out forgetting", "forgetting_held_out")):
            assert row[key] == report_row[column], (row["variant"], key)
