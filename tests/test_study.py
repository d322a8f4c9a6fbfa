"""The forgetting study end to end (shortened), its gin configs, and resumption."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import seqio

from flanx import paths
from flanx.experiments import cli as study_cli
from flanx.experiments.arms import ARMS
from flanx.experiments.forgetting import Study
from flanx.experiments.study_config import StudyConfig

EXPERIMENTS = sorted(p for p in (paths.configs_dir() / "experiments").glob("*.gin")
                     if not p.name.startswith("heldout_"))  # HeldoutConfig files: tests/test_heldout.py


@pytest.mark.parametrize("gin_file", EXPERIMENTS, ids=lambda p: p.name)
def test_experiment_configs_build_a_study_config(gin_file):
    cfg = study_cli.load_study_config([str(gin_file)], [])
    assert isinstance(cfg, StudyConfig)
    assert cfg.arms and set(cfg.arms) <= set(ARMS.names())
    assert Study(cfg).variants  # every arm and knob value resolves
    assert cfg.model_config().vocab_size in (384, 32128)
    assert cfg.target_task and cfg.arm_steps > 0
    for name in cfg.eval_tasks():  # every task it names is registered
        assert seqio.get_mixture_or_task(name)


def test_study_config_is_strict_about_macros_and_bindings():
    with pytest.raises(ValueError, match=r"unknown gin macro\(s\): INITIAL_CHECKPOINT_PAT .*"
                                         r"did you mean: INITIAL_CHECKPOINT_PATH\?"):
        study_cli.load_study_config(["experiments/dialogsum_recipe.gin"], ["INITIAL_CHECKPOINT_PAT = 'ckpt'"])
    with pytest.raises(ValueError, match=r"named 'arm_step'; did you mean: arm_steps\b"):
        study_cli.load_study_config([study_cli.DEFAULT_GIN], ["flanx.StudyConfig.arm_step = 3"])


def test_recipe_config_matches_the_published_recipe():
    cfg = study_cli.load_study_config(["experiments/dialogsum_recipe.gin"], [])
    assert (cfg.lora.rank, cfg.lora.alpha, cfg.lora.dropout, cfg.lora.targets) == (32, 32.0, 0.05, ("query", "value"))
    assert cfg.model_config().d_model == 768 and cfg.eval_split == "test" and cfg.eval_examples == 500
    assert cfg.reference["rows"]["full fine-tune"]["rouge1"] == pytest.approx(0.4216)


def test_unknown_study_task_lists_close_matches(tmp_path):
    cfg = study_cli.load_study_config([study_cli.DEFAULT_GIN], [
        f"flanx.StudyConfig.out_dir = '{tmp_path}'",
        "flanx.StudyConfig.held_out = ('synth_chat_refund_template_0to7_zsoptt',)"])
    with pytest.raises(ValueError, match="close matches: synth_chat_refund_template_0to7_zsopt"):
        Study(cfg).suite()


def test_study_refuses_to_resume_a_directory_with_other_settings(tmp_path):
    from flanx.experiments.study_config import STUDY_CONFIG_FILE, check_study_dir

    def load(*extra):
        cfg = study_cli.load_study_config([study_cli.DEFAULT_GIN],
                                          [f"flanx.StudyConfig.out_dir = '{tmp_path}'", *extra])
        return cfg, cfg.model_config()

    check_study_dir(*load())                       # first run records its settings
    assert (tmp_path / STUDY_CONFIG_FILE).is_file()
    check_study_dir(*load("flanx.StudyConfig.description = 'same study, new words'"))
    check_study_dir(*load("flanx.StudyConfig.seeds = (0, 1, 2)", "flanx.StudyConfig.arms = ('single_task',)"))
    with pytest.raises(ValueError, match=r"arm_steps: 150 -> 50.*new directory"):
        check_study_dir(*load("flanx.StudyConfig.arm_steps = 50"))
    with pytest.raises(ValueError, match=r"model: .*'d_ff': 256.*'d_ff': 512"):
        check_study_dir(*load("flanx.T5Config.d_ff = 512"))


def test_second_study_on_an_out_dir_fails_at_start(tmp_path):
    """One study writes out_dir at a time: another (live) holder of its lock is named, nothing is written."""
    import os

    from flanx.experiments.forgetting import Study
    from flanx.lock import DirLock, LockError

    cfg = study_cli.load_study_config([study_cli.DEFAULT_GIN], [f"flanx.StudyConfig.out_dir = '{tmp_path / 'study'}'"])
    other = DirLock(str(tmp_path / "study")).acquire()
    try:
        with pytest.raises(LockError, match=rf"{tmp_path / 'study'} is in use by another run \(host .*, pid "
                                            rf"{os.getpid()}, started"):
            Study(cfg).run()
        assert sorted(os.listdir(tmp_path / "study")) == ["flanx.lock"]
    finally:
        other.release()
def test_seeds_switch():
    assert study_cli.seeds_binding("3") == "flanx.StudyConfig.seeds = (0, 1, 2)"
    assert study_cli.seeds_binding("0,4") == "flanx.StudyConfig.seeds = (0, 4)"
    with pytest.raises(Exception, match="--seeds"):
        study_cli.seeds_binding("x")


SHORT = [
    "flanx.T5Config.d_model = 32", "flanx.T5Config.head_dim = 8", "flanx.T5Config.d_ff = 64",
    "flanx.StudyConfig.base_steps = 8", "flanx.StudyConfig.arm_steps = 4", "flanx.StudyConfig.batch_size = 4",
    "flanx.StudyConfig.eval_examples = 6", "flanx.StudyConfig.eval_batch_size = 6",
    "flanx.StudyConfig.max_decode_length = 8", "flanx.StudyConfig.checkpoint_period = 4",
    "flanx.StudyConfig.task_feature_lengths = {'inputs': 128, 'targets': 32}",
    "flanx.StudyConfig.curve_every = 2", "flanx.StudyConfig.curve_examples = 3", "flanx.StudyConfig.fisher_examples = 4",
    "flanx.StudyConfig.knobs = {'wise_ft': (0.0, 0.5, 1.0), 'lora': (4,), 'replay': (0.5,), 'ewc': (1.0,)}",
    "flanx.StudyConfig.bootstrap_samples = 200",
]
ARMS_RUN = "flanx.StudyConfig.arms = ('single_task', 'replay', 'ewc', 'lora', 'wise_ft')"


def _evals(out):
    return {p.parent.name + "/" + p.stem: json.loads(p.read_text()) for p in sorted((out / "evals").glob("*/seed*.json"))}


def _params(run_dir):
    import jax
    import numpy as np

    from flanx.checkpoints import load_params

    return [np.asarray(x) for x in jax.tree.leaves(load_params(str(run_dir))[0])]


@pytest.mark.slow
def test_short_study_arms_seeds_curves_and_resume(tmp_path):
    out = tmp_path / "study"
    bindings = SHORT + [f"flanx.StudyConfig.out_dir = '{out}'"]
    study_cli.run([study_cli.DEFAULT_GIN], bindings + [ARMS_RUN, "flanx.StudyConfig.seeds = (0,)"])

    results = json.loads((out / "results.json").read_text())
    evals = _evals(out)
    trained = ("single_task", "replay@0.5", "ewc@1", "lora@4")
    assert set(evals) == {f"{v}/seed0" for v in ("base", *trained, "wise_ft@0", "wise_ft@0.5", "wise_ft@1")}
    for name in ("report.md", "pareto.png", "forgetting_curves.png", "per_task_change.png", "training_loss.png"):
        assert (out / name).stat().st_size > 0, name
    target, held_in = results["target_task"], results["held_in"]
    prim = results["primary_metric"]
    base = evals["base/seed0"]["tasks"]
    for variant in trained:
        body = evals[f"{variant}/seed0"]
        steps = [json.loads(l)["step"] for l in (out / "runs" / variant / "seed0" / "metrics.jsonl").read_text().splitlines()
                 if json.loads(l).get("kind") == "train"]
        assert max(steps) == 4, variant
        assert [p["step"] for p in body["curve"]] == [2, 4]  # every curve_every steps, the last from the full evaluation
        assert results["curves"][variant]["steps"] == [0, 2, 4]
        # The report's numbers, recomputed from the evaluation file (one seed).
        per = lambda t: body["tasks"][t]["per_example"][prim[t]]  # noqa: E731
        mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
        row = results["summary"][variant]
        assert row["target_gain"]["mean"] == pytest.approx(mean(per(target)) - mean(base[target]["per_example"][prim[target]]))
        assert row["forgetting_held_in"]["mean"] == pytest.approx(
            mean([mean(base[t]["per_example"][prim[t]]) - mean(per(t)) for t in held_in]))
        for t in results["primary_metric"]:
            assert 0.0 <= body["tasks"][t]["metrics"][prim[t]] <= 1.0
    assert "ewc" in evals["ewc@1/seed0"]["optimizer"] and "no parameter scaling" in evals["lora@4/seed0"]["optimizer"]
    assert evals["wise_ft@1/seed0"]["same_as"] == "single_task" and evals["wise_ft@0/seed0"]["same_as"] == "base"
    assert "tasks" in evals["wise_ft@0.5/seed0"]
    assert results["best_tradeoff"] in results["pareto"]["held_in"]

    # More seeds resume the same directory: only the new runs are made.
    before = {p: (out / "evals" / f"{p}.json").stat().st_mtime_ns for p in evals}
    (out / "evals" / "lora@4" / "seed0.json").unlink()  # a lost evaluation is redone from the finished run
    study_cli.run([study_cli.DEFAULT_GIN], bindings + ["flanx.StudyConfig.arms = ('single_task', 'lora')",
                                                       "flanx.StudyConfig.seeds = (0, 1)"])
    after = _evals(out)
    assert set(after) - set(evals) == {"single_task/seed1", "lora@4/seed1"}
    assert all((out / "evals" / f"{p}.json").stat().st_mtime_ns == t for p, t in before.items() if p != "lora@4/seed0")
    assert after["lora@4/seed0"]["tasks"] == evals["lora@4/seed0"]["tasks"]  # same parameters, same numbers
    results = json.loads((out / "results.json").read_text())
    assert results["variants"]["single_task"]["seeds"] == [0, 1] and "replay@0.5" not in results["variants"]

    # Seeds give different runs, and a seed's run is reproducible from scratch.
    seed0, seed1 = _params(out / "runs" / "single_task" / "seed0"), _params(out / "runs" / "single_task" / "seed1")
    assert any(not (a == b).all() for a, b in zip(seed0, seed1))
    import shutil

    shutil.rmtree(out / "runs" / "single_task" / "seed0")
    (out / "evals" / "single_task" / "seed0.json").unlink()
    study_cli.run([study_cli.DEFAULT_GIN], bindings + ["flanx.StudyConfig.arms = ('single_task',)",
                                                       "flanx.StudyConfig.seeds = (0,)"])
    again = _params(out / "runs" / "single_task" / "seed0")
    assert all((a == b).all() for a, b in zip(seed0, again))
    assert _evals(out)["single_task/seed0"]["tasks"] == evals["single_task/seed0"]["tasks"]


def test_an_interrupted_study_still_records_its_invocation(tmp_path, monkeypatch):
    """A study stopped mid-run (Ctrl-C, SIGTERM) leaves its invocation in invocations.json, marked as
    interrupted, so the report's summed wall and CPU times include it."""
    from flanx.experiments.forgetting import INVOCATIONS_FILE

    out = tmp_path / "study"
    cfg = study_cli.load_study_config([study_cli.DEFAULT_GIN], [f"flanx.StudyConfig.out_dir = '{out}'"])

    def stopped(self):
        raise KeyboardInterrupt

    monkeypatch.setattr(Study, "run_base", stopped)
    with pytest.raises(KeyboardInterrupt):
        Study(cfg, command="flanx study forgetting").run()
    (record,) = json.loads((out / INVOCATIONS_FILE).read_text())
    assert record["ended"] == "interrupted: KeyboardInterrupt" and record["command"] == "flanx study forgetting"
    assert record["wall_time_s"] >= 0 and len(record["load_average_end"]) == 3
    assert not (out / "report.md").exists()
