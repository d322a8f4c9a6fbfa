"""Dropout for flanx's T5: flax's `nn.Dropout` masks, computed so that XLA fuses them.

`nn.Dropout` draws its mask with `jax.random.bernoulli`, whose Threefry-2x32 hash
JAX lowers on CPU as a rolled loop of five iterations over the whole counter
array: every iteration reads and writes two uint32 arrays of the activation's
size, and none of it fuses with the dropout itself (about 70 ms for one
[8, 512, 1024] activation, forward and backward, on one core here). `Dropout`
below computes the same hash (Threefry-2x32, 20 rounds, JAX's key schedule and
rotations; `threefry2x32` equals `jax.extend.random.threefry2x32_p` bit for bit)
as straight-line uint32 arithmetic, which XLA fuses with the comparison and the
select into one vectorised loop (about 6 ms for the same activation).

The masks are the ones `nn.Dropout` draws for the same key, bit for bit, under
JAX's default `jax_threefry_partitionable=True` (random bits = the two hash words
of the element's flat index XORed; kept where `bits >> 9`, read as a float in
[0, 1), is below the keep probability). So results and checkpoints do not
change. With other PRNG implementations or settings `Dropout` falls back to
`jax.random.bernoulli`, the same path as `nn.Dropout`.
"""
from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))
_PARITY = np.uint32(0x1BD11BDA)


def _rotl(x, r: int):
    return (x << np.uint32(r)) | (x >> np.uint32(32 - r))


def threefry2x32(k0, k1, x0, x1):
    """The Threefry-2x32 block cipher (20 rounds) of counters (x0, x1) under key (k0, k1);
    uint32 arrays in, a pair of uint32 arrays out."""
    keys = (k0, k1, k0 ^ k1 ^ _PARITY)
    x0, x1 = x0 + keys[0], x1 + keys[1]
    for block in range(5):
        for r in _ROTATIONS[block % 2]:
            x0 = x0 + x1
            x1 = _rotl(x1, r) ^ x0
        x0 = x0 + keys[(block + 1) % 3]
        x1 = x1 + keys[(block + 2) % 3] + np.uint32(block + 1)
    return x0, x1


def _threefry_key_words(rng):
    """The two uint32 words of a threefry key (raw uint32[2] or a typed key), else None."""
    if jnp.issubdtype(rng.dtype, jax.dtypes.prng_key):
        if str(jax.random.key_impl(rng)) != "threefry2x32":
            return None
        rng = jax.random.key_data(rng)
    return (rng[0], rng[1]) if rng.shape == (2,) and rng.dtype == jnp.uint32 else None


def keep_mask(rng, keep_prob: float, shape) -> jax.Array:
    """`jax.random.bernoulli(rng, keep_prob, shape)`, computed as one fusible expression."""
    size = math.prod(shape)
    words = _threefry_key_words(rng)
    if words is None or size >= 2**32 or not jax.config.jax_threefry_partitionable:
        return jax.random.bernoulli(rng, keep_prob, shape)
    counters = lax.iota(jnp.uint32, size).reshape(shape)  # the element's flat index (high word 0)
    hi, lo = threefry2x32(words[0], words[1], jnp.zeros_like(counters), counters)
    # bernoulli: uniform < p, uniform = (bits >> 9) * 2**-23 exactly; p rounded to float32 first.
    threshold = math.ceil(float(np.float32(keep_prob)) * 2**23)
    return ((hi ^ lo) >> np.uint32(9)) < np.uint32(threshold)


def dropout(x, rate: float, rng):
    """Zero each element of `x` with probability `rate` and scale the rest by 1 / (1 - rate)."""
    if rate == 0.0:
        return x
    if rate == 1.0:
        return jnp.zeros_like(x)
    keep_prob = 1.0 - rate
    return lax.select(keep_mask(rng, keep_prob, x.shape), x / keep_prob, jnp.zeros_like(x))


class Dropout(nn.Module):
    """`nn.Dropout(rate)` for flanx (same masks; see the module docstring)."""

    rate: float

    @nn.compact
    def __call__(self, x, deterministic: bool):
        if deterministic or self.rate == 0.0:
            return x
        return dropout(x, self.rate, self.make_rng("dropout"))
