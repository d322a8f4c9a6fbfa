"""End to end through the command line: fine-tune from a converted checkpoint, resume, eval, infer.

Each phase is a module fixture that runs its command and the test beside it checks what the command did,
so a failure names its phase (a broken resume errors `test_rerun_...` at setup of `resumed`).
"""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
from helpers import last_json_line, run_python

from flanx.train.writers import read_metrics

TASK = "synth_chat_intent_template_0to7_zsopt"
SCORING = TASK + "_scoring"
LENGTHS = "{'inputs': 256, 'targets': 16}"


def _cli(module, *args, ok=True):
    proc = run_python("-m", module, *args, timeout=400)
    if ok:
        assert proc.returncode == 0, proc.stderr[-4000:]
        return last_json_line(proc.stdout)
    return proc


def test_missing_required_macros_fail_at_start_naming_them():
    proc = _cli("flanx.train", "--gin_file=models/tiny.gin", "--gin_file=runs/finetune.gin",
                "--gin.TRAIN_STEPS=10", ok=False)
    assert proc.returncode != 0
    assert "required gin macro(s) not set: MODEL_DIR, MIXTURE_OR_TASK_NAME, INITIAL_CHECKPOINT_PATH" in proc.stderr
    proc = _cli("flanx.train", "--gin_file=runs/pretrain.gin", "--gin.MODEL_DIR='x'",
                "--gin.MIXTURE_OR_TASK_NAME='t'", "--gin.TRAIN_STEPS=1", ok=False)
    assert "MODEL_CONFIG" in proc.stderr and "models/" in proc.stderr


# ----------------------------------------------------------------------------- the phases


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory):
    """Phase 1: a "public" checkpoint at step 100 in T5X's layout, fine-tuned to step 116 by `flanx.train`."""
    import jax

    from flanx.checkpoints.t5x import export_t5x
    from flanx.models import get_config, init_params

    root = tmp_path_factory.mktemp("e2e")
    params = jax.tree.map(np.asarray, init_params(get_config("tiny"), jax.random.PRNGKey(0)))
    export_t5x(params, root / "base", step=100)
    model_dir = root / "model"
    train_args = ["--gin_file=models/tiny.gin", "--gin_file=runs/finetune.gin",
                  f"--gin.MODEL_DIR='{model_dir}'", f"--gin.MIXTURE_OR_TASK_NAME='{TASK}'",
                  f"--gin.TASK_FEATURE_LENGTHS={LENGTHS}", "--gin.BATCH_SIZE=8",
                  f"--gin.INITIAL_CHECKPOINT_PATH='{root / 'base'}'", "--gin.CHECKPOINT_PERIOD=8",
                  "--gin.LOG_EVERY=4", "--gin.DROPOUT_RATE=0.0", "--gin.LEARNING_RATE=0.003"]
    # TRAIN_STEPS is absolute: 100 -> 116 trains 16 steps.
    first = _cli("flanx.train", *train_args, "--gin.TRAIN_STEPS=116")
    return {"root": root, "model_dir": model_dir, "train_args": train_args, "first": first}


@pytest.fixture(scope="module")
def resumed(finetuned):
    """Phase 2: the same command with more steps and in-training evaluation resumes from MODEL_DIR."""
    return _cli("flanx.train", *finetuned["train_args"], "--gin.TRAIN_STEPS=120",
                f"--gin.EVAL_MIXTURES=['{SCORING}', '{TASK}']", "--gin.EVAL_EXAMPLES=8")


@pytest.mark.slow
def test_finetune_from_a_converted_checkpoint(finetuned):
    first, model_dir = finetuned["first"], finetuned["model_dir"]
    assert first["step"] == 116 and first["resumed_from"] is None
    rows = read_metrics(str(model_dir), "train")
    assert [r["step"] for r in rows] == [104, 108, 112, 116]
    assert rows[-1]["loss"] < rows[0]["loss"] - 0.5, [r["loss"] for r in rows]
    assert all(r["learning_rate"] == pytest.approx(0.003) and r["tokens_per_s"] > 0 for r in rows)
    assert sorted(os.listdir(model_dir / "checkpoints")) == ["104", "112", "116"]  # absolute multiples + end
    config_gin = (model_dir / "config.gin").read_text()
    assert "TRAIN_STEPS = 116" in config_gin and f"MIXTURE_OR_TASK_NAME = '{TASK}'" in config_gin


@pytest.mark.slow
def test_rerun_resumes_from_model_dir_and_evaluates(resumed):
    # Re-running with more steps resumes from MODEL_DIR (not the initial checkpoint).
    assert resumed["resumed_from"] == 116 and resumed["step"] == 120
    (step, in_training), = resumed["evals"]
    assert step == 120 and set(in_training) == {SCORING, TASK}
    assert 0.0 <= in_training[SCORING]["rank_accuracy"] <= 1.0


@pytest.mark.slow
def test_standalone_eval_gives_the_in_training_numbers(finetuned, resumed):
    root, model_dir = finetuned["root"], finetuned["model_dir"]
    (_, in_training), = resumed["evals"]
    ev = _cli("flanx.eval", "--gin_file=runs/eval.gin", f"--gin.CHECKPOINT_PATH='{model_dir}'",
              f"--gin.EVAL_OUTPUT_DIR='{root / 'eval'}'", f"--gin.MIXTURE_OR_TASK_NAME=['{SCORING}', '{TASK}']",
              "--gin.EVAL_EXAMPLES=8", f"--gin.TASK_FEATURE_LENGTHS={LENGTHS}")
    assert ev["step"] == 120 and ev["results"] == in_training
    assert read_metrics(str(root / "eval"), "eval")[0][TASK] == in_training[TASK]


@pytest.mark.slow
def test_infer_writes_jsonl_and_reads_your_own_prompts(finetuned, resumed, tmp_path):
    root, model_dir = finetuned["root"], finetuned["model_dir"]
    # Inference: JSONL with inputs / prediction / targets / score.
    out = _cli("flanx.infer", "--gin_file=runs/infer.gin", f"--gin.CHECKPOINT_PATH='{model_dir}'",
               f"--gin.INFER_OUTPUT_DIR='{root / 'infer'}'", f"--gin.MIXTURE_OR_TASK_NAME='{TASK}'",
               "--gin.INFER_EXAMPLES=6", "--gin.WITH_SCORES=True", f"--gin.TASK_FEATURE_LENGTHS={LENGTHS}")
    lines = [json.loads(x) for x in open(out["output"])]
    assert len(lines) == 6 and all(set(r) == {"inputs", "prediction", "targets", "score"} for r in lines)
    assert all(r["score"] < 0 and r["inputs"] for r in lines)
    # Your own prompts: a JSONL file is read and tokenized like the task's inputs (bytes + 3, then EOS).
    from flanx.data import get_vocabulary
    from flanx.infer import read_prompts

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"inputs": r["inputs"]}) + "\n" for r in lines))
    read = read_prompts(str(prompts), get_vocabulary("byte"), 256)
    assert [list(ex["inputs"]) for ex in read] == [[b + 3 for b in r["inputs"].encode()][:255] + [1] for r in lines]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "no inputs field"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:1: no \"inputs\" field"):
        read_prompts(str(bad), get_vocabulary("byte"), 256)
