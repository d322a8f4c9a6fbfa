"""The train step and loop on the tiny T5: microbatching, LoRA freezing, learning, safety."""
from __future__ import annotations

import os

import jax
import numpy as np
import pytest
from flax import traverse_util

from flanx.models import LoraConfig, get_config, init_params
from flanx.train import optim, step as step_lib, trainer
from flanx.train.checkpointing import Checkpointer
from flanx.train.config import LossConfig, OptimizerConfig, TrainConfig
from flanx.train.synthetic import SyntheticBatches
from flanx.train.writers import read_metrics

TINY = get_config("tiny", dropout_rate=0.0)


def _one_step(params, num_micro, normalization):
    opt = optim.make_optimizer(OptimizerConfig(learning_rate=0.01))
    state = step_lib.init_state(params, opt, None, seed=0)
    fn = step_lib.make_train_step(step_lib.model_apply_fn(TINY), opt, optim.make_schedule(OptimizerConfig()),
                                  LossConfig(normalization=normalization), num_micro)
    batch = next(SyntheticBatches(8, 24, 12, vocab_size=TINY.vocab_size, seed=3))
    return jax.jit(fn)(state, batch)


@pytest.mark.slow
def test_gradient_accumulation_equals_full_batch():
    start = init_params(TINY, jax.random.PRNGKey(0))
    full_state, full_m = _one_step(start, 1, "per_sequence")
    acc_state, acc_m = _one_step(start, 4, "per_sequence")
    assert float(acc_m["loss"]) == pytest.approx(float(full_m["loss"]), rel=1e-6)
    assert float(acc_m["grad_norm"]) == pytest.approx(float(full_m["grad_norm"]), rel=1e-5)
    a, b = traverse_util.flatten_dict(full_state.params), traverse_util.flatten_dict(acc_state.params)
    worst = max(float(np.max(np.abs(np.asarray(a[k]) - np.asarray(b[k])))) for k in a)
    moved = max(float(np.max(np.abs(np.asarray(a[k]) - np.asarray(p))))
                for k, p in traverse_util.flatten_dict(start).items())
    assert moved > 1e-4 and worst < 1e-6, (moved, worst)


@pytest.mark.slow
def test_lora_trains_only_adapters_and_loss_decreases(tmp_path):
    cfg_model = TINY.replace(lora=LoraConfig(rank=4, alpha=8.0))
    start = init_params(cfg_model, jax.random.PRNGKey(1))
    start_np = {k: np.array(v) for k, v in traverse_util.flatten_dict(start).items()}
    cfg = TrainConfig(train_steps=40, batch_size=8, log_every=10,
                      optimizer=OptimizerConfig(name="adamw", learning_rate=3e-3))
    data = lambda shard: SyntheticBatches(shard, 24, 12, vocab_size=32)  # noqa: E731
    res = trainer.train(cfg, cfg_model, data, init_params=start)
    end = {k: np.asarray(v) for k, v in traverse_util.flatten_dict(res.params).items()}
    lora_keys = [k for k in end if k[-1] in ("lora_a", "lora_b")]
    assert lora_keys and len(lora_keys) < len(end)
    for k, v in end.items():
        if k in lora_keys:
            continue
        assert v.tobytes() == start_np[k].tobytes(), f"frozen {'/'.join(k)} changed"
    assert all(not np.array_equal(end[k], start_np[k]) for k in lora_keys if k[-1] == "lora_b")
    assert res.losses[40] < res.losses[1] - 0.05


@pytest.mark.slow
def test_full_finetune_learns_synthetic_task_and_logs(tmp_path):
    cfg = TrainConfig(train_steps=60, batch_size=8, log_every=20, model_dir=str(tmp_path), checkpoint_period=20,
                      keep_checkpoints=2,
                      optimizer=OptimizerConfig(learning_rate=0.01, schedule="linear", warmup_steps=5))
    data = lambda shard: SyntheticBatches(shard, 24, 12, vocab_size=32)  # noqa: E731
    res = trainer.train(cfg, TINY, data)
    first = np.mean([res.losses[s] for s in range(1, 6)])
    last = np.mean([res.losses[s] for s in range(56, 61)])
    assert last < 0.7 * first, (first, last)
    rows = read_metrics(str(tmp_path), "train")
    assert [r["step"] for r in rows] == [20, 40, 60]
    sched = optim.make_schedule(cfg.optimizer, 0, 60)
    for r in rows:  # the logged rate is the schedule's rate of the step that produced the line
        assert r["learning_rate"] == pytest.approx(float(sched(r["step"] - 1)), rel=1e-5)
        assert r["tokens_per_s"] > 0 and np.isfinite(r["loss"])
    assert Checkpointer(str(tmp_path / "checkpoints")).all_steps() == [40, 60]  # saved 20, 40, 60; keep 2
    assert (tmp_path / "tb" / "train").is_dir() and (tmp_path / "flanx.json").is_file()


@pytest.mark.slow
def test_trainer_alone_decides_resume_and_sets_up_lora_from_a_checkpoint(tmp_path):
    """`init_checkpoint`: a base checkpoint (step 5) gets fresh adapters and only they train; TRAIN_STEPS
    counts from its step; once MODEL_DIR has checkpoints the initial checkpoint is never read again."""
    from flanx.checkpoints import save_params

    base = jax.tree.map(np.asarray, init_params(TINY, jax.random.PRNGKey(0)))
    save_params(tmp_path / "base", base, TINY, step=5)
    lora_model = TINY.replace(lora=LoraConfig(rank=4, alpha=8.0))
    cfg = TrainConfig(train_steps=9, batch_size=4, log_every=100, model_dir=str(tmp_path / "run"),
                      checkpoint_period=100, optimizer=OptimizerConfig(name="adamw", learning_rate=3e-3))
    data = lambda shard: SyntheticBatches(shard, 16, 8, vocab_size=32)  # noqa: E731
    with pytest.raises(ValueError, match=r"TRAIN_STEPS=5 is not beyond the initial checkpoint's step 5"):
        trainer.train(cfg.replace(train_steps=5, model_dir=None), lora_model, data,
                      init_checkpoint=str(tmp_path / "base"))
    first = trainer.train(cfg, lora_model, data, init_checkpoint=str(tmp_path / "base"))
    assert first.resumed_from is None and sorted(first.losses) == [6, 7, 8, 9]
    end = traverse_util.flatten_dict(jax.tree.map(np.asarray, first.params))
    start = traverse_util.flatten_dict(base)
    assert {k for k in end if k[-1] in ("lora_a", "lora_b")} and set(start) < set(end)
    for k, v in start.items():
        assert v.tobytes() == end[k].tobytes(), f"frozen {'/'.join(k)} changed"
    assert any(np.abs(v).max() > 0 for k, v in end.items() if k[-1] == "lora_b")
    # Resume: the initial checkpoint is gone, and nothing reads it.
    import shutil
    shutil.rmtree(tmp_path / "base")
    again = trainer.train(cfg.replace(train_steps=10), lora_model, data, init_checkpoint=str(tmp_path / "base"))
    assert again.resumed_from == 9 and sorted(again.losses) == [10]


class _PoisonedData(SyntheticBatches):
    """Batch 5 (the 5th step) carries a NaN loss weight, as corrupt data would."""

    def __next__(self):
        n = self.position
        batch = super().__next__()
        if n == 4:
            batch["decoder_loss_weights"] = batch["decoder_loss_weights"].astype(np.float32)
            batch["decoder_loss_weights"][0, 0] = np.nan
        return batch


@pytest.mark.slow
def test_non_finite_loss_stops_with_step_and_keeps_last_good_checkpoint(tmp_path):
    cfg = TrainConfig(train_steps=10, batch_size=4, log_every=100, model_dir=str(tmp_path), checkpoint_period=2,
                      optimizer=OptimizerConfig(learning_rate=0.01))
    with pytest.raises(FloatingPointError, match=r"at step 5;.*step 4 in"):
        trainer.train(cfg, TINY, lambda shard: _PoisonedData(shard, 16, 8, vocab_size=TINY.vocab_size))
    ckpt = Checkpointer(str(tmp_path / "checkpoints"))
    assert ckpt.all_steps() == [2, 4]
    from flanx.checkpoints import load_params
    params, _, step = load_params(str(tmp_path), TINY)
    assert step == 4 and all(np.isfinite(v).all() for v in jax.tree.leaves(params))


def test_metrics_writer_rewrites_instead_of_appending_on_object_stores(tmp_path, monkeypatch):
    """A `gs://` MODEL_DIR: no local makedirs of 'gs:', no append mode (object stores have
    none); earlier lines (a resumed run's) are kept. Simulated by treating a local path as
    remote, which etils' `epath` then writes like any other backend."""
    from flanx import gin_utils, io as flanx_io
    from flanx.train.writers import MetricsWriter, read_metrics

    model_dir = str(tmp_path / "bucket" / "run")
    monkeypatch.setattr(flanx_io, "is_remote", lambda path: str(path).startswith(str(tmp_path / "bucket")))
    opened_modes = []
    real_open_output = flanx_io.open_output
    monkeypatch.setattr(flanx_io, "open_output",
                        lambda path, mode="w": opened_modes.append(mode) or real_open_output(path, mode))
    os.makedirs(model_dir)
    with open(os.path.join(model_dir, "metrics.jsonl"), "w") as f:
        f.write('{"step": 1, "kind": "train", "loss": 3.0}\n')   # from the run before a preemption
    writer = MetricsWriter(model_dir, tensorboard=False)
    writer.write(2, "train", {"loss": 2.5})
    writer.write(2, "eval", {"task": {"accuracy": 0.5}})
    assert set(opened_modes) == {"w"}
    rows = read_metrics(model_dir)
    assert [(r["step"], r["kind"]) for r in rows] == [(1, "train"), (2, "train"), (2, "eval")]
    assert read_metrics(model_dir, "eval")[0]["task"] == {"accuracy": 0.5}
    assert gin_utils.write_config(model_dir).endswith("config.gin") and opened_modes[-1] == "w"
