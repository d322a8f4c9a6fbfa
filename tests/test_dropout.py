"""flanx's fused dropout: the same hash and the same masks as JAX / flax, so swapping it
in changes no result."""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.extend.random import threefry2x32_p

from flanx.models import dropout as dropout_lib, get_config, init_params, layers, network
from flanx.models.network import Transformer


def test_threefry_matches_jax_primitive():
    key = jax.random.PRNGKey(1234)
    x0 = jnp.arange(3000, dtype=jnp.uint32) * jnp.uint32(2654435761)  # wraps: spread-out counters
    x1 = jnp.arange(3000, dtype=jnp.uint32)
    want = threefry2x32_p.bind(key[0], key[1], x0, x1)
    got = jax.jit(dropout_lib.threefry2x32)(key[0], key[1], x0, x1)
    for w, g in zip(want, got):
        np.testing.assert_array_equal(np.asarray(g), np.asarray(w))


@pytest.mark.parametrize("shape,rate,key", [
    ((8, 37, 64), 0.1, jax.random.PRNGKey(3)),
    ((5,), 0.5, jax.random.PRNGKey(0)),
    ((2, 3, 7, 11), 0.3, jax.random.key(9)),          # typed key
    ((4, 16), 0.999, jax.random.PRNGKey(7)),
])
def test_masks_equal_flax_dropout(shape, rate, key):
    x = jax.random.normal(jax.random.PRNGKey(1), shape)
    want = nn.Dropout(rate).apply({}, x, deterministic=False, rngs={"dropout": key})
    got = jax.jit(lambda x, k: dropout_lib.Dropout(rate).apply({}, x, deterministic=False,
                                                               rngs={"dropout": k}))(x, key)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    dropped = float(np.mean(np.asarray(got) == 0))
    assert abs(dropped - rate) < 4 * np.sqrt(rate * (1 - rate) / x.size) + 1e-9


def test_identity_when_deterministic_or_rate_zero():
    x = jnp.arange(12.0).reshape(3, 4)
    key = {"dropout": jax.random.PRNGKey(0)}
    assert np.array_equal(dropout_lib.Dropout(0.5).apply({}, x, deterministic=True, rngs=key), x)
    assert np.array_equal(dropout_lib.Dropout(0.0).apply({}, x, deterministic=False, rngs=key), x)
    assert not np.asarray(dropout_lib.Dropout(1.0).apply({}, x, deterministic=False, rngs=key)).any()


def test_other_prng_implementation_falls_back_to_bernoulli():
    key = jax.random.key(5, impl="rbg")
    x = jnp.ones((64, 64))
    got = dropout_lib.dropout(x, 0.25, key)
    want = jax.lax.select(jax.random.bernoulli(key, 0.75, x.shape), x / 0.75, jnp.zeros_like(x))
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


@pytest.mark.slow
def test_model_with_dropout_matches_flax_dropout(monkeypatch):
    """Same module names, same RNG streams: the whole model's output with dropout on is
    identical to the one built with `nn.Dropout`."""
    config = get_config("tiny", dropout_rate=0.2)
    params = init_params(config, jax.random.PRNGKey(0))
    tokens = jax.random.randint(jax.random.PRNGKey(1), (2, 9), 2, config.vocab_size)

    def logits():
        return np.asarray(jax.jit(lambda p, t: Transformer(config).apply(
            {"params": p}, t, t, enable_dropout=True, rngs={"dropout": jax.random.PRNGKey(2)}))(params, tokens))

    ours = logits()
    monkeypatch.setattr(layers, "Dropout", nn.Dropout)
    monkeypatch.setattr(network, "Dropout", nn.Dropout)
    np.testing.assert_array_equal(ours, logits())
    deterministic = np.asarray(Transformer(config).apply({"params": params}, tokens, tokens))
    assert not np.allclose(ours, deterministic)  # dropout did act
