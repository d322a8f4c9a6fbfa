"""flanx's error boundary: every command turns a user's mistake into one message naming the input.

The table runs each command in-process (as `flanx ...` would) on a malformed input and checks the exit
status, that no traceback is printed, that the message names the input, and that nothing was left in
the output directory the command was given.
"""
from __future__ import annotations

import json
import os
import pickle
import sys

import numpy as np
import pytest

from flanx import cli, errors

TASK = "synth_chat_intent_template_0to7_zsopt"  # byte vocabulary, built in: no data needed


# ------------------------------------------------------------------ the boundary itself


def test_known_errors_print_one_message_and_exit_1(capsys):
    def main(argv):
        raise ValueError(f"bad value in {argv[0]}; use 3")
    assert errors.run(main, ["file.gin"], prog="flanx x") == 1
    err = capsys.readouterr().err
    assert err.splitlines()[0] == "flanx x: error: bad value in file.gin; use 3"
    assert "--debug" in err and "Traceback" not in err


@pytest.mark.parametrize("how", ["flag", "env"])
def test_debug_shows_the_traceback(monkeypatch, how):
    seen = []

    def main(argv):
        seen.append(argv)
        raise KeyError("x")
    if how == "env":
        monkeypatch.setenv("FLANX_DEBUG", "1")
    with pytest.raises(KeyError):
        errors.run(main, ["a", "--debug"] if how == "flag" else ["a"])
    assert seen == [["a"]]  # --debug never reaches the command


@pytest.mark.parametrize("exc", [TypeError("bug"), IndexError("bug"), AttributeError("bug"), RuntimeError("bug")])
def test_unexpected_errors_keep_their_traceback(exc):
    def main(argv):
        raise exc
    with pytest.raises(type(exc)):
        errors.run(main, [])


def test_messages_of_library_errors():
    class SafetensorError(Exception):
        pass
    assert errors.is_known(SafetensorError("x")) and errors.is_known(FileNotFoundError(2, "No such file", "/a/b"))
    assert errors.describe(KeyError("unknown task 'x'")) == "unknown task 'x'"  # no repr quotes
    assert errors.describe(FileNotFoundError(2, "No such file or directory", "/a/b")) == \
        "FileNotFoundError: [Errno 2] No such file or directory: '/a/b'"
    unpickle = pickle.UnpicklingError("Weights only load failed. Re-running `torch.load` with `weights_only` set "
                                      "to `False` will likely succeed, but it can result in arbitrary code execution.")
    text = errors.describe(unpickle)
    assert "weights_only" not in text and "False" not in text and "safetensors" in text


# ------------------------------------------------------------------ malformed inputs across the CLIs


@pytest.fixture(scope="module")
def bad(tmp_path_factory):
    """Malformed inputs: files a user might hand flanx."""
    d = tmp_path_factory.mktemp("bad")
    files = {"dir": d}
    (d / "syntax.gin").write_text("BATCH_SIZE = (2\n")
    files["syntax_gin"] = d / "syntax.gin"
    for name, content in {"number.jsonl": b'7\n', "latin1.txt": b"fine\ncaf\xff\n",
                          "no_inputs.jsonl": b'{"text": "x"}\n', "null.jsonl": b'{"inputs": null}\n',
                          "broken.jsonl": b'{"inputs": "a"\n', "notes.txt": b"just text\n"}.items():
        (d / name).write_bytes(content)
        files[name] = d / name
    from flanx.checkpoints import hf
    from flanx.models import get_config
    tiny_hf = hf.config_to_hf(get_config("tiny"))

    def hf_dir(name, weights: dict, config=json.dumps(tiny_hf)):
        path = d / name
        path.mkdir()
        (path / "config.json").write_text(config)
        for file, data in weights.items():
            (path / file).write_bytes(data)
        files[name] = path

    hf_dir("hf_garbage", {"model.safetensors": b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!"})
    payload = d / "payload_ran"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {payload}",))
    hf_dir("hf_pickle", {"pytorch_model.bin": pickle.dumps({"shared.weight": Payload()})})
    files["payload"] = payload
    index = {"weight_map": {"shared.weight": "pytorch_model-00001-of-00002.bin"}}
    hf_dir("hf_missing_shard", {"pytorch_model.bin.index.json": json.dumps(index).encode()})
    hf_dir("hf_outside_shard", {"pytorch_model.bin.index.json": json.dumps(
        {"weight_map": {"shared.weight": "../notes.txt"}}).encode()})
    hf_dir("hf_bad_config", {"model.safetensors": b""}, config="{not json")
    # T5X checkpoints whose TensorStore specs point out of the checkpoint directory.
    from flax import serialization
    outside = d / "outside_array"
    import tensorstore as ts
    ts.open({"driver": "zarr", "kvstore": {"driver": "file", "path": str(outside)}}, create=True,
            dtype=ts.float32, shape=[2]).result().write(np.ones(2, np.float32)).result()

    def t5x(name, path):
        ckpt = d / name / "checkpoint_10"
        ckpt.mkdir(parents=True)
        spec = {"driver": "zarr", "kvstore": {"driver": "file", "path": path}}
        tree = {"optimizer": {"target": {"token_embedder": {"embedding": spec}}, "state": {"step": 10}},
                "version": 3}
        (ckpt / "checkpoint").write_bytes(serialization.msgpack_serialize(tree))
        files[name] = ckpt
    t5x("t5x_dotdot", "../../outside_array")
    t5x("t5x_absolute", str(outside))
    good = d / "t5x_truncated"
    good.mkdir()
    (good / "checkpoint").write_bytes(serialization.msgpack_serialize({"target": {"a": np.ones(3)}})[:-5])
    files["t5x_truncated"] = good / "checkpoint"
    return files


def _train(d, *extra, run="pretrain"):
    return ["train", "--gin_file=models/tiny.gin", f"--gin_file=runs/{run}.gin", f"--gin.MODEL_DIR='{d}/out'",
            f"--gin.MIXTURE_OR_TASK_NAME='{TASK}'", "--gin.TRAIN_STEPS=2", *extra]


def _eval(d, *extra):
    return ["eval", "--gin_file=runs/eval.gin", f"--gin.EVAL_OUTPUT_DIR='{d}/out'",
            f"--gin.MIXTURE_OR_TASK_NAME='{TASK}'", *extra]


def _infer(d, prompts):
    return ["infer", "--gin_file=runs/infer.gin", "--gin.CHECKPOINT_PATH='/nonexistent/ckpt'",
            f"--gin.INFER_OUTPUT_DIR='{d}/out'", "--gin.VOCABULARY='byte'", f"--gin.INFER_INPUT_FILE='{prompts}'"]


def _launch(module):
    from launch import common, local, slurm
    launcher = {"local": local, "slurm": slurm}[module]
    return lambda argv: common.main_wrapper(launcher.main, argv)


# (id, argv from the inputs, text the message must hold; a callable argv[0] runs instead of `flanx`)
CASES = [
    ("train_typo_macro", lambda b: _train(b["dir"], "--gin.TRAIN_STEPZ=10"), "TRAIN_STEPZ"),
    ("train_float_batch", lambda b: _train(b["dir"], "--gin.BATCH_SIZE=2.7"),
     "(BATCH_SIZE) must be a positive integer"),
    ("train_word_steps", lambda b: _train(b["dir"], "--gin.TRAIN_STEPS='sixty'"), "(TRAIN_STEPS)"),
    ("train_zero_steps", lambda b: _train(b["dir"], "--gin.TRAIN_STEPS=0"), "(TRAIN_STEPS) must be a positive"),
    ("train_zero_length", lambda b: _train(b["dir"], "--gin.TASK_FEATURE_LENGTHS={'inputs': 0, 'targets': 8}"),
     "(TASK_FEATURE_LENGTHS)"),
    ("train_unknown_task", lambda b: _train(b["dir"], f"--gin.MIXTURE_OR_TASK_NAME='{TASK}x'"), f"{TASK}x"),
    ("train_missing_gin_file", lambda b: _train(b["dir"], "--gin_file=runs/nope.gin"), "nope.gin"),
    ("train_broken_gin_file", lambda b: _train(b["dir"], f"--gin_file={b['syntax_gin']}"), "syntax.gin"),
    ("train_unquoted_string", lambda b: _train(b["dir"], "--gin.MODEL_DIR=/x/y"), "--gin.MODEL_DIR=\"'/x/y'\""),
    ("train_unknown_parameter", lambda b: _train(b["dir"], "--gin.flanx.TrainConfig.train_stepz=3"), "train_stepz"),
    ("train_missing_init_checkpoint",
     lambda b: _train(b["dir"], "--gin.INITIAL_CHECKPOINT_PATH='/nonexistent/ckpt'", "--gin.TRAIN_STEPS=3",
                      run="finetune"), "/nonexistent/ckpt"),
    ("train_missing_required_macro", lambda b: ["train", "--gin_file=models/tiny.gin", "--gin_file=runs/pretrain.gin",
                                                f"--gin.MODEL_DIR='{b['dir']}/out'"], "MIXTURE_OR_TASK_NAME"),
    ("train_unknown_flag", lambda b: _train(b["dir"], "--bogus"), "--bogus"),
    ("eval_missing_checkpoint_macro", lambda b: _eval(b["dir"]), "CHECKPOINT_PATH"),
    ("eval_missing_checkpoint", lambda b: _eval(b["dir"], "--gin.CHECKPOINT_PATH='/nonexistent/ckpt'"),
     "/nonexistent/ckpt"),
    ("eval_text_file_as_checkpoint", lambda b: _eval(b["dir"], f"--gin.CHECKPOINT_PATH='{b['notes.txt']}'"),
     "notes.txt"),
    ("infer_number_line", lambda b: _infer(b["dir"], b["number.jsonl"]), "number.jsonl:1: expected a JSON object"),
    ("infer_non_utf8", lambda b: _infer(b["dir"], b["latin1.txt"]), "latin1.txt:2: byte 0xff at byte offset 8"),
    ("infer_no_inputs_field", lambda b: _infer(b["dir"], b["no_inputs.jsonl"]), "no_inputs.jsonl:1: no \"inputs\""),
    ("infer_null_inputs", lambda b: _infer(b["dir"], b["null.jsonl"]), "null.jsonl:1: \"inputs\" must be a string"),
    ("infer_broken_json", lambda b: _infer(b["dir"], b["broken.jsonl"]), "broken.jsonl:1: not valid JSON"),
    ("infer_missing_prompt_file", lambda b: _infer(b["dir"], b["dir"] / "absent.jsonl"), "absent.jsonl"),
    ("convert_missing_input", lambda b: ["convert", "--to", "hf", "/nonexistent/ckpt", str(b["dir"] / "out")],
     "/nonexistent/ckpt"),
    ("convert_garbage_safetensors", lambda b: ["convert", "--to", "flanx", str(b["hf_garbage"]),
                                               str(b["dir"] / "out")], "hf_garbage/model.safetensors"),
    ("convert_pickle_payload", lambda b: ["convert", "--to", "flanx", str(b["hf_pickle"]), str(b["dir"] / "out")],
     "hf_pickle/pytorch_model.bin: holds pickled Python objects"),
    ("convert_missing_bin_shard", lambda b: ["convert", "--to", "flanx", str(b["hf_missing_shard"]),
                                             str(b["dir"] / "out")], "pytorch_model-00001-of-00002.bin"),
    ("convert_shard_outside", lambda b: ["convert", "--to", "flanx", str(b["hf_outside_shard"]),
                                         str(b["dir"] / "out")], "'../notes.txt', which is not a file inside"),
    ("convert_bad_hf_config", lambda b: ["convert", "--to", "flanx", str(b["hf_bad_config"]), str(b["dir"] / "out")],
     "hf_bad_config/config.json: not valid JSON"),
    ("convert_truncated_msgpack", lambda b: ["convert", "--to", "flanx", "--model", "tiny", str(b["t5x_truncated"]),
                                             str(b["dir"] / "out")], "t5x_truncated/checkpoint"),
    ("convert_t5x_path_dotdot", lambda b: ["convert", "--to", "flanx", "--model", "tiny", str(b["t5x_dotdot"]),
                                           str(b["dir"] / "out")], "'../../outside_array' leads outside"),
    ("convert_t5x_path_absolute", lambda b: ["convert", "--to", "flanx", "--model", "tiny", str(b["t5x_absolute"]),
                                             str(b["dir"] / "out")], "zarr array directory outside_array/"),
    ("convert_t5x_without_model", lambda b: ["convert", "--to", "flanx", str(b["t5x_dotdot"]), str(b["dir"] / "out")],
     "--model NAME"),
    ("convert_bad_config_file", lambda b: ["convert", "--to", "flanx", "--config", str(b["broken.jsonl"]),
                                           str(b["t5x_dotdot"]), str(b["dir"] / "out")], "broken.jsonl"),
    ("convert_bad_format", lambda b: ["convert", "--to", "onnx", "a", "b"], "'onnx'"),
    ("tasks_unknown", lambda b: ["tasks", "show", "synth_chat_intentt"], "synth_chat_intentt"),
    ("tasks_unknown_group", lambda b: ["tasks", "list", "--group", "held_sideways"], "held_sideways"),
    ("mixtures_unknown", lambda b: ["mixtures", "show", "synth_multitaskk"], "synth_multitaskk"),
    ("unknown_command", lambda b: ["trian"], "'trian'"),
    ("study_unknown_parameter", lambda b: ["study", "forgetting", "--gin.flanx.StudyConfig.arm_stepz=3"],
     "arm_stepz"),
    ("study_unknown_macro", lambda b: ["study", "forgetting", "--gin.BASE_STEPZ=3"], "BASE_STEPZ"),
    ("study_missing_gin_file", lambda b: ["study", "forgetting", "--gin_file=experiments/nope.gin"], "nope.gin"),
    ("launch_local_uneven_gpus", lambda b: [_launch("local"), "--num_processes=3", "--platform=gpu", "--gpus=0,1,2,3",
                                            f"--model_dir={b['dir']}/out", "--dry_run"], "cannot be split evenly"),
    ("launch_local_missing_gin_file", lambda b: [_launch("local"), "--num_processes=2", "--gin_file=nope.gin",
                                                 f"--model_dir={b['dir']}/out", "--dry_run"], "nope.gin"),
    ("launch_slurm_bad_preset", lambda b: [_launch("slurm"), "--nodes=1", "--gpus_per_node=8", "--model_dir=/x",
                                           "--gin_file=meshes/h100_2x8_fsdp_tp.gin", "--dry_run"],
     "needs 16 devices but only 8"),
]


@pytest.fixture
def no_launch_env(monkeypatch):
    for k in list(os.environ):
        if k.startswith(("SLURM_", "FLANX_", "TPU_")) or k in ("XLA_FLAGS", "CUDA_VISIBLE_DEVICES"):
            monkeypatch.delenv(k)


@pytest.mark.parametrize("case, make_argv, expected", CASES, ids=[c[0] for c in CASES])
def test_malformed_input_exits_nonzero_with_one_message_naming_it(bad, capsys, no_launch_env, case, make_argv,
                                                                     expected):
    from flanx import gin_utils

    inputs = dict(bad, dir=bad["dir"] / case)  # each case writes (or must not write) its own output dir
    inputs["dir"].mkdir()
    argv = make_argv(inputs)
    main, argv = (argv[0], argv[1:]) if callable(argv[0]) else (cli.main, argv)
    try:
        rc = main(argv)
    except SystemExit as e:  # what Python prints for SystemExit("message") / argparse's exit
        rc = e.code if isinstance(e.code, int) else 1
        if isinstance(e.code, str):
            print(e.code, file=sys.stderr)
    finally:
        gin_utils.reset()
    out = capsys.readouterr()
    assert rc not in (0, None), out.err[-2000:]
    assert "Traceback" not in out.err + out.out, out.err[-3000:]
    assert expected in out.err, out.err[-2000:]
    assert not (inputs["dir"] / "out").exists()  # no stub output directory
    assert not bad["payload"].exists()  # nothing from a crafted file ever runs



@pytest.mark.parametrize("command", ["eval", "infer"])
def test_eval_and_infer_refuse_an_output_dir_in_use(tmp_path, capsys, command):
    from flanx import gin_utils
    from flanx.lock import DirLock

    holder = DirLock(str(tmp_path / "out")).acquire()  # e.g. a training run writing there
    prompts = tmp_path / "p.txt"
    prompts.write_text("hello\n")
    argv = _eval(tmp_path, "--gin.CHECKPOINT_PATH='/nonexistent/ckpt'") if command == "eval" else \
        _infer(tmp_path, prompts)
    try:
        assert cli.main(argv) == 1
    finally:
        gin_utils.reset()
        holder.release()
    err = capsys.readouterr().err
    assert f"{tmp_path / 'out'} is in use by another run (host" in err and f"pid {os.getpid()}" in err
