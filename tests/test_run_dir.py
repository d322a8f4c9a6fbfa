"""MODEL_DIR is owned, checked before it is written, and never loses a checkpoint: `flanx.train.run_dir`.

Concurrent writers, a changed config on resume, damaged newest checkpoints (fallback, in the trainer and
in `load_params`), unwritable and full checkpoint directories, and metrics rows after a resume. Training
runs use a one-layer model and the test run's jax compilation cache (conftest.py), so each takes a few
seconds.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import struct
import subprocess
import threading
import time

import numpy as np
import pytest
from helpers import hold_lock_in_child

from flanx.checkpoints import CheckpointError, load_params
from flanx.lock import LockError
from flanx.models import get_config
from flanx.train import checkpointing, trainer
from flanx.train.checkpointing import CheckpointSaveError
from flanx.train.config import OptimizerConfig, TrainConfig
from flanx.train.run_dir import IncompatibleCheckpoint
from flanx.train.synthetic import SyntheticBatches
from flanx.train.writers import read_metrics

MODEL = get_config("tiny", vocab_size=32, d_model=16, num_heads=2, head_dim=8, d_ff=32, num_encoder_layers=1,
                   num_decoder_layers=1)


def _data(shard):
    return SyntheticBatches(shard, 8, 4, vocab_size=MODEL.vocab_size)


def _train(model_dir, steps, model=MODEL, data=_data, optimizer="adafactor", period=2, **kw):
    cfg = TrainConfig(train_steps=steps, batch_size=2, log_every=1, checkpoint_period=period, model_dir=str(model_dir),
                      optimizer=OptimizerConfig(name=optimizer, learning_rate=0.01), **kw)
    return trainer.train(cfg, model, data)


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
    """A finished 4-step run with checkpoints at steps 2 and 4, and its losses."""
    model_dir = tmp_path_factory.mktemp("base") / "run"
    result = _train(model_dir, 4)
    return model_dir, dict(result.losses)


def _copy(base_run, tmp_path):
    return shutil.copytree(base_run[0], tmp_path / "run")


def _snapshot(directory) -> dict:
    """Every path under `directory` -> its bytes' digest (None for directories)."""
    out = {}
    for root, dirs, files in os.walk(directory):
        for d in dirs:
            out[os.path.relpath(os.path.join(root, d), directory)] = None
        for f in files:
            with open(os.path.join(root, f), "rb") as fh:
                out[os.path.relpath(os.path.join(root, f), directory)] = hashlib.sha256(fh.read()).hexdigest()
    return out


@pytest.fixture
def flanx_warnings():
    records = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append
    logger = logging.getLogger("flanx")
    logger.addHandler(handler)
    yield records
    logger.removeHandler(handler)


# ------------------------------------------------------------------ 1. two runs on one MODEL_DIR

def test_second_run_on_a_model_dir_fails_at_start_and_changes_nothing(base_run, tmp_path):
    model_dir = _copy(base_run, tmp_path)
    other = hold_lock_in_child(model_dir)
    try:
        before = _snapshot(model_dir)
        with pytest.raises(LockError, match=rf"{model_dir} is in use by another run \(host .*, pid {other.pid}, "
                                            r"started \d{4}-\d\d-\d\d \d\d:\d\d:\d\d"):
            _train(model_dir, 6)
        assert _snapshot(model_dir) == before
    finally:
        other.kill()
        other.wait()


def test_a_run_holds_its_model_dir_while_training(tmp_path):
    seen = []

    def data(shard):
        it = _data(shard)
        real_next = it.__next__

        class Watching:
            def __iter__(self):
                return self

            def __next__(self):
                seen.append(json.loads((tmp_path / "run" / "flanx.lock").read_text())["pid"])
                return real_next()
        return Watching()
    _train(tmp_path / "run", 2, data=data)
    assert seen and set(seen) == {os.getpid()}
    assert not (tmp_path / "run" / "flanx.lock").exists()


def test_failed_start_of_a_new_run_leaves_no_directory(tmp_path):
    cfg = TrainConfig(train_steps=4, batch_size=2, model_dir=str(tmp_path / "new" / "run"))
    with pytest.raises(CheckpointError, match=r"does not exist"):
        trainer.train(cfg, MODEL, _data, init_checkpoint=str(tmp_path / "no_such_checkpoint"))
    assert not (tmp_path / "new").exists()


# ------------------------------------------------------------------ 2. a changed config on resume


@pytest.mark.parametrize("change, optimizer, message", [
    ({"d_model": 8}, "adafactor",
     r"T5Config.d_model: 16 in the checkpoint \(.*flanx.json\), 8 in this run; parameter "
     r"decoder/decoder_norm/scale: checkpoint step 4 has shape \(16,\), this run expects \(8,\)"),
    ({"vocab_size": 40}, "adafactor",
     r"T5Config.vocab_size \(the vocabulary size\): 32 in the checkpoint .* 40 in this run.*parameter "
     r"decoder/logits_dense/kernel: checkpoint step 4 has shape \(16, 32\), this run expects \(16, 40\)"),
    ({}, "adamw", r"OptimizerConfig.name: 'adafactor' in the checkpoint's run, 'adamw' in this run"),
])
def test_config_change_on_resume_is_refused_before_anything_is_written(base_run, tmp_path, change, optimizer,
                                                                        message):
    model_dir = _copy(base_run, tmp_path)
    before = _snapshot(model_dir)
    with pytest.raises(IncompatibleCheckpoint, match=message) as e:
        _train(model_dir, 6, model=MODEL.replace(**change), optimizer=optimizer)
    assert "or train this configuration in a new MODEL_DIR" in str(e.value)
    assert _snapshot(model_dir) == before  # flanx.json, train_config.json, metrics: byte for byte


@pytest.mark.slow  # another dropout rate: a fresh compile
def test_runtime_fields_may_change_on_resume(base_run, tmp_path):
    result = _train(_copy(base_run, tmp_path), 6, model=MODEL.replace(dropout_rate=0.2))
    assert result.resumed_from == 4 and result.step == 6


# ------------------------------------------------------------------ 3. a damaged newest checkpoint


def _largest_file(directory):
    files = [os.path.join(r, f) for r, _, fs in os.walk(directory) for f in fs]
    return max(files, key=os.path.getsize)


DAMAGE = {  # name -> (what to do to checkpoints/4, item, file named in the warning, load_params falls back)
    "truncated_array": (lambda d: os.truncate(_largest_file(d / "params"), 100), "params", "4/params", True),
    "missing_params": (lambda d: shutil.rmtree(d / "params"), "params", "4/params", True),
    "missing_opt_state": (lambda d: shutil.rmtree(d / "opt_state"), "opt_state", "4/opt_state", False),
    "truncated_train": (lambda d: os.truncate(d / "train" / "metadata", 10), "train", "4/train/metadata", False),
    "truncated_data": (lambda d: os.truncate(d / "data" / "metadata", 3), "data", "4/data/metadata", False),
    "truncated_params_metadata": (lambda d: os.truncate(d / "params" / "_METADATA", 20), "params",
                                  "4/params/_METADATA", True),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_newest_checkpoint_is_reported_and_the_previous_step_used(base_run, tmp_path, damage,
                                                                           flanx_warnings):
    model_dir = _copy(base_run, tmp_path)
    damage_fn, item, file, params_damaged = DAMAGE[damage]
    damage_fn(model_dir / "checkpoints" / "4")
    damaged_files = _snapshot(model_dir / "checkpoints" / "4")

    # load_params reads only params: it falls back exactly when they are what is damaged.
    params, _, step = load_params(str(model_dir))
    assert step == (2 if params_damaged else 4)
    if params_damaged:
        assert any(f"checkpoint step 4 is damaged: item params ({model_dir}/checkpoints/4/params" in r.getMessage()
                   for r in flanx_warnings)
    flanx_warnings.clear()

    result = _train(model_dir, 6)
    assert result.resumed_from == 2 and result.step == 6
    warning = next(r.getMessage() for r in flanx_warnings if "is damaged" in r.getMessage())
    assert f"checkpoint step 4 is damaged: item {item} ({model_dir}/checkpoints/{file}" in warning
    # The damaged step is moved aside, never deleted; training went on from step 2 exactly.
    assert _snapshot(model_dir / "checkpoints" / "4.damaged") == damaged_files
    assert sorted(os.listdir(model_dir / "checkpoints")) == ["2", "4", "4.damaged", "6"]
    assert [result.losses[s] for s in (3, 4)] == [base_run[1][s] for s in (3, 4)]
    assert [r["step"] for r in read_metrics(str(model_dir), "train")] == [1, 2, 3, 4, 5, 6]


def test_no_readable_checkpoint_is_an_error_and_nothing_changes(base_run, tmp_path):
    model_dir = _copy(base_run, tmp_path)
    for step in ("2", "4"):
        shutil.rmtree(model_dir / "checkpoints" / step / "params")
    before = _snapshot(model_dir)
    with pytest.raises(CheckpointError, match=r"holds no readable checkpoint \(checkpoint step 4 is damaged: item "
                                              r"params .*missing; checkpoint step 2 is damaged"):
        _train(model_dir, 6)
    assert _snapshot(model_dir) == before
    with pytest.raises(CheckpointError, match=r"holds no readable checkpoint"):
        load_params(str(model_dir))


# ------------------------------------------------------------------ 4. unwritable and full checkpoint dirs


def _mount_tmpfs(path, options) -> bool:
    """Mount a small tmpfs at `path` (root with mount rights only)."""
    if os.geteuid() != 0 or not shutil.which("mount"):
        return False
    path.mkdir(parents=True, exist_ok=True)
    return subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
                          capture_output=True).returncode == 0


@pytest.fixture
def mounts():
    mounted = []
    yield mounted
    for path in reversed(mounted):
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def test_unwritable_checkpoint_dir_fails_at_start(tmp_path, mounts):
    model_dir = tmp_path / "run"
    checkpoints = model_dir / "checkpoints"
    if _mount_tmpfs(checkpoints, "ro,size=1m"):
        mounts.append(checkpoints)
        reason = "Read-only file system"
    elif os.geteuid() != 0:
        checkpoints.mkdir(parents=True)
        checkpoints.chmod(0o555)
        reason = "Permission denied"
    else:
        pytest.skip("root without mount rights: no unwritable directory to test with")
    before = _snapshot(model_dir)
    start = time.time()
    try:
        with pytest.raises(CheckpointSaveError, match=rf"cannot write checkpoints to {checkpoints}: {reason}"):
            _train(model_dir, 4)
    finally:
        if not mounts:
            checkpoints.chmod(0o755)
    assert time.time() - start < 60  # no barrier wait
    assert _snapshot(model_dir) == before  # no flanx.json, metrics or lock left behind


def test_checkpoints_path_that_is_a_file_fails_at_start(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "checkpoints").write_text("not a directory")
    with pytest.raises(CheckpointSaveError, match=r"cannot write checkpoints to .*run/checkpoints: Not a directory"):
        _train(tmp_path / "run", 4)
    assert sorted(os.listdir(tmp_path / "run")) == ["checkpoints"]


def test_full_disk_stops_training_before_the_save_that_does_not_fit(tmp_path, mounts, monkeypatch):
    model_dir = tmp_path / "run"
    # A checkpoint takes ~0.36 MiB here and flanx asks for ~0.56 MiB free: the first save fits, the second not.
    if _mount_tmpfs(model_dir / "checkpoints", "size=800k"):
        mounts.append(model_dir / "checkpoints")
    else:  # simulate: the free space of a nearly full disk once the first checkpoint exists
        real = shutil.disk_usage
        monkeypatch.setattr(checkpointing.shutil, "disk_usage", lambda p: real(p)._replace(
            free=(10 << 20) if not os.path.exists(os.path.join(p, "2")) else (256 << 10)))
    with pytest.raises(CheckpointSaveError, match=r"not enough free space to save the checkpoint of step 4 in "
                                                  r".*it needs about .* MiB are free\. "
                                                  r"Training stopped before writing"):
        _train(model_dir, 8)
    assert checkpointing.Checkpointer(str(model_dir / "checkpoints"), create=False).all_steps() == [2]
    assert [r["step"] for r in read_metrics(str(model_dir), "train")] == [1, 2, 3, 4]
    assert load_params(str(model_dir))[2] == 2  # what is there is complete


class _FailingSaves:
    """A CheckpointManager whose asynchronous saves fail in the background with ENOSPC, as orbax's do."""

    def __init__(self, real):
        self.real, self.thread, self.error = real, None, None

    def save(self, step, args, force=False):
        def write():
            time.sleep(0.05)
            self.error = OSError(28, "No space left on device", f"/disk/checkpoints/{step}.orbax-checkpoint-tmp")
        self.thread = threading.Thread(target=write)
        self.thread.start()

    def is_saving_in_progress(self):
        return self.thread is not None and self.thread.is_alive()

    def wait_until_finished(self):
        if self.thread is not None:
            self.thread.join()
        if self.error is not None:
            error, self.error = self.error, None
            raise ValueError("RESOURCE_EXHAUSTED: Error writing local file") from error

    def __getattr__(self, name):
        return getattr(self.real, name)


def test_failed_async_save_stops_training_at_once(tmp_path, mounts, monkeypatch):
    """The first failed asynchronous save stops the run within a step, naming the cause (real ENOSPC on a
    small tmpfs when it can be mounted, else a simulated one). The file is named when the writer that failed
    reports it (TensorStore does; a metadata write may not); the checkpoint directory always is."""
    monkeypatch.setattr(checkpointing, "_space_error", lambda directory, state: None)  # let the save start
    model_dir = tmp_path / "run"
    if _mount_tmpfs(model_dir / "checkpoints", "size=600k"):  # one checkpoint (~0.36 MiB) fits, a second not
        mounts.append(model_dir / "checkpoints")
    else:
        real_open = checkpointing.Checkpointer.reopen

        def reopen(self):
            real_open(self)
            self._mngr = _FailingSaves(self._mngr)
        monkeypatch.setattr(checkpointing.Checkpointer, "reopen", reopen)

    def slow(shard):  # steps slower than a failing write: the failure is seen before the next save
        it = _data(shard)
        return map(lambda b: time.sleep(0.3) or b, it)
    period = 2 if mounts else 4
    with pytest.raises(CheckpointSaveError, match=r"saving the checkpoint of step 4 to .* failed: No space left "
                                                  r"on device( \(writing .*\))?\. Training stopped; the last complete "
                                                  rf"checkpoint is {'step 2' if mounts else 'none'}"):
        _train(model_dir, 12, data=slow, period=period)
    # Stopped by the first check after the failure (a busy machine: at the latest before the next save starts).
    assert 4 <= read_metrics(str(model_dir), "train")[-1]["step"] <= 4 + period


# ------------------------------------------------------------------ 5. metrics rows after a resume


def _tensorboard_scalars(directory, tag) -> dict[int, float]:
    """What TensorBoard shows for `tag`: events read file by file, a SessionLog START at step S hiding
    earlier events at steps >= S (tensorboardX's purge_step)."""
    from tensorboardX.proto import event_pb2

    values = {}
    for name in sorted(os.listdir(directory)):
        data = open(os.path.join(directory, name), "rb").read()
        pos = 0
        while pos < len(data):
            (length,) = struct.unpack("<Q", data[pos:pos + 8])
            event = event_pb2.Event.FromString(data[pos + 12:pos + 12 + length])
            pos += 12 + length + 4
            if event.HasField("session_log") and event.session_log.status == event.session_log.START:
                values = {s: v for s, v in values.items() if s < event.step}
            for value in event.summary.value:
                if value.tag == tag:
                    values[event.step] = value.simple_value
    return values


def test_metrics_keep_one_record_per_step_across_a_resume(base_run, tmp_path):
    """A run killed after logging steps 5 and 6 but before checkpointing them (the last checkpoint is 4):
    the resumed run's metrics.jsonl and TensorBoard hold each step once, with the resumed run's values."""
    model_dir = _copy(base_run, tmp_path)
    with open(model_dir / "metrics.jsonl", "a") as f:
        for step in (5, 6):
            f.write(json.dumps({"step": step, "kind": "train", "loss": 99.0}) + "\n")
        f.write('{"step": 7, "kind": "tra')  # cut short by the kill
    from tensorboardX import SummaryWriter
    with SummaryWriter(str(model_dir / "tb" / "train"), filename_suffix=".killed") as tb:
        for step in (5, 6):
            tb.add_scalar("loss", 99.0, step)
    # TensorBoard reads event files in name order, and names start with their creation second: the killed
    # run's file is dated a second back so that it sorts before the resumed run's even within one second.
    (killed,) = (model_dir / "tb" / "train").glob("*.killed")
    stamp = killed.name.split(".")[3]
    killed.rename(killed.with_name(killed.name.replace(f".{stamp}.", f".{int(stamp) - 1}.", 1)))
    result = _train(model_dir, 7)
    assert result.resumed_from == 4
    rows = [json.loads(line) for line in open(model_dir / "metrics.jsonl")]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6, 7]
    assert [r["loss"] for r in rows[4:]] == [result.losses[s] for s in (5, 6, 7)] and 99.0 not in result.losses.values()
    shown = _tensorboard_scalars(model_dir / "tb" / "train", "loss")
    assert sorted(shown) == [1, 2, 3, 4, 5, 6, 7]
    assert [shown[s] for s in (5, 6, 7)] == pytest.approx([result.losses[s] for s in (5, 6, 7)])


def test_read_metrics_keeps_the_last_record_of_each_step(tmp_path):
    rows = [(1, "train", 3.0), (2, "train", 2.5), (2, "eval", 0.1), (2, "train", 2.4), (3, "train", 2.0)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "kind": k, "loss": v}) + "\n"
                                                    for s, k, v in rows))
    assert [(r["step"], r["loss"]) for r in read_metrics(str(tmp_path), "train")] == [(1, 3.0), (2, 2.4), (3, 2.0)]
    assert [(r["step"], r["kind"]) for r in read_metrics(str(tmp_path))] == [(1, "train"), (2, "eval"),
                                                                              (2, "train"), (3, "train")]
    np.testing.assert_equal(len(read_metrics(str(tmp_path), "eval")), 1)
