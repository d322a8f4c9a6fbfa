"""Study results from evaluation files: every number with its spread, `results.json`, `report.md`.

Input: `evals[variant][seed]`, each one evaluation file's content (written by
`flanx.experiments.forgetting`; see `read_evals`):

    {"variant": "replay@0.3", "arm": "replay", "knob": "ratio", "value": 0.3, "seed": 0,
     "optimizer": "adafactor, lr 0.001", "steps": 200,
     "tasks": {task: {"metrics": {metric: value}, "per_example": {metric: [...]},
                      "chance": float | None, "split": str, "num_examples": n}},
     "curve": [{"step": s, "values": {task: primary metric on the curve examples}}],
     "train_loss": [[step, loss]], "train_time_s": s, "eval_time_s": s}

The variant `base` is the model before fine-tuning. A task's primary metric
(ROUGE-L, exact match, accuracy, rank accuracy: `primary_metric`) judges it.
Forgetting on a task is `base - arm` (positive: the arm lost ability), target
gain is `arm - base` on the target's primary metric; group numbers are means
over the group's tasks. Every number gets a mean over seeds, a std over seeds
and a bootstrap 95% interval over examples and seeds (`flanx.experiments.stats`).
A test recomputes each cell of the report from the evaluation files.

The same functions serve any comparison of a base with other variants on
groups of tasks (`target` may be None: no gain, no Pareto picture).
"""
from __future__ import annotations

import glob
import json
import math
import os
from typing import Any

import numpy as np

from flanx.experiments import stats

BASE = "base"
PRIMARY_METRICS = ("rougeL", "exact_match", "accuracy", "rank_accuracy")
GROUP_KEYS = ("target", "target_gain", "held_in_mean", "forgetting_held_in", "held_out_mean", "forgetting_held_out")


def primary_metric(metrics: dict) -> str:
    """The metric a task is judged by: ROUGE-L, exact match, accuracy or rank accuracy."""
    for name in PRIMARY_METRICS:
        if name in metrics:
            return name
    return sorted(metrics)[0] if metrics else "accuracy"


def read_evals(evals_dir: str) -> dict[str, dict[int, dict]]:
    """`evals_dir/<variant>/seed<k>.json` -> {variant: {seed: content}}; `same_as` files resolved."""
    raw: dict[str, dict[int, dict]] = {}
    for path in sorted(glob.glob(os.path.join(evals_dir, "*", "seed*.json"))):
        with open(path) as f:
            body = json.load(f)
        raw.setdefault(os.path.basename(os.path.dirname(path)), {})[int(body["seed"])] = body
    for variant, seeds in raw.items():
        for seed, body in seeds.items():
            if body.get("same_as"):
                source = raw.get(body["same_as"], {})
                twin = source.get(seed) or (source[min(source)] if body["same_as"] == BASE and source else None)
                if twin is None:
                    raise ValueError(f"{variant} seed {seed}: its twin {body['same_as']!r} has no evaluation")
                seeds[seed] = {**body, "tasks": twin["tasks"]}  # its own identity and timings, the twin's scores
    return raw


def _scores(evals: dict[int, dict], task: str, metric: str) -> np.ndarray:
    """[seeds, examples] per-example scores (one column holding the metric when there are none)."""
    rows = []
    for seed in sorted(evals):
        body = evals[seed]["tasks"][task]
        per = body.get("per_example", {}).get(metric)
        rows.append(per if per else [body["metrics"].get(metric, float("nan"))])
    return np.asarray(rows, np.float64)


def build_results(evals: dict[str, dict[int, dict]], target: str | None, held_in: list[str],
                  held_out: list[str], name: str = "", meta: dict | None = None, reference: dict | None = None,
                  target_metrics: tuple = ("rouge1", "rouge2", "rougeL", "rougeLsum"), samples: int = 1000,
                  seed: int = 0) -> dict[str, Any]:
    """Every number of the report (see the module docstring) from the evaluation files."""
    if BASE not in evals:
        raise ValueError("no evaluation of the base model (variant 'base')")
    tasks = ([target] if target else []) + list(held_in) + list(held_out)
    base_eval = evals[BASE][min(evals[BASE])]["tasks"]
    primary = {t: primary_metric(base_eval[t]["metrics"]) for t in tasks}
    sizes = {t: _scores(evals[BASE], t, primary[t]).shape[1] for t in tasks}
    boot = stats.Bootstrap(sizes, samples, seed)
    variants = [BASE] + [v for v in evals if v != BASE]
    t_metrics = [m for m in target_metrics if target and m in base_eval[target]["metrics"]] if target else []

    per_task, summary, reps, seed_means = {}, {}, {}, {}
    for v in variants:
        per_task[v], reps[v], seed_means[v] = {}, {}, {}
        for t in tasks:
            per_task[v][t] = {}
            for m in dict.fromkeys([primary[t], *(t_metrics if t == target else [])]):
                x = _scores(evals[v], t, m)
                r = boot.replicates(t, x) if x.shape[1] == sizes[t] else np.full(samples, np.nan)
                per_task[v][t][m] = stats.summary(x.mean(axis=1), r)
                if m == primary[t]:
                    reps[v][t], seed_means[v][t] = r, x.mean(axis=1)
    for v in variants:
        row = {}
        base_mean = {t: float(np.mean(seed_means[BASE][t])) for t in tasks}
        if target:
            row["target"] = per_task[v][target][primary[target]]
            row["target_gain"] = stats.summary(seed_means[v][target] - base_mean[target],
                                               reps[v][target] - reps[BASE][target])
        for group, group_tasks in (("held_in", held_in), ("held_out", held_out)):
            if not group_tasks:
                continue
            row[f"{group}_mean"] = stats.summary(stats.mean_over_tasks([seed_means[v][t] for t in group_tasks]),
                                                 stats.mean_over_tasks([reps[v][t] for t in group_tasks]))
            row[f"forgetting_{group}"] = stats.summary(
                stats.mean_over_tasks([base_mean[t] - seed_means[v][t] for t in group_tasks]),
                stats.mean_over_tasks([reps[BASE][t] - reps[v][t] for t in group_tasks]))
        summary[v] = row

    pareto, best = {}, None
    if target:
        for group in ("held_in", "held_out"):
            key = f"forgetting_{group}"
            if all(key in summary[v] for v in variants):
                pareto[group] = stats.pareto_front({v: (summary[v][key]["mean"], summary[v]["target_gain"]["mean"])
                                                    for v in variants})
        if pareto.get("held_in"):
            best = max(pareto["held_in"], key=lambda v: summary[v]["target_gain"]["mean"]
                       - summary[v]["forgetting_held_in"]["mean"])

    info, runs, curves = {}, {}, {}
    base_start = next((p["values"] for p in evals[BASE][min(evals[BASE])].get("curve", []) if p["step"] == 0), None)
    for v in variants:
        first = evals[v][min(evals[v])]
        info[v] = {k: first.get(k) for k in ("arm", "knob", "value", "optimizer", "steps")}
        info[v]["seeds"] = sorted(evals[v])
        runs[v] = {s: {k: b.get(k) for k in ("steps", "train_time_s", "eval_time_s", "same_as")}
                   | {"final_loss": b["train_loss"][-1][1] if b.get("train_loss") else None}
                   for s, b in sorted(evals[v].items())}
        curves[v] = _curves(evals[v], held_in, held_out, base_start)
    return {"name": name, "target_task": target, "held_in": list(held_in), "held_out": list(held_out),
            "primary_metric": primary, "target_metrics": t_metrics,
            "chance": {t: base_eval[t].get("chance") for t in tasks},
            "num_examples": sizes, "variants": info, "tasks": per_task, "summary": summary,
            "pareto": pareto, "best_tradeoff": best, "curves": curves, "runs": runs,
            "reference": reference, "meta": meta or {}, "bootstrap": {"samples": samples, "seed": seed},
            "train_loss": {v: {s: b.get("train_loss", []) for s, b in evals[v].items()} for v in variants}}


def _curves(evals: dict[int, dict], held_in, held_out, start: dict | None) -> dict[str, Any]:
    """Mean (over seeds) and std of each group's mean primary metric at every curve step all seeds share.

    Curves start at step 0 with the base model's scores on the same examples (`start`)."""
    per_seed = [{p["step"]: p["values"] for p in body.get("curve", [])} for body in evals.values()]
    if not per_seed or not all(per_seed):
        return {}
    if start is not None:
        per_seed = [{0: start, **c} for c in per_seed]
    steps = sorted(set.intersection(*(set(c) for c in per_seed)))
    out: dict[str, Any] = {"steps": steps}
    for group, group_tasks in (("held_in", held_in), ("held_out", held_out)):
        if not group_tasks:
            continue
        values = np.array([[np.mean([c[s][t] for t in group_tasks]) for s in steps] for c in per_seed])
        out[group] = {"mean": values.mean(axis=0).tolist(),
                      "std": (values.std(axis=0, ddof=1) if len(values) > 1 else np.zeros(len(steps))).tolist()}
    return out


# ------------------------------------------------------------------------------------ markdown

def fmt(v) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4f}"


def fmt_summary(s: dict) -> str:
    """'mean ± std [lo, hi]' (std left out with one seed)."""
    spread = f" ± {fmt(s['std'])}" if s["seeds"] > 1 else ""
    return f"{fmt(s['mean'])}{spread} [{fmt(s['ci_low'])}, {fmt(s['ci_high'])}]"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]


def _knob(info: dict) -> str:
    if info.get("knob") is None:
        return "-"
    value = info["value"]
    return f"{info['knob']}={value:g}" if isinstance(value, (int, float)) else f"{info['knob']}={value}"


def at_chance(results: dict, variant: str = BASE) -> dict[str, str]:
    """Tasks where a variant's 95% interval reaches chance (rank tasks) or whose score is 0."""
    out = {}
    for t, chance in results["chance"].items():
        s = results["tasks"][variant][t][results["primary_metric"][t]]
        if chance is not None and s["ci_low"] <= chance:
            out[t] = f"{variant} {fmt(s['mean'])} [{fmt(s['ci_low'])}, {fmt(s['ci_high'])}], chance {fmt(chance)}"
        elif chance is None and s["mean"] == 0.0:
            out[t] = f"{variant} scores 0 on every example"
    return out


def render_markdown(results: dict, plots: dict[str, str]) -> str:
    target, summary, variants = results["target_task"], results["summary"], list(results["variants"])
    meta = results.get("meta", {})
    lines = [f"# {meta.get('title') or 'Forgetting study'}: {results.get('name') or target}", ""]
    if meta.get("description"):
        lines += [meta["description"], ""]
    lines += [f"- {note}" for note in meta.get("notes", [])] + ([""] if meta.get("notes") else [])
    b = results["bootstrap"]
    cells = (f"Cells: mean over seeds ± std over seeds [bootstrap 95% interval over examples and seeds, "
             f"{b['samples']} replicates, seed {b['seed']}].")
    if target:
        lines += [f"Target task: `{target}`. Held-in: {len(results['held_in'])} tasks; held-out: "
                  f"{len(results['held_out'])} tasks. Forgetting = base - arm and target gain = arm - base, in "
                  "each task's primary metric (group numbers: mean over the group's tasks); positive forgetting "
                  f"means the arm lost ability. {cells}", ""]
    else:
        lines += [f"Held-out tasks: {len(results['held_out'])}, each scored by its primary metric; "
                  "`held_out_mean` is the mean over them and `forgetting_held_out` = base - variant (negative: "
                  f"the variant scores higher than the base). {cells}", ""]
    if target and results.get("best_tradeoff"):
        best = results["best_tradeoff"]
        s = summary[best]
        lines += [f"**Best trade-off: `{best}`** (largest target gain minus held-in forgetting among the "
                  f"Pareto-optimal variants): target gain {fmt_summary(s['target_gain'])}, held-in forgetting "
                  f"{fmt_summary(s['forgetting_held_in'])}"
                  + (f", held-out forgetting {fmt_summary(s['forgetting_held_out'])}" if "forgetting_held_out" in s
                     else "") + ".", ""]
        for group in ("held_in", "held_out"):
            if results["pareto"].get(group):
                lines.append(f"Pareto front (gain vs {group.replace('_', '-')} forgetting): "
                             + ", ".join(f"`{v}`" for v in results["pareto"][group]) + ".")
        lines.append("")
    lines += ["## Summary", ""]
    keys = [k for k in GROUP_KEYS if any(k in summary[v] for v in variants)]
    lines += _table(["variant", "arm", "knob", *keys],
                    [[v, results["variants"][v]["arm"] or v, _knob(results["variants"][v]),
                      *(fmt_summary(summary[v][k]) if k in summary[v] else "n/a" for k in keys)] for v in variants])
    lines += ["", "## Arms, optimizers and seeds", ""]
    lines += _table(["variant", "optimizer", "fine-tune steps", "seeds"],
                    [[v, i.get("optimizer") or "-", str(i.get("steps") or 0), ", ".join(map(str, i["seeds"]))]
                     for v, i in results["variants"].items()])
    chance = at_chance(results)
    lines += ["", "## Where the base model is at chance", ""]
    lines += [f"- `{t}`: {why}" for t, why in chance.items()] or ["None of the evaluated tasks."]
    if not target:  # a comparison: is any model better than chance at all
        lines += ["", "## Where the other variants are at chance", ""]
        lines += [f"- `{v}` on `{t}`: {why}" for v in variants if v != BASE
                  for t, why in at_chance(results, v).items()] or ["None of the evaluated tasks."]
    lines += ["", "## Per task", "", "Primary metric of each task (and every target metric): mean ± std "
              "[bootstrap 95% interval].", ""]
    group = {**{t: "held-in" for t in results["held_in"]}, **{t: "held-out" for t in results["held_out"]}}
    if target:
        group[target] = "target"
    rows = []
    for t, g in group.items():
        for m in results["tasks"][BASE][t]:
            rows += [[t, g, m, fmt(results["chance"][t]), str(results["num_examples"][t]), v,
                      fmt_summary(results["tasks"][v][t][m])] for v in variants]
    lines += _table(["task", "group", "metric", "chance", "examples", "variant", "value"], rows)
    refs = results.get("reference")
    if refs:
        lines += ["", "## Reference numbers", "", refs.get("note", ""), ""]
        metrics = refs["metrics"]
        ref_rows = [[f"reference: {n}", *(fmt(vals.get(m)) for m in metrics)] for n, vals in refs["rows"].items()]
        ref_rows += [[f"flanx: {v}", *(fmt(results["tasks"][v][target].get(m, {}).get("mean")) for m in metrics)]
                     for v in variants]
        lines += _table(["run", *refs["metrics"]], ref_rows)
    if plots:
        lines += ["", "## Plots", ""] + [f"![{n}]({os.path.basename(p)})" for n, p in plots.items()]
    lines += ["", "## Runs", ""]
    lines += _table(["variant", "seed", "final train loss", "train time (s)", "eval time (s)"],
                    [[v, str(s), fmt(r.get("final_loss")), f"{r.get('train_time_s') or 0:.1f}",
                      f"{r.get('eval_time_s') or 0:.1f}" + (f" (same as {r['same_as']})" if r.get("same_as") else "")]
                     for v in variants for s, r in results["runs"][v].items()])
    lines += ["", "## Provenance", ""]
    for key in ("command", "commit", "wall_time_s", "cpu_time_s", "jax_backend"):
        if key in meta:
            lines.append(f"- {key.replace('_', ' ')}: `{meta[key]}`")
    for i, run in enumerate(meta.get("invocations", []), 1):
        lines.append(f"- invocation {i}: started {run['started']}, commit `{run['commit']}`, wall "
                     f"{run['wall_time_s']:.0f} s, CPU (user+system) {run['cpu_time_s']:.0f} s on {run['cpus']} "
                     f"CPUs, load average (1/5/15 min) {run['load_average_start']} at start, "
                     f"{run['load_average_end']} at the end" + (f" ({run['ended']})" if run.get("ended") else ""))
    if "config" in meta:
        lines += ["", "```json", json.dumps(meta["config"], indent=1, sort_keys=True, default=str), "```"]
    return "\n".join(lines) + "\n"


def write_report(results: dict, out_dir: str) -> dict[str, str]:
    """Write results.json, report.md and the plots into out_dir; returns name -> path."""
    from flanx.experiments import plots as plots_lib

    os.makedirs(out_dir, exist_ok=True)
    plots = plots_lib.plot_all(results, out_dir)
    files = {"results": os.path.join(out_dir, "results.json"), "report": os.path.join(out_dir, "report.md")}
    with open(files["results"], "w") as f:
        json.dump(results, f, indent=1, sort_keys=True, default=str)
    with open(files["report"], "w") as f:
        f.write(render_markdown(results, plots))
    return {**files, **plots}
