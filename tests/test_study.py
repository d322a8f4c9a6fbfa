"""The forgetting study end to end (shortened), its gin configs, and resumption."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from flanx import paths
from flanx.experiments import cli as study_cli
from flanx.experiments.forgetting import StudyConfig

EXPERIMENTS = sorted((paths.configs_dir() / "experiments").glob("*.gin"))


@pytest.mark.parametrize("gin_file", EXPERIMENTS, ids=lambda p: p.name)
def test_experiment_configs_build_a_study_config(gin_file):
    cfg = study_cli.load_study_config([str(gin_file)], [])
    assert isinstance(cfg, StudyConfig)
    assert cfg.arms and set(cfg.arms) <= {"single_task", "lora", "multi_task"}
    assert cfg.model_config().vocab_size in (384, 32128)
    assert cfg.target_task and cfg.arm_steps > 0
    from flanx.experiments.forgetting import Study  # noqa: PLC0415
    target, held_in, held_out = Study(cfg).eval_tasks()  # raises unless every task it names is registered
    assert target == (cfg.target_eval_task or cfg.target_task) and len(held_in) == len(cfg.held_in)


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
    from flanx.experiments.forgetting import Study

    cfg = study_cli.load_study_config([study_cli.DEFAULT_GIN], [
        f"flanx.StudyConfig.out_dir = '{tmp_path}'",
        "flanx.StudyConfig.held_out = ('synth_chat_refund_template_0to7_zsoptt',)"])
    with pytest.raises(ValueError, match="close matches: synth_chat_refund_template_0to7_zsopt"):
        Study(cfg).eval_tasks()


def test_study_refuses_to_resume_a_directory_with_other_settings(tmp_path):
    from flanx.experiments.forgetting import STUDY_CONFIG_FILE, check_study_dir

    def load(*extra):
        cfg = study_cli.load_study_config([study_cli.DEFAULT_GIN],
                                          [f"flanx.StudyConfig.out_dir = '{tmp_path}'", *extra])
        return cfg, cfg.model_config()

    check_study_dir(*load())                       # first run records its settings
    assert (tmp_path / STUDY_CONFIG_FILE).is_file()
    check_study_dir(*load("flanx.StudyConfig.description = 'same study, new words'"))
    with pytest.raises(ValueError, match=r"arm_steps: 200 -> 50.*new directory"):
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


SHORT = [
    "flanx.T5Config.d_model = 32", "flanx.T5Config.head_dim = 8", "flanx.T5Config.d_ff = 64",
    "flanx.StudyConfig.base_steps = 8", "flanx.StudyConfig.arm_steps = 4", "flanx.StudyConfig.batch_size = 4",
    "flanx.StudyConfig.eval_examples = 6", "flanx.StudyConfig.eval_batch_size = 6",
    "flanx.StudyConfig.max_decode_length = 8", "flanx.StudyConfig.checkpoint_period = 4",
    "flanx.StudyConfig.task_feature_lengths = {'inputs': 128, 'targets': 32}",
]


@pytest.mark.slow
def test_short_study_report_matches_its_evaluations(tmp_path):
    out = tmp_path / "study"
    bindings = SHORT + [f"flanx.StudyConfig.out_dir = '{out}'"]
    study_cli.run([study_cli.DEFAULT_GIN], bindings)

    results = json.loads((out / "results.json").read_text())
    evals = {arm: json.loads((out / "evals" / f"{arm}.json").read_text())["metrics"]
             for arm in ("base", "single_task", "lora", "multi_task")}
    for name in ("report.md", "per_task_metrics.png", "gain_vs_forgetting.png", "training_curves.png"):
        assert (out / name).stat().st_size > 0, name
    # Every arm fine-tuned the configured number of steps from the same base.
    for arm in ("single_task", "lora", "multi_task"):
        steps = [json.loads(l)["step"] for l in (out / "arms" / arm / "metrics.jsonl").read_text().splitlines()
                 if json.loads(l).get("kind") == "train"]
        assert max(steps) == 4, arm

    # Recompute the summary independently from the evaluation files.
    target, held_in, held_out = results["target_task"], results["held_in"], results["held_out"]
    prim = results["primary_metric"]
    assert prim[target] == "rougeL" and all(prim[t] == "accuracy" for t in held_in)
    # held out: one decoded task, one rank-classified (`_scoring`) task
    assert sorted(prim[t] for t in held_out) == ["accuracy", "rank_accuracy"]
    for arm, metrics in evals.items():
        row = results["summary"][arm]
        assert row["target/rouge1"] == pytest.approx(metrics[target]["rouge1"])
        forget_in = sum(evals["base"][t]["accuracy"] - metrics[t]["accuracy"] for t in held_in) / len(held_in)
        forget_out = sum(evals["base"][t][prim[t]] - metrics[t][prim[t]] for t in held_out) / len(held_out)
        assert row["forgetting_held_in"] == pytest.approx(forget_in)
        assert row["forgetting_held_out"] == pytest.approx(forget_out)
        assert row["target_gain"] == pytest.approx(metrics[target]["rougeL"] - evals["base"][target]["rougeL"])
        for t in [target, *held_in, *held_out]:
            assert 0.0 <= metrics[t][prim[t]] <= 1.0 and not math.isnan(metrics[t][prim[t]])
    md = (out / "report.md").read_text()
    assert f"| single_task | {results['summary']['single_task']['target/rouge1']:.4f} |" in md
    assert results["meta"]["arm_steps"] == 4 and results["meta"]["commit"]

    # Resume: a finished study re-runs nothing; a lost evaluation is redone for that arm only.
    before = {arm: (out / "evals" / f"{arm}.json").stat().st_mtime_ns for arm in evals}
    (out / "evals" / "lora.json").unlink()
    study_cli.run([study_cli.DEFAULT_GIN], bindings)
    after = {arm: (out / "evals" / f"{arm}.json").stat().st_mtime_ns for arm in evals}
    assert after["lora"] != before["lora"]
    assert all(after[a] == before[a] for a in ("base", "single_task", "multi_task"))
    again = json.loads((out / "evals" / "lora.json").read_text())["metrics"]
    assert again == evals["lora"]  # resumed from its finished checkpoint: same parameters, same numbers
