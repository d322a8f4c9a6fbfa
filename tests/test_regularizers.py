"""L2-SP and EWC penalties, the diagonal Fisher, and the train step's extra-loss hook."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flanx.train import regularizers as reg


def _tree(seed: int):
    rng = np.random.default_rng(seed)
    return {"a": {"kernel": rng.normal(size=(3, 4)).astype(np.float32)},
            "b": {"scale": rng.normal(size=(4,)).astype(np.float32)}}


def _plus(tree, eps: float, seed: int = 7):
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda x: x + eps * rng.normal(size=x.shape).astype(np.float32), tree)


def test_l2_sp_and_ewc_are_zero_at_the_base_and_grow_quadratically_away():
    base = _tree(0)
    fisher = jax.tree.map(lambda x: np.abs(x) + 0.1, _tree(1))
    l2 = reg.l2_sp_loss(base, coef=0.3)
    ewc = reg.ewc_loss(base, fisher, coef=0.3)
    for loss in (l2, ewc):
        assert float(loss.fn(base, loss.aux)) == 0.0
        values = [float(loss.fn(_plus(base, eps), loss.aux)) for eps in (0.01, 0.02, 0.04)]
        assert 0 < values[0] < values[1] < values[2]
        # The same direction at twice the distance: four times the penalty.
        assert values[1] / values[0] == pytest.approx(4.0, rel=1e-4)
        assert values[2] / values[1] == pytest.approx(4.0, rel=1e-4)


def test_penalties_match_their_formulas():
    base, moved = _tree(0), _tree(3)
    fisher = jax.tree.map(lambda x: np.abs(x), _tree(1))
    flat = lambda t: np.concatenate([np.ravel(x) for x in jax.tree.leaves(t)]).astype(np.float64)  # noqa: E731
    diff = flat(moved) - flat(base)
    l2 = reg.l2_sp_loss(base, coef=2.5)
    ewc = reg.ewc_loss(base, fisher, coef=2.5)
    assert float(l2.fn(moved, l2.aux)) == pytest.approx(1.25 * np.sum(diff ** 2), rel=1e-5)
    assert float(ewc.fn(moved, ewc.aux)) == pytest.approx(1.25 * np.sum(flat(fisher) * diff ** 2), rel=1e-5)
    # A uniform Fisher of ones is L2-SP.
    ones = jax.tree.map(np.ones_like, base)
    ewc1 = reg.ewc_loss(base, ones, coef=2.5)
    assert float(ewc1.fn(moved, ewc1.aux)) == pytest.approx(float(l2.fn(moved, l2.aux)), rel=1e-6)
    # Parameters outside the reference (LoRA adapters) are ignored; a missing one is an error.
    with_extra = {**moved, "lora": {"lora_a": np.ones((2, 2), np.float32)}}
    assert float(l2.fn(with_extra, l2.aux)) == pytest.approx(float(l2.fn(moved, l2.aux)))
    with pytest.raises(ValueError, match="a/kernel"):
        l2.fn({"b": moved["b"]}, l2.aux)


def test_penalty_jits_with_the_coefficient_as_an_argument():
    base, moved = _tree(0), _tree(3)
    fn = jax.jit(reg.l2_sp)
    a = fn(moved, {"base": base, "coef": np.float32(1.0)})
    b = fn(moved, {"base": base, "coef": np.float32(3.0)})  # same shapes: no retrace needed
    assert float(b) == pytest.approx(3 * float(a), rel=1e-6)
    assert fn._cache_size() == 1


def _linear_loglik(params, batch):
    """A toy model: log-softmax of x @ W over 3 classes, the label's log-probability per example."""
    logits = batch["x"] @ params["w"]
    return jnp.take_along_axis(jax.nn.log_softmax(logits), batch["y"][:, None], axis=-1)[:, 0]


def test_diagonal_fisher_is_the_mean_squared_per_example_gradient():
    rng = np.random.default_rng(0)
    params = {"w": rng.normal(size=(4, 3)).astype(np.float32)}
    batches = [{"x": rng.normal(size=(5, 4)).astype(np.float32), "y": rng.integers(0, 3, size=5).astype(np.int32)}
               for _ in range(2)]
    got = reg.diagonal_fisher(_linear_loglik, params, batches, normalize=False)
    # Reference: the analytic per-example gradient of log softmax(x W)[y]: x (onehot(y) - p)^T.
    sq, n = np.zeros((4, 3)), 0
    for b in batches:
        for x, y in zip(b["x"].astype(np.float64), b["y"]):
            z = x @ params["w"].astype(np.float64)
            p = np.exp(z - z.max())
            p /= p.sum()
            g = np.outer(x, np.eye(3)[y] - p)
            sq += g ** 2
            n += 1
    np.testing.assert_allclose(got["w"], sq / n, rtol=1e-4, atol=1e-7)
    normalized = reg.diagonal_fisher(_linear_loglik, params, batches)
    assert float(np.mean(normalized["w"])) == pytest.approx(1.0, rel=1e-5)
    np.testing.assert_allclose(normalized["w"], got["w"] / np.mean(got["w"]), rtol=1e-5)


def _toy_step(extra_loss, num_microbatches=1):
    import optax

    from flanx.train import step as step_lib
    from flanx.train.config import LossConfig

    vocab = 5

    def apply(params, batch, rng, enable_dropout):  # logits from a per-token embedding lookup
        return params["emb"][batch["decoder_input_tokens"]] @ params["out"]

    rng = np.random.default_rng(0)
    params = {"emb": rng.normal(size=(vocab, 4)).astype(np.float32),
              "out": rng.normal(size=(4, vocab)).astype(np.float32)}
    tokens = rng.integers(1, vocab, size=(4, 6)).astype(np.int32)
    batch = {"decoder_input_tokens": tokens, "decoder_target_tokens": np.roll(tokens, -1, axis=1),
             "encoder_input_tokens": tokens, "decoder_loss_weights": np.ones_like(tokens)}
    sgd = optax.inject_hyperparams(optax.sgd)(learning_rate=1.0)  # the step sets the rate it schedules
    fn = step_lib.make_train_step(apply, sgd, lambda s: 1.0, LossConfig(z_loss=0.0), num_microbatches,
                                  extra_loss=extra_loss.fn if extra_loss else None)
    state = step_lib.init_state(params, sgd, None, seed=0)
    return fn, state, batch, params


def test_train_step_adds_the_extra_loss_gradient_once():
    base = _plus(_toy_step(None)[3], 0.3)
    penalty = reg.l2_sp_loss(base, coef=0.7)
    plain, state, batch, params = _toy_step(None)
    new_plain, m_plain = jax.jit(plain)(state, batch)
    for k in (1, 2):
        with_extra, state, batch, params = _toy_step(penalty, num_microbatches=k)
        new, metrics = jax.jit(with_extra)(state, batch, penalty.aux)
        # SGD with lr 1: the update is minus the gradient, so the difference is the penalty's gradient.
        grad_penalty = jax.grad(lambda p: penalty.fn(p, penalty.aux))(params)
        for path in (("emb",), ("out",)):
            got = np.asarray(new.params[path[0]]) - np.asarray(new_plain.params[path[0]])
            np.testing.assert_allclose(got, -np.asarray(grad_penalty[path[0]]), rtol=1e-4, atol=1e-5)
        assert float(metrics["extra_loss"]) == pytest.approx(float(penalty.fn(params, penalty.aux)), rel=1e-5)
        assert float(metrics["loss"]) == pytest.approx(float(m_plain["loss"]), rel=1e-5)  # the task loss alone
    assert "extra_loss" not in m_plain


@pytest.mark.slow
def test_trainer_applies_an_extra_loss_and_logs_it(tmp_path):
    from flanx.models import get_config, init_params
    from flanx.train import trainer
    from flanx.train.config import OptimizerConfig, TrainConfig
    from flanx.train.synthetic import SyntheticBatches
    from flanx.train.writers import read_metrics

    model = get_config("tiny", d_model=32, head_dim=8, d_ff=64)
    base = jax.tree.map(np.asarray, init_params(model, jax.random.PRNGKey(0)))

    def run(extra, name):
        cfg = TrainConfig(train_steps=6, batch_size=4, model_dir=str(tmp_path / name), log_every=3,
                          optimizer=OptimizerConfig(name="adamw", learning_rate=3e-2))
        result = trainer.train(cfg, model, lambda s: SyntheticBatches(s, 16, 8, vocab_size=64), init_params=base,
                               extra_loss=extra)
        moved = sum(float(np.sum((np.asarray(p) - b) ** 2))
                    for p, b in zip(jax.tree.leaves(result.params), jax.tree.leaves(base)))
        return moved, read_metrics(str(tmp_path / name), "train")

    free, free_rows = run(None, "free")
    held, held_rows = run(reg.l2_sp_loss(base, coef=1e4), "held")
    assert held < 0.5 * free  # a strong pull toward the base keeps the weights near it
    assert all("extra_loss" in r for r in held_rows) and not any("extra_loss" in r for r in free_rows)
    assert held_rows[-1]["extra_loss"] > 0
