"""Optimizers and learning-rate schedules, built on optax.

- `make_schedule(cfg, start_step, total_steps)`: step -> learning rate, for
  the shapes in `OptimizerConfig` (constant, warmup + inverse square root,
  linear, cosine). The step is absolute; the schedule counts from
  `start_step` (the initial checkpoint's step), so fine-tuning a step-1.1M
  checkpoint warms up and decays over the fine-tuning run.
- `make_optimizer(cfg)`: Adafactor as T5X runs it (factored second
  moments for parameters with two dims >= `min_dim_size_to_factor`, 128 by
  default; decay 1 - (t+1)^-0.8, no momentum, update clipping at RMS 1.0,
  step scaled by max(RMS(param), 1e-3)) or AdamW; optional global-norm
  gradient clipping in front. Its learning rate is an injected hyperparameter
  (`optax.inject_hyperparams`) that starts at `cfg.learning_rate`.
- `set_learning_rate(opt_state, lr)`: the train step sets that rate to
  `schedule(step)` at the absolute step before each update, so the schedule,
  not the optimizer's own counter, decides the rate: a freshly initialised
  optimizer on a step-S checkpoint still follows the schedule.
"""
from __future__ import annotations

import math

import jax.numpy as jnp
import optax

from flanx.train.config import OptimizerConfig


def make_schedule(cfg: OptimizerConfig, start_step: int = 0, total_steps: int | None = None):
    """Return `schedule(step) -> lr` (jit-friendly) for absolute `step`."""
    peak, warmup = cfg.learning_rate, cfg.warmup_steps
    run_steps = None if total_steps is None else max(total_steps - start_step, 1)
    decay_steps = cfg.decay_steps or (run_steps - warmup if run_steps else None)
    if cfg.schedule in ("linear", "cosine") and not decay_steps:
        raise ValueError(f"schedule {cfg.schedule!r} needs decay_steps or the run's total steps")
    end = cfg.end_lr_fraction

    def schedule(step):
        t = jnp.asarray(step, jnp.float32) - start_step
        if cfg.schedule == "constant":
            mult = jnp.ones_like(t)
        elif cfg.schedule == "rsqrt":
            w = float(max(warmup, 1))
            mult = jnp.sqrt(w / jnp.maximum(t, w))
        else:
            frac = jnp.clip((t - warmup) / float(max(decay_steps, 1)), 0.0, 1.0)
            if cfg.schedule == "linear":
                mult = 1.0 - (1.0 - end) * frac
            else:
                mult = end + (1.0 - end) * 0.5 * (1.0 + jnp.cos(math.pi * frac))
        if warmup and cfg.linear_warmup:
            mult = mult * jnp.minimum(1.0, (t + 1.0) / warmup)
        return peak * mult

    return schedule


def _adafactor(cfg: OptimizerConfig, learning_rate) -> optax.GradientTransformation:
    # optax.adafactor chains: factored RMS scaling -> block-RMS update clipping
    # -> learning rate -> parameter-scale (max(rms(param), 1e-3)) -> optional
    # momentum -> negate; the same update T5X's Adafactor computes.
    return optax.adafactor(
        learning_rate=learning_rate,
        min_dim_size_to_factor=cfg.min_dim_size_to_factor,
        decay_rate=cfg.decay_rate,
        multiply_by_parameter_scale=cfg.multiply_by_parameter_scale,
        clipping_threshold=cfg.clipping_threshold,
        momentum=cfg.momentum,
        eps=cfg.epsilon1,
        weight_decay_rate=cfg.weight_decay or None,
    )


def make_optimizer(cfg: OptimizerConfig) -> optax.GradientTransformation:
    """The optimizer, with its learning rate as an injected hyperparameter.

    Set the rate with `set_learning_rate(state, lr)`, then `opt.update(grads, state, params)`.
    """
    def build(learning_rate):
        if cfg.name == "adafactor":
            core = _adafactor(cfg, learning_rate)
        else:
            core = optax.adamw(learning_rate, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                               weight_decay=cfg.weight_decay)
        if cfg.grad_clip_norm:
            return optax.chain(optax.clip_by_global_norm(cfg.grad_clip_norm), core)
        return core

    return optax.inject_hyperparams(build)(learning_rate=cfg.learning_rate)


def set_learning_rate(opt_state, lr):
    """Return `opt_state` (from `make_optimizer`) with its learning rate set to `lr`."""
    hp = dict(opt_state.hyperparams)
    hp["learning_rate"] = jnp.asarray(lr, dtype=jnp.asarray(hp["learning_rate"]).dtype)
    return opt_state._replace(hyperparams=hp)
