"""`flanx study forgetting --gin_file=... [--gin.NAME=VALUE ...] [--seeds 0,1,2]`: run or resume a study.

The study is configured by one gin file (`t5x_configs/experiments/*.gin`)
binding `flanx.StudyConfig` (and `flanx.T5Config` / `flanx.LoraConfig` through
the model gin files it includes). The macros `USE_CACHED_TASKS` and
`TASK_CACHE_DIRS`, when set, read the tasks from their offline cache (as for
`flanx train`). Re-running the same command resumes: arms
already evaluated are reused, an interrupted arm resumes from its checkpoint.
`--seeds 0,1,2` (or `--seeds 3`: seeds 0, 1, 2) runs every arm once per seed
and adds the spread over seeds to the report; `--out_dir` sets where it goes.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys

import gin

from flanx import gin_utils

DEFAULT_GIN = "experiments/forgetting_synthetic.gin"


def _register() -> None:
    from flanx.experiments.study_config import StudyConfig

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


def run(gin_files: list[str], gin_bindings: list[str], command: str | None = None) -> dict:
    from flanx.experiments.forgetting import run_study

    cfg = load_study_config(gin_files, gin_bindings)
    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.WARNING)  # seqio's per-batch length notices
    out = run_study(cfg, command)
    results = out["results"]
    print(f"\nstudy {cfg.name}: report {out['files']['report']}")
    keys = ["target_gain", "forgetting_held_in", "forgetting_held_out"]
    print(f"{'variant':<16} " + " ".join(f"{k:>20}" for k in keys))
    for variant, row in results["summary"].items():
        print(f"{variant:<16} " + " ".join(f"{row[k]['mean'] if k in row else float('nan'):>20.4f}" for k in keys))
    if results.get("best_tradeoff"):
        print(f"best trade-off (gain minus held-in forgetting, Pareto-optimal): {results['best_tradeoff']}")
    return out


def seeds_binding(text: str) -> str:
    """`--seeds 3` -> seeds (0, 1, 2); `--seeds 0,4` -> (0, 4); as a gin binding."""
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--seeds takes a count (3) or a list (0,1,2), got {text!r}") from None
    if not values or (len(values) == 1 and "," not in text and values[0] < 1):
        raise argparse.ArgumentTypeError(f"--seeds takes a positive count or a list, got {text!r}")
    seeds = tuple(range(values[0])) if len(values) == 1 and "," not in text else tuple(values)
    return f"flanx.StudyConfig.seeds = {seeds!r}"


def main(argv: list[str]) -> int:
    files, bindings, rest = gin_utils.split_gin_args(argv)
    parser = argparse.ArgumentParser(prog="flanx study", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("study", choices=["forgetting"], help="which study to run")
    parser.add_argument("--out_dir", help="shortcut for --gin.flanx.StudyConfig.out_dir")
    parser.add_argument("--seeds", type=seeds_binding, metavar="N|S1,S2,...",
                        help="run every arm for N seeds (0..N-1) or for the listed seeds")
    args = parser.parse_args(rest)
    if args.out_dir:
        bindings.append(f"flanx.StudyConfig.out_dir = {args.out_dir!r}")
    if args.seeds:
        bindings.append(args.seeds)
    from flanx.experiments.forgetting import StudyDirMismatch
    from flanx.train import preemption
    try:
        run(files or [DEFAULT_GIN], bindings, command=" ".join(["flanx", "study", *argv]))
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
