"""The train state and the jit-able train and eval steps.

`TrainState` holds everything a run needs to continue exactly: the absolute
`step`, the full parameter tree, the optimizer state (over the *trainable*
parameters only), and the base RNG key (dropout keys are `fold_in(rng, step)`,
so they are a function of the step and survive a restart).

`make_train_step(...)` returns `train_step(state, batch) -> (state, metrics)`:

    lr      = schedule(step)
    weights = per-token loss weights, factor = normalizer of the whole batch
    grads   = d/dθ sum(loss * weights) / factor      (scan over microbatches)
    θ      += optimizer(grads, lr)                    (trainable θ only)

With LoRA on, parameters outside the trainable set are neither
differentiated nor updated: they come out of the step bit-identical.

`extra_loss(params, aux) -> scalar` (optional; `flanx.train.regularizers`:
L2-SP, EWC) is added to the loss once per step, outside the microbatch loop;
the step then takes its `aux` (reference weights, coefficients) as a third
argument, `train_step(state, batch, aux)`, and reports it as `extra_loss`
(`loss` stays the task loss).
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import optax
from flax import struct, traverse_util

from flanx.train import losses, optim
from flanx.train.config import LossConfig

MODEL_FEATURES = ("encoder_input_tokens", "decoder_input_tokens", "decoder_target_tokens",
                  "decoder_loss_weights", "encoder_segment_ids", "decoder_segment_ids",
                  "encoder_positions", "decoder_positions")


@struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    opt_state: Any
    rng: jax.Array


# ---------------------------------------------------------------- trainable split


def split_params(params: Mapping, trainable: frozenset | None) -> tuple[dict, dict]:
    """(trainable, frozen) nested dicts; `trainable=None` means every parameter trains."""
    if trainable is None:
        return params, {}
    flat = traverse_util.flatten_dict(params)
    tr = {k: v for k, v in flat.items() if k in trainable}
    fr = {k: v for k, v in flat.items() if k not in trainable}
    return traverse_util.unflatten_dict(tr), traverse_util.unflatten_dict(fr)


def merge_params(trainable: Mapping, frozen: Mapping) -> dict:
    if not frozen:
        return trainable
    flat = traverse_util.flatten_dict(frozen)
    flat.update(traverse_util.flatten_dict(trainable))
    return traverse_util.unflatten_dict(flat)


def trainable_paths(mask: Mapping | None) -> frozenset | None:
    """Paths (tuples of keys) whose mask leaf is True; None when `mask` is None."""
    if mask is None:
        return None
    flat = traverse_util.flatten_dict(mask)
    paths = frozenset(k for k, v in flat.items() if bool(v))
    if not paths:
        raise ValueError("the trainable mask selects no parameters")
    return paths


# ---------------------------------------------------------------- model glue


def model_apply_fn(model_config) -> Callable:
    """`apply(params, batch, rng, enable_dropout) -> logits` for a flanx T5."""
    from flanx.models import Transformer

    model = Transformer(model_config)

    def apply(params, batch, rng, enable_dropout):
        return model.apply(
            {"params": params},
            batch["encoder_input_tokens"], batch["decoder_input_tokens"],
            encoder_segment_ids=batch.get("encoder_segment_ids"),
            decoder_segment_ids=batch.get("decoder_segment_ids"),
            encoder_positions=batch.get("encoder_positions"),
            decoder_positions=batch.get("decoder_positions"),
            enable_dropout=enable_dropout,
            rngs={"dropout": rng} if enable_dropout else None,
        )

    return apply


def model_batch(batch: Mapping) -> dict:
    """Keep only the model's features (drops e.g. seqio's bookkeeping fields)."""
    return {k: batch[k] for k in MODEL_FEATURES if k in batch}


# ---------------------------------------------------------------- steps


def init_state(params, optimizer: optax.GradientTransformation, trainable: frozenset | None,
               seed: int, step: int = 0) -> TrainState:
    tr, _ = split_params(params, trainable)
    return TrainState(step=jnp.asarray(step, jnp.int32), params=params,
                      opt_state=optimizer.init(tr), rng=jax.random.PRNGKey(seed))


def _tree_add(a, b):
    return jax.tree.map(jnp.add, a, b)


def make_train_step(apply_fn: Callable, optimizer: optax.GradientTransformation, schedule: Callable,
                    loss_cfg: LossConfig = LossConfig(), num_microbatches: int = 1,
                    trainable: frozenset | None = None, enable_dropout: bool = True,
                    extra_loss: Callable | None = None) -> Callable:
    """Build `train_step(state, batch[, aux]) -> (new_state, metrics)` (not yet jitted)."""
    norm = loss_cfg.normalization

    def micro_loss(tr, frozen, mb, weights, factor, rng):
        logits = apply_fn(merge_params(tr, frozen), mb, rng, enable_dropout)
        sums = losses.weighted_sums(logits, mb, weights, loss_cfg.z_loss, loss_cfg.label_smoothing)
        return sums["loss_sum"] / factor, sums

    grad_fn = jax.value_and_grad(micro_loss, has_aux=True)

    def train_step(state: TrainState, batch: Mapping, aux=None):
        batch = model_batch(batch)
        lr = schedule(state.step)
        rng = jax.random.fold_in(state.rng, state.step)
        weights = losses.loss_weights(batch, norm)
        factor = losses.normalizing_factor(batch, norm)
        tr, frozen = split_params(state.params, trainable)
        if num_microbatches == 1:
            (_, sums), grads = grad_fn(tr, frozen, batch, weights, factor, rng)
        else:
            k = num_microbatches

            def to_micro(x):  # row r goes to microbatch r % k: shards stay on their devices
                return x.reshape((x.shape[0] // k, k) + x.shape[1:]).swapaxes(0, 1)

            micro = jax.tree.map(to_micro, (batch, weights))

            def body(carry, inputs):
                i, (mb, w) = inputs
                (_, s), g = grad_fn(tr, frozen, mb, w, factor, jax.random.fold_in(rng, i))
                return (_tree_add(carry[0], g), _tree_add(carry[1], s)), None

            zero_sums = {n: jnp.zeros((), jnp.float32) for n in ("loss_sum", "z_loss_sum", "num_tokens", "correct")}
            init = (jax.tree.map(jnp.zeros_like, tr), zero_sums)
            (grads, sums), _ = jax.lax.scan(body, init, (jnp.arange(k), micro))
        if extra_loss is not None:
            extra, extra_grads = jax.value_and_grad(lambda t: extra_loss(merge_params(t, frozen), aux))(tr)
            grads = _tree_add(grads, extra_grads)
        opt_state = optim.set_learning_rate(state.opt_state, lr)
        updates, opt_state = optimizer.update(grads, opt_state, tr)
        new_tr = optax.apply_updates(tr, updates)
        metrics = {
            "loss": sums["loss_sum"] / factor,
            "z_loss": sums["z_loss_sum"] / factor,
            "accuracy": sums["correct"] / jnp.maximum(sums["num_tokens"], 1.0),
            "num_tokens": sums["num_tokens"],
            "learning_rate": jnp.asarray(lr, jnp.float32),
            "grad_norm": optax.global_norm(grads),
        }
        if extra_loss is not None:
            metrics["extra_loss"] = jnp.asarray(extra, jnp.float32)
        new_state = state.replace(step=state.step + 1, params=merge_params(new_tr, frozen), opt_state=opt_state)
        return new_state, metrics

    return train_step


def make_eval_step(apply_fn: Callable, loss_cfg: LossConfig = LossConfig()) -> Callable:
    """`eval_step(params, batch) -> sums` (loss/z-loss/token/correct sums, no dropout).

    Per-token loss over a dataset is `sum(loss_sum) / sum(num_tokens)`.
    """
    def eval_step(params, batch):
        batch = model_batch(batch)
        weights = losses.loss_weights(batch, "per_token")
        logits = apply_fn(params, batch, jax.random.PRNGKey(0), False)
        return losses.weighted_sums(logits, batch, weights, loss_cfg.z_loss, loss_cfg.label_smoothing)

    return eval_step
