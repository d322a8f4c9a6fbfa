"""Forgetting-study reports: the numbers table, `results.json`, `report.md`, PNG plots.

Input is the study's results dict (see `flanx.experiments.forgetting`):

    {"target_task": T, "held_in": [...], "held_out": [...],
     "primary_metric": {task: metric_name}, "target_metrics": [...],
     "arms": {arm: {"metrics": {task: {metric: value}}, "curve": [[step, loss], ...],
                    "steps": n, "wall_time_s": s}},
     "meta": {...configs, seeds, commit...}}

Everything in the report is computed here from those evaluation outputs, so a
test can recompute each cell independently. Forgetting on a task is
`base metric - arm metric` (positive = the arm lost ability); target gain is
`arm metric - base metric` on the target task's primary metric.
"""
from __future__ import annotations

import json
import math
import os
from typing import Any

BASE_ARM = "base"


def _mean(values: list[float]) -> float:
    values = [v for v in values if v is not None and not math.isnan(v)]
    return sum(values) / len(values) if values else float("nan")


def primary(results: dict, arm: str, task: str) -> float:
    """The arm's primary metric on `task` (NaN when it was not evaluated)."""
    metric = results["primary_metric"][task]
    return float(results["arms"][arm]["metrics"].get(task, {}).get(metric, float("nan")))


def summarize(results: dict) -> dict[str, dict[str, Any]]:
    """Per-arm summary rows: target metrics, mean held-in/out, forgetting, gain."""
    target = results["target_task"]
    rows = {}
    for arm, body in results["arms"].items():
        tmetrics = body["metrics"].get(target, {})
        row = {f"target/{m}": float(tmetrics.get(m, float("nan"))) for m in results["target_metrics"]}
        held_in = [primary(results, arm, t) for t in results["held_in"]]
        held_out = [primary(results, arm, t) for t in results["held_out"]]
        row["held_in_mean"] = _mean(held_in)
        row["held_out_mean"] = _mean(held_out)
        if BASE_ARM in results["arms"]:
            base_in = [primary(results, BASE_ARM, t) for t in results["held_in"]]
            base_out = [primary(results, BASE_ARM, t) for t in results["held_out"]]
            row["forgetting_held_in"] = _mean([b - a for b, a in zip(base_in, held_in)])
            row["forgetting_held_out"] = _mean([b - a for b, a in zip(base_out, held_out)])
            row["target_gain"] = primary(results, arm, target) - primary(results, BASE_ARM, target)
        rows[arm] = row
    return rows


def per_task_table(results: dict) -> dict[str, dict[str, float]]:
    """task -> arm -> primary metric, over target, held-in and held-out tasks."""
    tasks = [results["target_task"], *results["held_in"], *results["held_out"]]
    return {t: {arm: primary(results, arm, t) for arm in results["arms"]} for t in tasks}


def _fmt(v: float) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4f}"


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


def render_markdown(results: dict, summary: dict, plots: dict[str, str]) -> str:
    target = results["target_task"]
    cols = [f"target/{m}" for m in results["target_metrics"]]
    cols += ["target_gain", "held_in_mean", "held_out_mean", "forgetting_held_in", "forgetting_held_out"]
    cols = [c for c in cols if any(c in r for r in summary.values())]
    lines = [f"# Forgetting study: {results.get('name', target)}", ""]
    meta = results.get("meta", {})
    if meta.get("description"):
        lines += [meta["description"], ""]
    lines += [f"Target task: `{target}`. Held-in: {len(results['held_in'])} tasks; "
              f"held-out: {len(results['held_out'])} tasks. Forgetting = base metric - arm metric "
              f"(primary metric per task); positive means the arm lost ability.", ""]
    lines += ["## Summary", ""]
    lines.append(_md_table(["arm", *cols], [[arm, *(_fmt(r.get(c)) for c in cols)] for arm, r in summary.items()]))
    lines += ["", "## Per task (primary metric)", ""]
    table = per_task_table(results)
    arms = list(results["arms"])
    group = {target: "target", **{t: "held-in" for t in results["held_in"]},
             **{t: "held-out" for t in results["held_out"]}}
    lines.append(_md_table(["task", "group", "metric", *arms],
                           [[t, group[t], results["primary_metric"][t], *(_fmt(v[a]) for a in arms)]
                            for t, v in table.items()]))
    refs = results.get("reference")
    if refs:
        lines += ["", "## Reference numbers", "", refs.get("note", ""), ""]
        ref_metrics = refs["metrics"]
        ours = {arm: results["arms"][arm]["metrics"].get(target, {}) for arm in results["arms"]}
        rows = [[f"reference: {name}", *(_fmt(vals.get(m)) for m in ref_metrics)] for name, vals in refs["rows"].items()]
        rows += [[f"flanx: {arm}", *(_fmt(ours[arm].get(m)) for m in ref_metrics)] for arm in ours]
        lines.append(_md_table(["run", *ref_metrics], rows))
    if plots:
        lines += ["", "## Plots", ""]
        lines += [f"![{name}]({os.path.basename(path)})" for name, path in plots.items()]
    lines += ["", "## Runs", ""]
    run_rows = [[arm, str(b.get("steps", 0)), f"{b.get('wall_time_s', 0.0):.1f}",
                 _fmt(b["curve"][-1][1]) if b.get("curve") else "n/a"] for arm, b in results["arms"].items()]
    lines.append(_md_table(["arm", "fine-tune steps", "wall time (s)", "final train loss"], run_rows))
    lines += ["", "## Configuration", "", "```json", json.dumps(meta, indent=2, sort_keys=True, default=str), "```", ""]
    return "\n".join(lines)


def plot_all(results: dict, summary: dict, out_dir: str) -> dict[str, str]:
    """Write the PNG plots; returns name -> path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = {}
    arms = list(results["arms"])
    table = per_task_table(results)
    tasks = list(table)
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(tasks)), 4))
    width = 0.8 / max(1, len(arms))
    for i, arm in enumerate(arms):
        xs = [j + i * width for j in range(len(tasks))]
        ax.bar(xs, [table[t][arm] for t in tasks], width, label=arm)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(tasks))])
    ax.set_xticklabels([t.replace("_template", "\n_template") for t in tasks], rotation=30, ha="right", fontsize=7)
    ax.set_ylabel("primary metric")
    ax.set_title("Per-task metric by arm")
    ax.legend(fontsize=8)
    fig.tight_layout()
    paths["per_task"] = os.path.join(out_dir, "per_task_metrics.png")
    fig.savefig(paths["per_task"], dpi=110)
    plt.close(fig)

    if BASE_ARM in results["arms"]:
        fig, ax = plt.subplots(figsize=(5.5, 4))
        colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
        for i, (arm, row) in enumerate(summary.items()):
            for key, marker, group in (("forgetting_held_in", "o", "held-in"), ("forgetting_held_out", "^", "held-out")):
                ax.scatter(row[key], row["target_gain"], marker=marker, s=60, color=colors[i % len(colors)],
                           label=f"{arm} ({group})")
                ax.annotate(arm, (row[key], row["target_gain"]), fontsize=7, xytext=(4, 4), textcoords="offset points")
        ax.axhline(0, color="grey", lw=0.5)
        ax.axvline(0, color="grey", lw=0.5)
        ax.set_xlabel("forgetting (base - arm, mean primary metric)")
        ax.set_ylabel("target gain (arm - base)")
        ax.set_title("Target gain vs forgetting")
        ax.legend(fontsize=6)
        fig.tight_layout()
        paths["gain_vs_forgetting"] = os.path.join(out_dir, "gain_vs_forgetting.png")
        fig.savefig(paths["gain_vs_forgetting"], dpi=110)
        plt.close(fig)

    curves = {arm: b["curve"] for arm, b in results["arms"].items() if b.get("curve")}
    curves.update({f"pretrain:{k}": v for k, v in results.get("base_curves", {}).items()})
    if curves:
        fig, ax = plt.subplots(figsize=(5.5, 4))
        for arm, curve in curves.items():
            ax.plot([c[0] for c in curve], [c[1] for c in curve], label=arm)
        ax.set_xlabel("step")
        ax.set_ylabel("train loss")
        ax.set_yscale("log")
        ax.set_title("Training curves")
        ax.legend(fontsize=8)
        fig.tight_layout()
        paths["curves"] = os.path.join(out_dir, "training_curves.png")
        fig.savefig(paths["curves"], dpi=110)
        plt.close(fig)
    return paths


def write_report(results: dict, out_dir: str) -> dict[str, str]:
    """Write results.json, report.md and plots into out_dir; returns name -> path."""
    os.makedirs(out_dir, exist_ok=True)
    summary = summarize(results)
    plots = plot_all(results, summary, out_dir)
    payload = {**results, "summary": summary, "per_task": per_task_table(results)}
    files = {"results": os.path.join(out_dir, "results.json"), "report": os.path.join(out_dir, "report.md")}
    with open(files["results"], "w") as f:
        json.dump(payload, f, indent=2, sort_keys=True, default=str)
    with open(files["report"], "w") as f:
        f.write(render_markdown(results, summary, plots))
    return {**files, **plots}
