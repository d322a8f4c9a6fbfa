"""Optimizers, schedules and losses, checked against independent numpy references."""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flanx.train import losses, optim
from flanx.train.config import LossConfig, OptimizerConfig


def _rms(x):
    return np.sqrt(np.mean(np.square(x)))


def _t5x_adafactor_reference(params, grads_seq, lr, min_dim=128, decay_exp=0.8, clip=1.0,
                             eps1=1e-30, eps2=1e-3):
    """T5X's Adafactor update rule, written out in numpy (no momentum, no weight decay)."""
    params = {k: v.astype(np.float64).copy() for k, v in params.items()}
    state = {}
    for step, grads in enumerate(grads_seq):
        decay = 1.0 - (step + 1.0) ** (-decay_exp)
        for name, p in params.items():
            g = grads[name].astype(np.float64)
            g2 = g * g + eps1
            shape = p.shape
            dims = sorted(range(len(shape)), key=lambda i: shape[i])
            factored = len(shape) >= 2 and shape[dims[-2]] >= min_dim
            if factored:
                d1, d0 = dims[-2], dims[-1]  # reduce over d0 for rows (keeps d1)... as in optax
                vr = state.get((name, "r"), np.zeros(np.delete(shape, d0)))
                vc = state.get((name, "c"), np.zeros(np.delete(shape, d1)))
                vr = decay * vr + (1 - decay) * g2.mean(axis=d0)
                vc = decay * vc + (1 - decay) * g2.mean(axis=d1)
                state[(name, "r")], state[(name, "c")] = vr, vc
                row_col_mean = vr.mean(axis=d1 if d1 < d0 else d1 - 1, keepdims=True)
                r = vr / row_col_mean
                v = np.expand_dims(r, d0) * np.expand_dims(vc, d1)
            else:
                v = state.get((name, "v"), np.zeros(shape))
                v = decay * v + (1 - decay) * g2
                state[(name, "v")] = v
            u = g / np.sqrt(v)
            u = u / max(1.0, _rms(u) / clip)
            scale = lr * max(_rms(p), eps2)
            params[name] = p - scale * u
    return params


def test_adafactor_matches_t5x_rule_factored_and_unfactored():
    rng = np.random.default_rng(0)
    params = {"big": rng.normal(size=(256, 160)).astype(np.float32),
              "thin": rng.normal(size=(100, 300)).astype(np.float32) * 1e-4,  # rms < 1e-3 floor
              "vec": rng.normal(size=(64,)).astype(np.float32)}
    grads_seq = [{k: rng.normal(size=v.shape).astype(np.float32) * (i + 1) for k, v in params.items()}
                 for i in range(3)]
    lr = 0.01
    opt = optim.make_optimizer(OptimizerConfig(name="adafactor", learning_rate=lr))
    state = opt.init(params)
    p = {k: jnp.asarray(v) for k, v in params.items()}
    for g in grads_seq:
        state = optim.set_learning_rate(state, lr)
        upd, state = opt.update(g, state, p)
        p = jax.tree.map(jnp.add, p, upd)
    ref = _t5x_adafactor_reference(params, grads_seq, lr)
    for k in params:
        np.testing.assert_allclose(np.asarray(p[k]), ref[k], rtol=2e-5, atol=1e-7, err_msg=k)
    # "big" is factored (two dims >= 128), the others keep full second moments.
    inner = state.inner_state[0]
    assert {inner.v_row["big"].shape, inner.v_col["big"].shape} == {(256,), (160,)}
    assert inner.v["vec"].shape == (64,) and inner.v["thin"].shape == (100, 300)


def test_adamw_one_step_by_value():
    cfg = OptimizerConfig(name="adamw", learning_rate=0.1, weight_decay=0.01)
    opt = optim.make_optimizer(cfg)
    p = {"w": jnp.array([1.0, -2.0])}
    g = {"w": jnp.array([0.5, 0.25])}
    upd, _ = opt.update(g, opt.init(p), p)
    # First Adam step: m_hat = g, v_hat = g^2 -> g / (|g| + eps) = sign(g); plus decoupled decay.
    expected = -0.1 * (np.sign([0.5, 0.25]) * (np.abs([0.5, 0.25]) / (np.abs([0.5, 0.25]) + 1e-8))
                       + 0.01 * np.array([1.0, -2.0]))
    np.testing.assert_allclose(np.asarray(upd["w"]), expected, rtol=2e-5)  # float32 bias correction


def test_learning_rate_is_injected_per_step():
    opt = optim.make_optimizer(OptimizerConfig(name="adamw", learning_rate=1.0))
    p, g = {"w": jnp.ones(3)}, {"w": jnp.ones(3)}
    s = optim.set_learning_rate(opt.init(p), 0.5)
    upd, _ = opt.update(g, s, p)
    np.testing.assert_allclose(np.asarray(upd["w"]), -0.5 * np.ones(3), rtol=2e-5)


@pytest.mark.parametrize("name", ["constant", "rsqrt", "linear", "cosine"])
def test_schedules_by_value(name):
    peak, warm, start, total = 0.01, 10, 100, 150
    cfg = OptimizerConfig(learning_rate=peak, schedule=name, warmup_steps=warm, end_lr_fraction=0.1)
    sched = optim.make_schedule(cfg, start_step=start, total_steps=total)
    for t in (0, 4, 9, 10, 25, 49):
        step = start + t
        ramp = min(1.0, (t + 1) / warm)
        decay_len = (total - start) - warm
        frac = min(max((t - warm) / decay_len, 0.0), 1.0)
        body = {"constant": 1.0,
                "rsqrt": math.sqrt(warm / max(t, warm)),
                "linear": 1.0 - 0.9 * frac,
                "cosine": 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac))}[name]
        assert float(sched(step)) == pytest.approx(peak * ramp * body, rel=1e-5), (name, t)


def test_rsqrt_flat_warmup_is_t5x_shape():
    cfg = OptimizerConfig(learning_rate=0.01, schedule="rsqrt", warmup_steps=10000, linear_warmup=False)
    sched = optim.make_schedule(cfg)
    assert float(sched(0)) == pytest.approx(0.01)
    assert float(sched(40000)) == pytest.approx(1 / math.sqrt(40000))


def test_bad_optimizer_config_names_field():
    with pytest.raises(ValueError, match="schedule='exp'"):
        OptimizerConfig(schedule="exp")
    with pytest.raises(ValueError, match="LOSS_NORMALIZING_FACTOR"):
        LossConfig(normalization=-1.0)


# ------------------------------------------------------------------ losses


def _np_log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_token_losses_by_value(smoothing):
    rng = np.random.default_rng(1)
    v = 7
    logits = rng.normal(size=(2, 3, v)).astype(np.float32) * 3
    targets = rng.integers(1, v, size=(2, 3))
    total, zl = losses.token_losses(jnp.asarray(logits), jnp.asarray(targets), z_loss=1e-4,
                                    label_smoothing=smoothing)
    logp = _np_log_softmax(logits.astype(np.float64))
    q = np.full((2, 3, v), smoothing / (v - 1))
    np.put_along_axis(q, targets[..., None], 1 - smoothing, axis=-1)
    kl = np.sum(q * (np.log(np.where(q > 0, q, 1)) - logp), -1)  # cross-entropy minus entropy
    log_z = np.log(np.exp(logits.astype(np.float64)).sum(-1))
    np.testing.assert_allclose(np.asarray(zl), 1e-4 * log_z ** 2, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(total), kl + 1e-4 * log_z ** 2, rtol=1e-5, atol=1e-6)


def _packed_batch():
    # Row 0: two packed targets (lengths 2 and 3); row 1: one target of length 1.
    targets = np.array([[5, 6, 7, 8, 9, 0], [4, 0, 0, 0, 0, 0]])
    seg = np.array([[1, 1, 2, 2, 2, 0], [1, 0, 0, 0, 0, 0]])
    return {"decoder_target_tokens": targets, "decoder_loss_weights": (targets > 0).astype(np.int32),
            "decoder_segment_ids": seg}


def test_normalizations_by_value():
    b = _packed_batch()
    assert float(losses.normalizing_factor(b, "per_token")) == 6.0
    assert float(losses.normalizing_factor(b, "per_sequence")) == 3.0
    assert float(losses.normalizing_factor(b, "per_batch")) == 2.0
    assert float(losses.normalizing_factor(b, 1234.0)) == 1234.0
    w = np.asarray(losses.loss_weights(b, "per_sequence"))
    np.testing.assert_allclose(w[0], [1 / 2, 1 / 2, 1 / 3, 1 / 3, 1 / 3, 0])
    np.testing.assert_allclose(w[1], [1, 0, 0, 0, 0, 0])
    # Per-sequence loss = mean over sequences of each sequence's mean token loss.
    tok = np.arange(12, dtype=np.float32).reshape(2, 6)
    per_seq = (tok[0, :2].mean() + tok[0, 2:5].mean() + tok[1, :1].mean()) / 3
    assert float(np.sum(tok * w) / 3.0) == pytest.approx(per_seq)
