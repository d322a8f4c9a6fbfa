"""Extra training losses that pull weights toward a reference point: L2-SP and EWC, and the Fisher they use.

An `ExtraLoss` is what `flanx.train.trainer.train(..., extra_loss=...)` adds to
the task loss once per step (never per microbatch):

    ExtraLoss(fn, aux, name)      fn(params, aux) -> scalar, jit-friendly, TF-free
                                  aux: a pytree of arrays the loss reads (reference weights,
                                  Fisher, coefficient), passed to the jitted step as an argument
                                  (not baked into the program), so sweeping a coefficient
                                  recompiles nothing

Built-in penalties (`aux["coef"]` is a float32 scalar; sums run over the
parameters in `aux["base"]`, so a tree with extra parameters such as LoRA
adapters is fine):

    l2_sp(params, aux) = coef / 2 * sum (θ - θ_base)²                  (Li et al. 2018, "L2-SP")
    ewc(params, aux)   = coef / 2 * sum F * (θ - θ_base)²              (Kirkpatrick et al. 2017)

Both are zero at the reference weights and grow quadratically away from
them. `diagonal_fisher(loglik_fn, params, batches)` estimates the diagonal
empirical Fisher: the mean over examples of the squared gradient of each
example's target log-likelihood (one example at a time, in a `lax.scan`, so
memory stays that of one gradient). With `normalize=True` it is divided by its
mean over all parameters, so `ewc` with a uniform Fisher equals `l2_sp` and
the two coefficients are on the same scale.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterable

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util


@dataclasses.dataclass(frozen=True)
class ExtraLoss:
    """A loss added to the task loss each step: `fn(params, aux) -> scalar`."""
    fn: Callable[[Any, Any], jax.Array]
    aux: Any
    name: str = "extra_loss"


def _pairs(params, base) -> list[tuple[tuple, jax.Array, jax.Array]]:
    """(path, θ, θ_base) for every parameter of `base` (which `params` must hold)."""
    flat_p = traverse_util.flatten_dict(params)
    flat_b = traverse_util.flatten_dict(base)
    missing = [k for k in flat_b if k not in flat_p]
    if missing:
        raise ValueError(f"penalty reference has parameters the model lacks: {['/'.join(k) for k in missing[:3]]}")
    return [(k, flat_p[k], b) for k, b in flat_b.items()]


def squared_distance(params, base, weights=None) -> jax.Array:
    """sum over `base`'s parameters of w * (θ - θ_base)² (w = 1 without `weights`)."""
    flat_w = traverse_util.flatten_dict(weights) if weights is not None else None
    total = jnp.zeros((), jnp.float32)
    for key, p, b in _pairs(params, base):
        d = jnp.square(p.astype(jnp.float32) - b.astype(jnp.float32))
        if flat_w is not None:
            d = d * flat_w[key].astype(jnp.float32)
        total = total + jnp.sum(d)
    return total


def l2_sp(params, aux) -> jax.Array:
    """coef / 2 * ||θ - θ_base||² over aux['base']'s parameters."""
    return 0.5 * aux["coef"] * squared_distance(params, aux["base"])


def ewc(params, aux) -> jax.Array:
    """coef / 2 * sum F (θ - θ_base)² over aux['base']'s parameters (F = aux['fisher'])."""
    return 0.5 * aux["coef"] * squared_distance(params, aux["base"], aux["fisher"])


def l2_sp_loss(base, coef: float) -> ExtraLoss:
    return ExtraLoss(l2_sp, {"base": base, "coef": np.float32(coef)}, "l2_sp")


def ewc_loss(base, fisher, coef: float) -> ExtraLoss:
    return ExtraLoss(ewc, {"base": base, "fisher": fisher, "coef": np.float32(coef)}, "ewc")


def diagonal_fisher(loglik_fn: Callable, params, batches: Iterable[dict], normalize: bool = True):
    """Diagonal empirical Fisher of `params`: mean over examples of (d log p(y|x) / dθ)².

    `loglik_fn(params, batch) -> [B]` gives each example's target log-likelihood
    (e.g. `lambda p, b: flanx.models.decoding.score(p, model_config, b)`);
    `batches` are unpacked numpy batches (one example per row). Returns host
    float32 arrays shaped like `params`.
    """
    def one_example(p, row):
        return loglik_fn(p, jax.tree.map(lambda x: x[None], row))[0]

    grad_one = jax.grad(one_example)

    @jax.jit
    def batch_sum(p, batch):
        zeros = jax.tree.map(lambda x: jnp.zeros(x.shape, jnp.float32), p)

        def body(acc, row):
            g = grad_one(p, row)
            return jax.tree.map(lambda a, x: a + jnp.square(x.astype(jnp.float32)), acc, g), None

        acc, _ = jax.lax.scan(body, zeros, batch)
        return acc

    total, count = None, 0
    for batch in batches:
        batch = {k: np.asarray(v) for k, v in batch.items()}
        part = batch_sum(params, batch)
        total = part if total is None else jax.tree.map(jnp.add, total, part)
        count += next(iter(batch.values())).shape[0]
    if not count:
        raise ValueError("diagonal_fisher: no examples in `batches`")
    fisher = jax.tree.map(lambda x: x / count, total)
    if normalize:
        leaves = jax.tree.leaves(fisher)
        mean = sum(float(jnp.sum(x)) for x in leaves) / sum(x.size for x in leaves)
        if mean > 0:
            fisher = jax.tree.map(lambda x: x / mean, fisher)
    return jax.tree.map(lambda x: np.asarray(x, np.float32), fisher)
