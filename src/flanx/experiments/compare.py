"""Compare models on a set of tasks with the study's evaluation, result format, report and plots.

    from flanx.experiments.compare import compare_models

    out = compare_models({"base": (t5_params, t5_config), "flan": (flan_params, flan_config)},
                         tasks=dict(flanx.data.flan2021.eval_tasks("nli")), out_dir="runs/nli_heldout",
                         feature_lengths={"inputs": 512, "targets": 64})
    out["results"]["summary"]["flan"]["forgetting_held_out"]   # base - flan: negative = flan is better

Every model is scored on the same examples (`EvalSuite`); the model named
`base` is the reference (forgetting = base - model, per task and as the mean
over the tasks). Models evaluated in an earlier call into the same `out_dir`
are reused. Several seeds of one model (e.g. instruction-tuning runs) go in
as `{"flan": {0: (params, config), 1: (params, config)}}`. This is what a
held-out-cluster experiment (base vs instruction-tuned, zero-shot on a held-out
FLAN cluster) builds on.
"""
from __future__ import annotations

import os
from typing import Any, Mapping

from flanx.experiments import report
from flanx.experiments.evaluation import EvalSuite, record, write_record
from flanx.predict import DecodeConfig


def compare_models(models: Mapping[str, Any], tasks: Mapping[str, str], out_dir: str,
                   feature_lengths: Mapping[str, int], decode: DecodeConfig | None = None,
                   num_examples: int | None = None, name: str = "", description: str = "",
                   bootstrap_samples: int = 1000) -> dict:
    """Evaluate each model (variant name -> (params, model_config), or seed -> that) on `tasks` (task -> split)."""
    if report.BASE not in models:
        raise ValueError(f"compare_models: name the reference model {report.BASE!r} (got {sorted(models)})")
    evals_dir = os.path.join(out_dir, "evals")
    suite = None
    for variant, entry in models.items():
        by_seed = entry if isinstance(entry, Mapping) else {0: entry}
        for seed, (params, config) in by_seed.items():
            if os.path.exists(os.path.join(evals_dir, variant, f"seed{seed}.json")):
                continue
            suite = suite or EvalSuite(tasks, feature_lengths, decode or DecodeConfig(), num_examples)
            write_record(evals_dir, record(variant, seed, suite(params, config), arm=variant, knob=None, value=None,
                                           optimizer=None, steps=0))
    evals = {v: s for v, s in report.read_evals(evals_dir).items() if v in models}
    results = report.build_results(evals, None, [], list(tasks), name=name, meta={"description": description},
                                   samples=bootstrap_samples)
    return {"results": results, "files": report.write_report(results, out_dir)}
