"""`flanx study forgetting --gin_file=... [--gin.NAME=VALUE ...]`: run or resume a study.

The study is configured by one gin file (`t5x_configs/experiments/*.gin`)
binding `flanx.StudyConfig` (and `flanx.T5Config` / `flanx.LoraConfig` through
the model gin files it includes). The macros `USE_CACHED_TASKS` and
`TASK_CACHE_DIRS`, when set, read the tasks from their offline cache (as for
`flanx train`). Re-running the same command resumes: arms
already evaluated are reused, an interrupted arm resumes from its checkpoint.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys

import gin

from flanx import gin_utils

DEFAULT_GIN = "experiments/forgetting_synthetic.gin"


def _register() -> None:
    from flanx.experiments.forgetting import StudyConfig

    gin.external_configurable(StudyConfig, name="StudyConfig", module="flanx")


gin_utils.add_registration(_register)


def load_study_config(gin_files: list[str], gin_bindings: list[str]):
    """Parse gin and build the StudyConfig it describes (macros strict, as for training)."""
    gin_utils.reset()
    gin_utils.parse_gin(gin_files, gin_bindings, finalize=False)
    gin_utils.prepare_macros(read=("USE_CACHED_TASKS", "TASK_CACHE_DIRS"))
    cfg = gin_utils.evaluate("flanx.StudyConfig")
    use_cached, cache_dirs = gin_utils.resolved_macro("USE_CACHED_TASKS", None), \
        gin_utils.resolved_macro("TASK_CACHE_DIRS", None)
    if use_cached is not None:
        cfg = dataclasses.replace(cfg, use_cached_tasks=bool(use_cached))
    if cache_dirs:
        cfg = dataclasses.replace(cfg, task_cache_dirs=tuple([cache_dirs] if isinstance(cache_dirs, str)
                                                             else cache_dirs))
    return cfg


def run(gin_files: list[str], gin_bindings: list[str]) -> dict:
    from flanx.experiments.forgetting import run_study
    from flanx.experiments.report import summarize

    cfg = load_study_config(gin_files, gin_bindings)
    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.WARNING)  # seqio's per-batch length notices
    out = run_study(cfg)
    summary = summarize(out["results"])
    print(f"\nstudy {cfg.name}: report {out['files']['report']}")
    keys = ["target_gain", "held_in_mean", "held_out_mean", "forgetting_held_in", "forgetting_held_out"]
    print(f"{'arm':<12} " + " ".join(f"{k:>20}" for k in keys))
    for arm, row in summary.items():
        print(f"{arm:<12} " + " ".join(f"{row.get(k, float('nan')):>20.4f}" for k in keys))
    return out


def main(argv: list[str]) -> int:
    files, bindings, rest = gin_utils.split_gin_args(argv)
    parser = argparse.ArgumentParser(prog="flanx study", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("study", choices=["forgetting"], help="which study to run")
    parser.add_argument("--out_dir", help="shortcut for --gin.flanx.StudyConfig.out_dir")
    args = parser.parse_args(rest)
    if args.out_dir:
        bindings.append(f"flanx.StudyConfig.out_dir = {args.out_dir!r}")
    from flanx.experiments.forgetting import StudyDirMismatch
    from flanx.train import preemption
    try:
        run(files or [DEFAULT_GIN], bindings)
    except StudyDirMismatch as e:
        print(f"flanx study: error: {e}", file=sys.stderr)
        return 2
    except preemption.Preempted as e:
        print(f"flanx study: {e}; the study resumes from there", file=sys.stderr)
        return preemption.EXIT_CODE
    return 0


if __name__ == "__main__":
    from flanx.errors import run
    sys.exit(run(main, sys.argv[1:], prog="flanx study"))
