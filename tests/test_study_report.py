"""The study report: every number recomputed from the evaluation files it was built from."""
from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest

from flanx.experiments import report

TARGET, HELD_IN, HELD_OUT = "tgt", ["h1", "h2"], ["o1"]


def _eval(variant, seed, scores, arm=None, knob=None, value=None):
    """An evaluation file body; `scores[task]` are per-example primary scores."""
    tasks = {}
    for t, per in scores.items():
        per = list(per)
        if t == TARGET:
            r1 = [min(1.0, x + 0.1) for x in per]
            tasks[t] = {"metrics": {"rougeL": float(np.mean(per)), "rouge1": float(np.mean(r1))},
                        "per_example": {"rougeL": per, "rouge1": r1}, "chance": None}
        else:
            metric = "rank_accuracy" if t == "o1" else "accuracy"
            tasks[t] = {"metrics": {metric: float(np.mean(per))}, "per_example": {metric: per},
                        "chance": 0.5 if t == "o1" else None}
    return {"variant": variant, "arm": arm, "knob": knob, "value": value, "seed": seed, "optimizer": "adafactor",
            "steps": 2 if arm else 0, "tasks": tasks, "train_loss": [[1, 3.0], [2, 2.0]] if arm else [],
            "curve": [{"step": 1, "values": {t: float(np.mean(p)) for t, p in scores.items()}}] if arm else
            [{"step": 0, "values": {t: float(np.mean(p)) for t, p in scores.items()}}]}


def _evals():
    rng = np.random.default_rng(0)
    n = 12
    base = {TARGET: rng.random(n) * 0.3, "h1": (rng.random(n) < 0.9) * 1.0, "h2": (rng.random(n) < 0.7) * 1.0,
            "o1": (rng.random(n) < 0.6) * 1.0}
    out = {"base": {0: _eval("base", 0, base)}}
    for name, arm, knob, value, gain, loss in (("single_task", "single_task", None, None, 0.4, 0.5),
                                               ("replay@0.3", "replay", "ratio", 0.3, 0.3, 0.1),
                                               ("lora@8", "lora", "rank", 8, 0.1, 0.4)):
        out[name] = {}
        for seed in (0, 1, 2):
            r = np.random.default_rng(seed + 10)
            scores = {TARGET: np.clip(base[TARGET] + gain + 0.05 * r.random(n), 0, 1),
                      **{t: base[t] * (r.random(n) > loss) for t in ("h1", "h2", "o1")}}
            out[name][seed] = _eval(name, seed, scores, arm, knob, value)
    return out


def _independent(evals, v, t, metric):
    """(mean over seeds of per-seed means, std over seeds) by hand."""
    per_seed = [np.mean(evals[v][s]["tasks"][t]["per_example"][metric]) for s in sorted(evals[v])]
    return float(np.mean(per_seed)), (float(np.std(per_seed, ddof=1)) if len(per_seed) > 1 else float("nan"))


def test_numbers_recomputed_independently():
    evals = _evals()
    res = report.build_results(evals, TARGET, HELD_IN, HELD_OUT, samples=200)
    base_mean = {t: np.mean(evals["base"][0]["tasks"][t]["per_example"][res["primary_metric"][t]])
                 for t in [TARGET, *HELD_IN, *HELD_OUT]}
    assert res["primary_metric"] == {TARGET: "rougeL", "h1": "accuracy", "h2": "accuracy", "o1": "rank_accuracy"}
    for v in evals:
        for t in [TARGET, *HELD_IN, *HELD_OUT]:
            m = res["primary_metric"][t]
            mean, std = _independent(evals, v, t, m)
            got = res["tasks"][v][t][m]
            assert got["mean"] == pytest.approx(mean) and got["ci_low"] <= got["mean"] + 1e-12
            assert (math.isnan(std) and math.isnan(got["std"])) or got["std"] == pytest.approx(std)
        row = res["summary"][v]
        seeds = sorted(evals[v])
        seed_mean = lambda s, t: np.mean(evals[v][s]["tasks"][t]["per_example"][res["primary_metric"][t]])  # noqa
        gains = [seed_mean(s, TARGET) - base_mean[TARGET] for s in seeds]
        forget_in = [np.mean([base_mean[t] - seed_mean(s, t) for t in HELD_IN]) for s in seeds]
        forget_out = [np.mean([base_mean[t] - seed_mean(s, t) for t in HELD_OUT]) for s in seeds]
        assert row["target_gain"]["mean"] == pytest.approx(np.mean(gains))
        assert row["forgetting_held_in"]["mean"] == pytest.approx(np.mean(forget_in))
        assert row["forgetting_held_out"]["mean"] == pytest.approx(np.mean(forget_out))
        if len(seeds) > 1:
            assert row["forgetting_held_in"]["std"] == pytest.approx(np.std(forget_in, ddof=1))
        assert row["forgetting_held_in"]["ci_low"] <= row["forgetting_held_in"]["ci_high"]
    assert res["summary"]["base"]["target_gain"]["mean"] == 0.0
    assert res["summary"]["base"]["target_gain"]["ci_low"] == 0.0  # paired draws: base - base is 0 everywhere
    # Target metrics besides the primary one are reported too.
    assert res["tasks"]["single_task"][TARGET]["rouge1"]["mean"] == pytest.approx(
        _independent(evals, "single_task", TARGET, "rouge1")[0])


def test_pareto_front_and_best_tradeoff():
    res = report.build_results(_evals(), TARGET, HELD_IN, HELD_OUT, samples=100)
    s = res["summary"]
    for v in res["pareto"]["held_in"]:  # nothing beats a front point on both axes
        assert not any(s[w]["forgetting_held_in"]["mean"] < s[v]["forgetting_held_in"]["mean"]
                       and s[w]["target_gain"]["mean"] > s[v]["target_gain"]["mean"] for w in s)
    assert "lora@8" not in res["pareto"]["held_in"]  # less gain and more forgetting than replay
    score = {v: s[v]["target_gain"]["mean"] - s[v]["forgetting_held_in"]["mean"] for v in res["pareto"]["held_in"]}
    assert res["best_tradeoff"] == max(score, key=score.get)


def test_evaluation_files_and_twins(tmp_path):
    evals = _evals()
    for v, by_seed in evals.items():
        for seed, body in by_seed.items():
            path = tmp_path / v / f"seed{seed}.json"
            path.parent.mkdir(exist_ok=True)
            path.write_text(json.dumps(body))
    twin = {"variant": "wise_ft@1", "arm": "wise_ft", "knob": "alpha", "value": 1.0, "seed": 1, "same_as": "single_task",
            "optimizer": "none", "steps": 0}
    (tmp_path / "wise_ft@1").mkdir()
    (tmp_path / "wise_ft@1" / "seed1.json").write_text(json.dumps(twin))
    (tmp_path / "wise_ft@0").mkdir()
    (tmp_path / "wise_ft@0" / "seed1.json").write_text(json.dumps({**twin, "variant": "wise_ft@0", "value": 0.0,
                                                                    "same_as": "base"}))
    read = report.read_evals(str(tmp_path))
    assert read["wise_ft@1"][1]["tasks"] == evals["single_task"][1]["tasks"]
    assert read["wise_ft@1"][1]["arm"] == "wise_ft" and "curve" not in read["wise_ft@1"][1]
    assert read["wise_ft@0"][1]["tasks"] == evals["base"][0]["tasks"]  # the base has one evaluation


def test_markdown_cells_and_plots(tmp_path):
    res = report.build_results(_evals(), TARGET, HELD_IN, HELD_OUT, samples=100)
    files = report.write_report(res, str(tmp_path))
    for key in ("results", "report", "pareto", "forgetting_curves", "per_task_change", "training_loss"):
        assert (tmp_path / files[key].split("/")[-1]).stat().st_size > 0, key
    md = (tmp_path / "report.md").read_text()
    header = next(line for line in md.splitlines() if line.startswith("| variant | arm |"))
    names = [c.strip() for c in header.strip("|").split("|")]
    row = next(line for line in md.splitlines() if line.startswith("| replay@0.3 |"))
    cells = dict(zip(names, [c.strip() for c in row.strip("|").split("|")]))
    s = res["summary"]["replay@0.3"]["forgetting_held_in"]
    assert cells["forgetting_held_in"] == f"{s['mean']:.4f} ± {s['std']:.4f} [{s['ci_low']:.4f}, {s['ci_high']:.4f}]"
    assert cells["knob"] == "ratio=0.3"
    assert f"**Best trade-off: `{res['best_tradeoff']}`**" in md
    assert re.search(r"!\[pareto\]\(pareto.png\)", md)
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["summary"]["lora@8"]["target_gain"]["mean"] == pytest.approx(res["summary"]["lora@8"]["target_gain"]["mean"])
    # Curves start at the base's step-0 scores.
    assert res["curves"]["single_task"]["steps"] == [0, 1]


def test_at_chance_lists_rank_tasks_whose_interval_reaches_chance():
    evals = _evals()
    evals["base"][0]["tasks"]["o1"]["per_example"]["rank_accuracy"] = [1.0, 0.0] * 6  # 0.5: chance
    evals["base"][0]["tasks"]["h2"]["per_example"]["accuracy"] = [0.0] * 12
    res = report.build_results(evals, TARGET, HELD_IN, HELD_OUT, samples=100)
    chance = report.at_chance(res)
    assert set(chance) == {"o1", "h2"}
    assert "chance 0.5000" in chance["o1"] and "0 on every example" in chance["h2"]


def test_comparison_without_a_target():
    evals = _evals()
    res = report.build_results(evals, None, [], ["o1", "h1"], samples=50)
    assert "target_gain" not in res["summary"]["single_task"] and not res["pareto"]
    assert res["summary"]["single_task"]["forgetting_held_out"]["mean"] == pytest.approx(
        np.mean([np.mean(evals["base"][0]["tasks"][t]["per_example"][m])
                 - np.mean([np.mean(evals["single_task"][s]["tasks"][t]["per_example"][m]) for s in (0, 1, 2)])
                 for t, m in (("o1", "rank_accuracy"), ("h1", "accuracy"))]))
