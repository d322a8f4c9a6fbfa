"""The study's plots (PNG, small): Pareto picture, forgetting curves, per-task changes, training loss.

All read the results dict of `flanx.experiments.report.build_results`:

- `pareto.png`: target gain vs held-in (and held-out) forgetting, every
  variant a point with bootstrap 95% error bars, the Pareto front joined, the
  best trade-off starred;
- `forgetting_curves.png`: held-in / held-out mean primary metric every
  `curve_every` fine-tuning steps, one panel per arm, one line per knob
  value (mean over seeds, band = std over seeds);
- `per_task_change.png`: each variant's change from the base on each task;
- `training_loss.png`: fine-tuning loss of each variant (first seed).
"""
from __future__ import annotations

import os

BASE = "base"
DPI = 80


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _colors(arms: list[str]) -> dict[str, str]:
    cycle = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
             "#bcbd22", "#17becf"]
    return {arm: cycle[i % len(cycle)] for i, arm in enumerate(dict.fromkeys(arms))}


def _arm(results: dict, variant: str) -> str:
    return results["variants"][variant].get("arm") or variant


def plot_pareto(results: dict, path: str) -> str | None:
    groups = [g for g in ("held_in", "held_out") if results["pareto"].get(g)]
    if not results.get("target_task") or not groups:
        return None
    plt = _plt()
    summary, variants = results["summary"], list(results["variants"])
    colors = _colors([_arm(results, v) for v in variants])
    fig, axes = plt.subplots(1, len(groups), figsize=(5.2 * len(groups), 4.2), squeeze=False)
    for ax, group in zip(axes[0], groups):
        key = f"forgetting_{group}"
        seen = set()
        for v in variants:
            f, g = summary[v][key], summary[v]["target_gain"]
            arm = _arm(results, v)
            ax.errorbar(f["mean"], g["mean"], xerr=[[f["mean"] - f["ci_low"]], [f["ci_high"] - f["mean"]]],
                        yerr=[[g["mean"] - g["ci_low"]], [g["ci_high"] - g["mean"]]], fmt="o", ms=5, capsize=2,
                        color=colors[arm], label=arm if arm not in seen else None, alpha=0.85)
            seen.add(arm)
            label = v.split("@", 1)[1] if "@" in v else ""
            if label:
                ax.annotate(label, (f["mean"], g["mean"]), fontsize=6, xytext=(3, 3), textcoords="offset points")
        front = sorted(results["pareto"][group], key=lambda v: summary[v][key]["mean"])
        ax.plot([summary[v][key]["mean"] for v in front], [summary[v]["target_gain"]["mean"] for v in front],
                "--", color="black", lw=1, label="Pareto front")
        best = results.get("best_tradeoff")
        if best:
            ax.plot(summary[best][key]["mean"], summary[best]["target_gain"]["mean"], "*", ms=14, mfc="none",
                    mec="black", label=f"best trade-off ({best})")
        ax.axhline(0, color="grey", lw=0.5)
        ax.axvline(0, color="grey", lw=0.5)
        ax.set_xlabel(f"{group.replace('_', '-')} forgetting (base - arm)")
        ax.set_ylabel(f"target gain ({results['primary_metric'][results['target_task']]}, arm - base)")
        ax.set_title(f"Gain vs {group.replace('_', '-')} forgetting")
        ax.legend(fontsize=6, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def plot_curves(results: dict, path: str) -> str | None:
    curves = {v: c for v, c in results["curves"].items() if c and len(c.get("steps", [])) > 1}
    if not curves:
        return None
    plt = _plt()
    arms = list(dict.fromkeys(_arm(results, v) for v in curves))
    groups = [g for g in ("held_in", "held_out") if any(g in c for c in curves.values())]
    fig, axes = plt.subplots(len(groups), len(arms), figsize=(3.4 * len(arms), 2.6 * len(groups)),
                             squeeze=False, sharex=True, sharey="row")
    for j, arm in enumerate(arms):
        for i, group in enumerate(groups):
            ax = axes[i][j]
            for v, c in curves.items():
                if _arm(results, v) != arm or group not in c:
                    continue
                mean, std = c[group]["mean"], c[group]["std"]
                line, = ax.plot(c["steps"], mean, marker=".", label=v)
                ax.fill_between(c["steps"], [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)],
                                color=line.get_color(), alpha=0.15)
            if i == 0:
                ax.set_title(arm, fontsize=9)
            if j == 0:
                ax.set_ylabel(f"{group.replace('_', '-')} mean", fontsize=8)
            if i == len(groups) - 1:
                ax.set_xlabel("fine-tuning step", fontsize=8)
            ax.tick_params(labelsize=7)
            ax.legend(fontsize=6)
    fig.suptitle("Forgetting curves (primary metric, mean over tasks; band: std over seeds)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def plot_per_task_change(results: dict, path: str) -> str | None:
    import numpy as np

    variants = [v for v in results["variants"] if v != BASE]
    tasks = list(results["primary_metric"])
    if not variants or not tasks:
        return None
    plt = _plt()
    prim = results["primary_metric"]
    base = [results["tasks"][BASE][t][prim[t]]["mean"] for t in tasks]
    delta = np.array([[results["tasks"][v][t][prim[t]]["mean"] - b for t, b in zip(tasks, base)] for v in variants])
    lim = max(1e-6, float(np.nanmax(np.abs(delta))))
    fig, ax = plt.subplots(figsize=(max(4.0, 1.0 + 0.55 * len(tasks)), max(3.0, 1.2 + 0.28 * len(variants))))
    im = ax.imshow(delta, cmap="RdBu", vmin=-lim, vmax=lim, aspect="auto")
    ax.set_xticks(range(len(tasks)))
    ax.set_xticklabels([t.split("_template")[0] for t in tasks], rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(len(variants)))
    ax.set_yticklabels(variants, fontsize=7)
    for i in range(len(variants)):
        for j in range(len(tasks)):
            ax.text(j, i, f"{delta[i, j]:+.2f}", ha="center", va="center", fontsize=5)
    fig.colorbar(im, ax=ax, shrink=0.8).ax.tick_params(labelsize=6)
    ax.set_title("Change from base (primary metric; red = lost)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def plot_training_loss(results: dict, path: str) -> str | None:
    losses = {}
    for v, by_seed in results.get("train_loss", {}).items():
        first = by_seed[min(by_seed, key=lambda s: int(s))] if by_seed else []
        if first:
            losses[v] = first
    if not losses:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for v, curve in losses.items():
        ax.plot([c[0] for c in curve], [c[1] for c in curve], label=v, lw=1)
    ax.set_xlabel("step")
    ax.set_ylabel("train loss (task loss)")
    ax.set_yscale("log")
    ax.set_title("Fine-tuning loss (first seed)")
    ax.legend(fontsize=5, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def plot_all(results: dict, out_dir: str) -> dict[str, str]:
    """Write every plot that the results support; returns name -> path."""
    paths = {}
    for name, fn, filename in (("pareto", plot_pareto, "pareto.png"),
                               ("forgetting_curves", plot_curves, "forgetting_curves.png"),
                               ("per_task_change", plot_per_task_change, "per_task_change.png"),
                               ("training_loss", plot_training_loss, "training_loss.png")):
        path = fn(results, os.path.join(out_dir, filename))
        if path:
            paths[name] = path
    return paths
