"""The training loop: plain Python, no gin, no TensorFlow.

    result = train(train_cfg, model_config, data_iter_factory, init_params=None, eval_fn=None, *,
                   init_step=0, init_checkpoint=None, trainable_mask=None, mesh=None, apply_fn=None,
                   on_model_dir_ready=None)

- `data_iter_factory(shard: HostShard)` returns an iterator of host-local
  numpy batches (`shard.local_batch_size` rows; T5X feature names). For
  exact resume it should have `state()` (JSON-able) and `restore(state)`;
  `flanx.data.pipeline.get_dataset(...)` iterators do.
- `init_params`: a parameter tree to start from (e.g. from
  `flanx.checkpoints.load_params`), else fresh `init_params(model_config)`;
  `init_step` is that checkpoint's step (`train_steps` counts from 0, T5X style).
- `init_checkpoint`: a checkpoint path (any format `load_params` reads) to
  start from instead; loaded only when the run does not resume, and its step
  becomes `init_step`. With `model_config.lora` set, the base weights get fresh
  adapters (`flanx.models.lora.setup`) and only the adapters train.
- `trainable_mask` (bools shaped like the params; default: the LoRA adapters
  when there are any, else everything), `mesh` (default: built from
  `train_cfg.mesh`) and `apply_fn` (default: the T5 model's) replace a piece.
- `on_model_dir_ready()` runs on every process once MODEL_DIR is locked and
  checked, before training writes there.
- `eval_fn(params, step) -> {task: {metric: value}}` runs every
  `eval_period` steps and at the end.
- `extra_loss`: a `flanx.train.regularizers.ExtraLoss` (L2-SP, EWC) added to
  the loss each step; its `aux` arrays go to the mesh once (trees shaped like
  the parameters sharded like them) and are logged as `extra_loss`.

The trainer alone decides whether a run resumes: with `model_dir` set, a run
resumes from the newest committed checkpoint in `model_dir/checkpoints`
(ignoring `init_params` and `init_checkpoint`), saves every
`checkpoint_period` steps and at the end, appends metrics to
`model_dir/metrics.jsonl` and TensorBoard, and logs a progress line every
`log_every` steps. A non-finite loss raises `FloatingPointError` naming the
step; no checkpoint is written after it. SIGTERM or Ctrl-C saves the step in
flight and raises `flanx.train.preemption.Preempted` (the host keeps at most
one step queued ahead of the device, so that is one step, not a backlog).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from typing import Any, Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from jax.sharding import NamedSharding, PartitionSpec as P

from flanx import io, partitioning
from flanx.mesh import check_batch_size
from flanx.progress import Progress
from flanx.train import optim, run_dir, step as step_lib
from flanx.train.preemption import Preempted, PreemptionWatch
from flanx.train.checkpointing import Checkpointer, _local_value
from flanx.train.config import TrainConfig
from flanx.train.writers import MetricsWriter

logger = logging.getLogger("flanx")


@dataclasses.dataclass
class TrainResult:
    params: Any                       # final parameters (jax arrays on the mesh)
    step: int                         # final absolute step
    losses: dict[int, float]          # step (1-based, after the update) -> loss of that step
    evals: list[tuple[int, dict]]     # (step, eval_fn result)
    resumed_from: int | None          # checkpoint step this run resumed from, if any
    model_dir: str | None


def _abstract(tree, shardings):
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


def _host_array_to_global(x, sharding):
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])


def _restore_iterator(it, data_state) -> None:
    for name in ("restore", "set_state", "load_state"):
        if hasattr(it, name):
            getattr(it, name)(data_state)
            return
    raise ValueError("the checkpoint has a data-iterator state but the data iterator has no "
                     "restore(state) method; resuming would repeat batches")


def _iterator_state(it):
    return it.state() if hasattr(it, "state") else None


def _load_initial(path: str, model_config, train_steps: int):
    """(host params, step) of the checkpoint a new run starts from (base weights, no adapters)."""
    from flanx.checkpoints import load_params

    base = model_config.replace(lora=None) if getattr(model_config, "lora", None) is not None else model_config
    params, _, step = load_params(path, base)
    step = int(step or 0)
    if train_steps <= step:
        raise ValueError(f"TRAIN_STEPS={train_steps} is not beyond the initial checkpoint's step {step} "
                         f"({path}); TRAIN_STEPS is absolute (T5X): set TRAIN_STEPS={step} + the steps to train")
    return params, step


def _write_run_config(cfg: TrainConfig, model_config) -> None:
    """`model_dir/flanx.json` (model config, for load_params) and `train_config.json`."""
    from flanx.checkpoints import native

    native.write_sidecar(cfg.model_dir, model_config, metadata={"source": "trainer"})
    with io.open_output(os.path.join(cfg.model_dir, "train_config.json")) as f:
        json.dump(dataclasses.asdict(cfg), f, indent=2, sort_keys=True)


def _check_health(ckpt, guard) -> None:
    if ckpt is not None:
        ckpt.raise_if_save_failed()
    if guard is not None:
        guard.check()


class _TrainSetup:
    """What one training run builds once: the mesh, optimizer, trainable paths, state shardings and
    abstract state; it makes the fresh state and the jitted train step."""

    def __init__(self, cfg, model_config, init_params, init_step, trainable_mask, mesh, apply_fn):
        self.cfg = cfg
        self.mesh = mesh or partitioning.create_mesh(dataclasses.asdict(cfg.mesh), global_batch_size=cfg.batch_size)
        check_batch_size(cfg.batch_size, self.mesh.shape, cfg.num_microbatches)
        self.optimizer = optim.make_optimizer(cfg.optimizer)
        apply_fn = apply_fn or step_lib.model_apply_fn(model_config)

        from flanx.models import init_params as model_init, param_axes
        axes = param_axes(model_config)
        if init_params is None:
            params_shapes = jax.eval_shape(lambda: model_init(model_config, jax.random.PRNGKey(cfg.seed)))
        else:
            params_shapes = jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype)
                                         if not hasattr(x, "dtype") else jax.ShapeDtypeStruct(x.shape, x.dtype),
                                         init_params)
        if trainable_mask is None:  # LoRA: the adapters only; else everything
            from flanx.models import lora
            _, trainable_mask = lora.setup(params_shapes, model_config)
        self.trainable = step_lib.trainable_paths(trainable_mask)
        if getattr(model_config, "lora", None) is not None and cfg.optimizer.name == "adafactor" \
                and cfg.optimizer.multiply_by_parameter_scale:
            logger.warning("LoRA with Adafactor's parameter scaling: lora_b starts at zero, so its steps are "
                           "learning_rate * 1e-3 and the adapters barely move. Use OptimizerConfig("
                           "multiply_by_parameter_scale=False) or name='adamw' for LoRA.")

        # Shardings for the whole state, derived from the parameters' logical axes.
        p_specs = partitioning.param_specs(axes, params_shapes, self.mesh)
        tr_shapes, _ = step_lib.split_params(params_shapes, self.trainable)
        tr_specs, _ = step_lib.split_params(p_specs, self.trainable)
        opt_shapes = jax.eval_shape(self.optimizer.init, tr_shapes)
        o_specs = partitioning.state_specs(opt_shapes, tr_specs, tr_shapes)
        state_partition_specs = step_lib.TrainState(step=P(), params=p_specs, opt_state=o_specs, rng=P())
        self.state_sharding = partitioning.named(self.mesh, state_partition_specs)
        self.abstract_state = _abstract(step_lib.TrainState(
            step=jax.ShapeDtypeStruct((), jnp.int32), params=params_shapes, opt_state=opt_shapes,
            rng=jax.ShapeDtypeStruct((2,), jnp.uint32)), self.state_sharding)
        self.replicated = NamedSharding(self.mesh, P())
        self.batch_sharding = NamedSharding(self.mesh, partitioning.batch_spec())
        self.model_init, self.model_config = model_init, model_config
        self.init_params, self.init_step = init_params, init_step
        self.apply_fn = apply_fn

    def fresh_state(self) -> step_lib.TrainState:
        cfg = self.cfg
        if self.init_params is None:
            def make():
                params = self.model_init(self.model_config, jax.random.PRNGKey(cfg.seed))
                return step_lib.init_state(params, self.optimizer, self.trainable, cfg.seed, self.init_step)
            with self.mesh:
                return jax.jit(make, out_shardings=self.state_sharding)()
        params = jax.tree.map(_host_array_to_global, self.init_params, self.state_sharding.params)

        def make_from(params):
            return step_lib.init_state(params, self.optimizer, self.trainable, cfg.seed, self.init_step)
        with self.mesh:
            return jax.jit(make_from, out_shardings=self.state_sharding)(params)

    def compile_step(self, schedule, extra_loss=None) -> Callable:
        fn = step_lib.make_train_step(self.apply_fn, self.optimizer, schedule, self.cfg.loss,
                                      self.cfg.num_microbatches, self.trainable,
                                      extra_loss=extra_loss.fn if extra_loss else None)
        args, shardings = (), (self.state_sharding, self.batch_sharding)
        if extra_loss is not None:  # aux trees shaped like the params are sharded like them
            params_def = jax.tree.structure(self.state_sharding.params)
            aux_sharding = {k: self.state_sharding.params if jax.tree.structure(v) == params_def else
                            jax.tree.map(lambda _: self.replicated, v) for k, v in extra_loss.aux.items()}
            args = (jax.tree.map(_host_array_to_global, dict(extra_loss.aux), aux_sharding),)
            shardings += (aux_sharding,)
        jitted = jax.jit(fn, in_shardings=shardings,
                         out_shardings=(self.state_sharding, self.replicated), donate_argnums=(0,))

        def run(state, batch):
            with self.mesh, nn.logical_axis_rules(partitioning.LOGICAL_AXIS_RULES):
                return jitted(state, batch, *args)
        return run


def train(cfg: TrainConfig, model_config, data_iter_factory: Callable[[partitioning.HostShard], Iterator],
          init_params=None, eval_fn: Callable | None = None, *, init_step: int = 0,
          init_checkpoint: str | None = None, trainable_mask=None, mesh=None,
          apply_fn: Callable | None = None, on_model_dir_ready: Callable[[], None] | None = None,
          extra_loss=None) -> TrainResult:
    """Train `model_config` on batches from `data_iter_factory` up to `cfg.train_steps` (absolute).

    With `cfg.model_dir`, the run locks MODEL_DIR and checks it against its newest checkpoint before
    writing anything there (`flanx.train.run_dir`); `on_model_dir_ready()` is then called on every
    process, before training writes (the entry point writes its gin records and log files there).
    `extra_loss` (a `flanx.train.regularizers.ExtraLoss`) is added to each step's loss.
    """
    ckpt = resume = None
    guard = run_dir.claim(cfg.model_dir) if cfg.model_dir else None  # a second writer stops here
    try:
        if cfg.model_dir:  # reads only, until open_for_writing
            ckpt = Checkpointer(os.path.join(cfg.model_dir, "checkpoints"), cfg.keep_checkpoints,
                                cfg.async_checkpointing, create=False)
        latest = ckpt.latest_step() if ckpt else None  # the one place a run decides to resume
        if latest is None and init_checkpoint:
            init_params, init_step = _load_initial(init_checkpoint, model_config, cfg.train_steps)
        if latest is None and init_params is not None:  # fresh adapters on base weights (LoRA only)
            from flanx.models import lora
            init_params, _ = lora.setup(init_params, model_config, jax.random.PRNGKey(cfg.seed))
        if latest is not None:  # resuming: the checkpoint holds every parameter (adapters too)
            init_params = None
        setup = _TrainSetup(cfg, model_config, init_params, init_step, trainable_mask, mesh, apply_fn)
        if latest is not None:  # config, shapes and damage are checked before anything is written
            resume = run_dir.restore_newest(ckpt, setup.abstract_state, model_config, cfg)
        if cfg.model_dir:
            run_dir.open_for_writing(ckpt, resume)
            if jax.process_index() == 0:
                _write_run_config(cfg, model_config)
            if on_model_dir_ready is not None:
                on_model_dir_ready()

        resumed_from, data_state, start_step = None, None, init_step
        if resume is not None:
            state, data_state = resume.state, resume.data_state
            resumed_from, start_step = resume.step, int(resume.meta.get("start_step", init_step))
            logger.info("resuming from %s/checkpoints step %d", cfg.model_dir, resume.step)
        else:
            state = setup.fresh_state()
        step = int(_local_value(state.step))
        schedule = optim.make_schedule(cfg.optimizer, start_step, cfg.train_steps)
        train_step = setup.compile_step(schedule, extra_loss)

        shard = partitioning.host_shard(setup.mesh, cfg.batch_size)
        it = data_iter_factory(shard)
        if data_state is not None:
            _restore_iterator(it, data_state)
        writer = MetricsWriter(cfg.model_dir, start_step=step)  # drops rows a dead run wrote beyond `step`
    except BaseException:
        if ckpt:
            ckpt.close()
        if guard:
            guard.release(failed=True)  # a MODEL_DIR this run created and left empty goes again
        raise

    result = TrainResult(params=None, step=step, losses={}, evals=[], resumed_from=resumed_from,
                         model_dir=cfg.model_dir)
    progress = Progress("train", cfg.train_steps, every=cfg.log_every, start_step=step)
    pending: list[tuple[int, dict]] = []
    window = {"t": time.perf_counter(), "tokens": 0.0}

    def flush(log: bool) -> None:
        """Fetch pending step metrics; raise on a non-finite loss; write the log line."""
        if not pending:
            return
        fetched = [(s, {k: float(_local_value(v)) for k, v in m.items()}) for s, m in pending]
        pending.clear()
        for s, m in fetched:
            if not math.isfinite(m["loss"]):
                good = ckpt.latest_step() if ckpt else None
                raise FloatingPointError(
                    f"non-finite loss ({m['loss']}) at step {s}; training stopped. Last good checkpoint: "
                    f"{f'step {good} in {ckpt.directory}' if good is not None else 'none'}. Lower "
                    "LEARNING_RATE, check the data, or resume from that checkpoint.")
            result.losses[s] = m["loss"]
        if log:
            s, last = fetched[-1]
            mean = {k: float(np.mean([m[k] for _, m in fetched]))
                    for k in ("loss", "accuracy", "z_loss", "extra_loss") if k in last}
            now = time.perf_counter()
            tps = window["tokens"] / max(now - window["t"], 1e-9)
            writer.write(s, "train", {**mean, "learning_rate": last["learning_rate"],
                                      "grad_norm": last["grad_norm"], "tokens_per_s": tps})
            progress.update(s, window["tokens"], force=True, loss=mean["loss"], lr=last["learning_rate"])
            window.update(t=now, tokens=0.0)

    def save(state) -> None:
        flush(log=False)
        ckpt.save(state, _iterator_state(it), {"start_step": start_step})

    watch = PreemptionWatch(enabled=ckpt is not None)
    try:
        while step < cfg.train_steps:
            try:
                local = next(it)
            except StopIteration:
                raise RuntimeError(f"the training data ran out at step {step} of {cfg.train_steps}; "
                                   "use a repeating dataset or lower TRAIN_STEPS") from None
            local = step_lib.model_batch(local)
            tokens = sum(v.shape[0] * v.shape[1] for k, v in local.items()
                         if k in ("encoder_input_tokens", "decoder_target_tokens")) * shard.num_shards
            batch = partitioning.to_global_batch(local, setup.mesh, cfg.batch_size)
            state, metrics = train_step(state, batch)
            step += 1
            _check_health(ckpt, guard)  # a failed save or a lost lock stops the run at once
            if pending:  # at most one step queued ahead of the device: a signal is answered after it
                jax.block_until_ready(pending[-1][1]["loss"])
            pending.append((step, metrics))
            window["tokens"] += tokens
            if step % cfg.log_every == 0 or step == cfg.train_steps:
                flush(log=True)
            saved = ckpt is not None and (step % cfg.checkpoint_period == 0 or step == cfg.train_steps)
            if saved:
                save(state)
            if watch.reached(step):
                if not saved:
                    save(state)
                ckpt.finish()
                flush(log=True)
                raise Preempted(step, ckpt.directory, watch.signum)
            if eval_fn and ((cfg.eval_period and step % cfg.eval_period == 0) or step == cfg.train_steps):
                flush(log=False)
                scores = eval_fn(state.params, step)
                result.evals.append((step, scores))
                writer.write(step, "eval", scores)
        flush(log=True)
        if ckpt:
            ckpt.finish()  # the last save committed, or CheckpointSaveError
    finally:
        watch.close()
        if ckpt:
            ckpt.close()  # waits for an asynchronous save; never masks the error in flight
        writer.close()
        if guard:
            guard.release()
    result.params, result.step = state.params, step
    return result
