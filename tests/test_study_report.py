"""The study report: every cell recomputed from the evaluation outputs it was built from."""
from __future__ import annotations

import json
import math
import re

import pytest

from flanx.experiments import report


def _results():
    arms = {
        "base": {"a": 0.20, "h1": 0.90, "h2": 0.70, "o1": 0.40},
        "single_task": {"a": 0.50, "h1": 0.60, "h2": 0.50, "o1": 0.30},
        "lora": {"a": 0.45, "h1": 0.85, "h2": 0.65, "o1": 0.41},
    }
    def metrics(vals):
        return {"a": {"rouge1": vals["a"] + 0.1, "rougeL": vals["a"]},
                "h1": {"accuracy": vals["h1"]}, "h2": {"exact_match": vals["h2"]}, "o1": {"accuracy": vals["o1"]}}
    return {
        "target_task": "a", "held_in": ["h1", "h2"], "held_out": ["o1"],
        "primary_metric": {"a": "rougeL", "h1": "accuracy", "h2": "exact_match", "o1": "accuracy"},
        "target_metrics": ["rouge1", "rougeL"],
        "arms": {arm: {"metrics": metrics(v), "curve": [[1, 3.0], [2, 2.0]], "steps": 2, "wall_time_s": 1.5}
                 for arm, v in arms.items()},
        "meta": {"seed": 0},
    }


def test_summary_recomputed_independently():
    res = _results()
    s = report.summarize(res)
    assert s["single_task"]["target/rougeL"] == pytest.approx(0.50)
    assert s["single_task"]["target/rouge1"] == pytest.approx(0.60)
    assert s["single_task"]["target_gain"] == pytest.approx(0.30)
    assert s["single_task"]["held_in_mean"] == pytest.approx((0.60 + 0.50) / 2)
    assert s["single_task"]["forgetting_held_in"] == pytest.approx(((0.9 - 0.6) + (0.7 - 0.5)) / 2)
    assert s["single_task"]["forgetting_held_out"] == pytest.approx(0.10)
    assert s["lora"]["forgetting_held_out"] == pytest.approx(-0.01)
    assert s["base"]["forgetting_held_in"] == 0.0 and s["base"]["target_gain"] == 0.0


def test_missing_metric_is_nan_not_zero():
    res = _results()
    del res["arms"]["lora"]["metrics"]["h2"]
    s = report.summarize(res)
    assert s["lora"]["held_in_mean"] == pytest.approx(0.85)
    assert math.isnan(report.primary(res, "lora", "h2"))


def test_write_report_files_and_table_match(tmp_path):
    res = _results()
    files = report.write_report(res, str(tmp_path))
    for key in ("results", "report", "per_task", "gain_vs_forgetting", "curves"):
        assert (tmp_path / files[key].split("/")[-1]).stat().st_size > 0, key
    md = (tmp_path / "report.md").read_text()
    row = next(l for l in md.splitlines() if l.startswith("| single_task |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    header = next(l for l in md.splitlines() if l.startswith("| arm |"))
    names = [c.strip() for c in header.strip("|").split("|")]
    got = dict(zip(names, cells))
    assert float(got["forgetting_held_in"]) == pytest.approx(0.25)
    assert float(got["target_gain"]) == pytest.approx(0.30)
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["summary"]["lora"]["target_gain"] == pytest.approx(0.25)
    assert data["per_task"]["h1"]["single_task"] == pytest.approx(0.60)
    assert re.search(r"!\[per_task\]\(per_task_metrics.png\)", md)
