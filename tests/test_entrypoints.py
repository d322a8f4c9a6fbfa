"""`python -m flanx.train` configuration: the operative config is the truth, and config is strict."""
from __future__ import annotations

import json
import os

import gin
import pytest
from helpers import run_python

from flanx import entrypoints, gin_utils

TASK = "synth_chat_intent_template_0to7_zsopt"  # byte vocabulary, built in: no data, no SentencePiece
FINETUNE = ["--gin_file=models/tiny.gin", "--gin_file=runs/finetune.gin", "--gin.MODEL_DIR='/tmp/never'",
            f"--gin.MIXTURE_OR_TASK_NAME='{TASK}'", "--gin.INITIAL_CHECKPOINT_PATH='/tmp/none'",
            "--gin.TRAIN_STEPS=10"]


def _train_run(argv):
    """Parse like `python -m flanx.train` and evaluate `flanx.train`, without training."""
    files, bindings, _ = gin_utils.split_gin_args(argv)
    gin_utils.reset()
    gin_utils.parse_gin(files, bindings, finalize=False)
    gin_utils.prepare_macros(read=entrypoints.DIRECT_MACROS["train"])
    return gin_utils.evaluate("flanx.train")


pytestmark = pytest.mark.usefixtures("clean_gin")


def test_finetune_dropout_is_in_the_config_and_the_operative_record():
    """tiny's preset has dropout 0.0; finetune.gin's DROPOUT_RATE = 0.1 reaches the model through a gin
    binding, so the model config and the operative config both say 0.1."""
    run = _train_run(FINETUNE)
    assert run.model.dropout_rate == 0.1 and run.model.d_model == 64
    assert (run.config.train_steps, run.config.batch_size, run.config.optimizer.learning_rate) == (10, 128, 0.001)
    assert run.data.task_feature_lengths == {"inputs": 512, "targets": 128}
    operative = gin.operative_config_str()
    assert "DROPOUT_RATE = 0.1" in operative and "T5Config.dropout_rate = %DROPOUT_RATE" in operative
    assert "get_config.name = 'tiny'" in operative
    # Optional macros nobody set take the dataclass defaults and are recorded with their values.
    for line in ("CHECKPOINT_PERIOD = 1000", "LOG_EVERY = 10", "MESH_DATA = -1", "RANDOM_SEED = 0", "PACK = True"):
        assert line in operative, line


def test_train_entry_point_holds_no_default_numbers():
    """Defaults live in the dataclasses: `python -m flanx.train`'s code (train, _start) states no numbers
    of its own (no `CHECKPOINT_PERIOD` 1000, no `LOG_EVERY` 10 beside the dataclasses')."""
    import ast
    import inspect
    import textwrap

    numbers = []
    for obj in (entrypoints.train, entrypoints._start):
        tree = ast.parse(textwrap.dedent(inspect.getsource(obj)))
        numbers += [node.value for node in ast.walk(tree) if isinstance(node, ast.Constant)
                    and isinstance(node.value, (int, float)) and not isinstance(node.value, bool)
                    and abs(node.value) > 1]
    assert numbers == []


@pytest.mark.parametrize("extra, message", [
    (["--gin.TRAIN_STEPZ=10"], r"unknown gin macro\(s\): TRAIN_STEPZ \(from --gin.TRAIN_STEPZ=10\); "
                               r"did you mean: TRAIN_STEPS\?"),
    (["--gin.flanx.TrainConfig.train_stepz=10"], r"named 'train_stepz'; did you mean: train_steps\?"),
    (["--gin.flanx.TrainConfg.train_steps=10"], r"No configurable matching 'flanx.TrainConfg'; "
                                                r"did you mean: flanx.TrainConfig\b"),
    (["--gin.BATCH_SIZE=2.7"], r"TrainConfig.batch_size \(BATCH_SIZE\) must be a positive integer, got 2.7"),
    (["--gin.TRAIN_STEPS='sixty'"], r"TrainConfig.train_steps \(TRAIN_STEPS\) must be a positive integer, "
                                    r"got 'sixty'"),
    (["--gin.TRAIN_STEPS=-3"], r"\(TRAIN_STEPS\) must be a positive integer, got -3"),
    (["--gin.TASK_FEATURE_LENGTHS={'inputs': 0, 'targets': 16}"],
     r"task_feature_lengths\['inputs'\] \(TASK_FEATURE_LENGTHS\) must be a positive integer, got 0"),
    (["--gin.LEARNING_RATE='fast'"], r"learning_rate \(LEARNING_RATE\) must be a number, got 'fast'"),
    (["--gin.DROPOUT_RATE=1.5"], r"dropout_rate \(DROPOUT_RATE\) must be a number in \[0, 1\)"),
    (["--gin.MESH_MODEL=0"], r"MeshConfig.model \(MESH_MODEL\) must be >= 1, or -1"),
    (["--gin.MODEL_DIR=/data/runs/a"], r"Unable to parse value.*quotes.*--gin.MODEL_DIR=\"'/data/runs/a'\""),
    (["--gin.MIXTURE_OR_TASK_NAME=my_task"], r"=my_task: not a Python literal\. gin reads values as Python literals, "
                                             r"so a string needs quotes inside the shell's: "
                                             r"--gin.MIXTURE_OR_TASK_NAME=\"'my_task'\"$"),
    # `--gin.TASK_FEATURE_LENGTHS={'inputs': 64}` typed without the shell's quotes reaches gin unquoted.
    (["--gin.TASK_FEATURE_LENGTHS={inputs: 64, targets: 16}"],
     r"The shell removed the quotes inside the value: quote the whole value, "
     r"--gin.TASK_FEATURE_LENGTHS=\"\{'inputs': 64, 'targets': 16\}\"$"),
])
def test_bad_config_is_refused_naming_the_macro(extra, message):
    with pytest.raises(ValueError, match=message):
        _train_run(FINETUNE + extra)


def test_unknown_macro_in_a_user_gin_file_is_refused(tmp_path):
    mine = tmp_path / "mine.gin"
    mine.write_text("include 'runs/finetune.gin'\nBATCH_SIZ = 8\n")
    with pytest.raises(ValueError, match=r"unknown gin macro\(s\): BATCH_SIZ; did you mean: BATCH_SIZE\?"):
        _train_run(["--gin_file=models/tiny.gin", f"--gin_file={mine}", *FINETUNE[2:]])


def _cli(*args):
    return run_python("-m", "flanx.train", *args, timeout=400)


def test_zero_train_steps_fails_instead_of_doing_nothing(tmp_path):
    with pytest.raises(ValueError, match=r"TrainConfig.train_steps \(TRAIN_STEPS\) must be a positive integer, "
                                         r"got 0"):
        entrypoints.train(["--gin_file=models/tiny.gin", "--gin_file=runs/pretrain.gin",
                           f"--gin.MODEL_DIR='{tmp_path / 'm'}'", f"--gin.MIXTURE_OR_TASK_NAME='{TASK}'",
                           "--gin.TRAIN_STEPS=0"])
    assert not (tmp_path / "m").exists()


def _losses(model_dir):
    rows = [json.loads(line) for line in open(os.path.join(model_dir, "metrics.jsonl"))]
    return [(r["step"], r["loss"]) for r in rows if r["kind"] == "train"]


@pytest.mark.slow
def test_operative_config_alone_reruns_the_same_losses(tmp_path):
    """Train a few steps with non-default settings, then feed MODEL_DIR/operative_config.gin back alone
    (plus a new MODEL_DIR): the losses are identical, and the record names every macro's value."""
    first, second = tmp_path / "first", tmp_path / "second"
    proc = _cli("--gin_file=models/tiny.gin", "--gin_file=runs/pretrain.gin", f"--gin.MODEL_DIR='{first}'",
                f"--gin.MIXTURE_OR_TASK_NAME='{TASK}'", "--gin.TASK_FEATURE_LENGTHS={'inputs': 96, 'targets': 16}",
                "--gin.TRAIN_STEPS=4", "--gin.BATCH_SIZE=4", "--gin.LOG_EVERY=1", "--gin.DROPOUT_RATE=0.1",
                "--gin.LEARNING_RATE=0.003", "--gin.RANDOM_SEED=7", "--gin.flanx.T5Config.d_model=32")
    assert proc.returncode == 0, proc.stderr[-3000:]
    operative = (first / "operative_config.gin").read_text()
    for line in (f"MODEL_DIR = '{first}'", "TRAIN_STEPS = 4", "BATCH_SIZE = 4", "LEARNING_RATE = 0.003",
                 "DROPOUT_RATE = 0.1", "RANDOM_SEED = 7", f"MIXTURE_OR_TASK_NAME = '{TASK}'",
                 "TASK_FEATURE_LENGTHS = {'inputs': 96, 'targets': 16}", "T5Config.d_model = 32",
                 "OptimizerConfig.schedule = 'rsqrt'", "OptimizerConfig.warmup_steps = 10000"):
        assert line in operative, line
    gin_utils.reset()
    gin_utils.parse_gin([str(first / "operative_config.gin")], finalize=False)
    defined = [scope for (scope, selector) in gin.config._CONFIG if selector == "gin.macro"]  # noqa: SLF001
    assert "%gin.REQUIRED" not in operative and len(defined) >= 20  # every macro, with its value

    proc = _cli(f"--gin_file={first / 'operative_config.gin'}", f"--gin.MODEL_DIR='{second}'")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [s for s, _ in _losses(first)] == [1, 2, 3, 4]
    assert _losses(second) == _losses(first)
    assert json.loads((second / "train_config.json").read_text()) == {
        **json.loads((first / "train_config.json").read_text()), "model_dir": str(second)}
