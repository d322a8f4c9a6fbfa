"""Study arms: the registry, knob sweeps, each built-in arm's plan, WiSE-FT interpolation."""
from __future__ import annotations

import jax
import numpy as np
import pytest

from flanx.experiments import arms
from flanx.experiments.study_config import StudyConfig
from flanx.models import get_config, init_params

MODEL = get_config("tiny", d_model=32, head_dim=8, d_ff=64)


@pytest.fixture(scope="module")
def base():
    return jax.tree.map(np.asarray, init_params(MODEL, jax.random.PRNGKey(0)))


def _ctx(base, cfg=None, trained=None):
    fisher = jax.tree.map(lambda x: np.full(x.shape, 2.0, np.float32), base)
    return arms.ArmContext(cfg or StudyConfig(), MODEL, base, seed=1, fisher=lambda: fisher,
                           trained=trained or (lambda name: jax.tree.map(lambda x: x + 1.0, base)))


def test_variants_expand_knobs_and_put_evaluation_only_arms_last():
    vs = arms.variants(("wise_ft", "single_task", "replay", "lora"), {"replay": (0.1, 0.5), "wise_ft": (0.0, 0.5)})
    assert [v.name for v in vs] == ["single_task", "replay@0.1", "replay@0.5", "lora@8", "wise_ft@0", "wise_ft@0.5"]
    assert vs[1].knob == "ratio" and vs[3].value == 8  # lora's default rank
    with pytest.raises(ValueError, match=r"StudyConfig.arms: unknown study arm 'replya'; did you mean: replay\?"):
        arms.variants(("replya",), {})
    with pytest.raises(ValueError, match="has no knob"):
        arms.variants(("single_task",), {"single_task": (1,)})
    assert [v.name for v in arms.variants(("single_task",), {"ewc": (1.0,)})] == ["single_task"]
    with pytest.raises(ValueError, match=r"StudyConfig.knobs: unknown study arm 'ecw'; did you mean: ewc\?"):
        arms.variants(("single_task",), {"ecw": (1.0,)})


def test_a_new_arm_is_one_registered_function(base):
    @arms.register_arm("half_lr_test", knob="factor", defaults=(0.5,))
    def half_lr(ctx, factor):
        """Full fine-tune at a fraction of the learning rate."""
        return arms.ArmPlan(ctx.model_config, mixture=ctx.cfg.target_task, init_params=ctx.base,
                            optimizer=ctx.optimizer(ctx.cfg.arm_learning_rate * factor))
    try:
        (variant,) = arms.variants(("half_lr_test",), {})
        plan = arms.ARMS[variant.arm].fn(_ctx(base), variant.value)
        assert variant.name == "half_lr_test@0.5" and plan.trains
        assert plan.optimizer.learning_rate == pytest.approx(StudyConfig().arm_learning_rate / 2)
        assert arms.ARMS["half_lr_test"].description == "Full fine-tune at a fraction of the learning rate."
        with pytest.raises(ValueError, match="already registered"):
            arms.register_arm("half_lr_test")(half_lr)
    finally:
        arms.ARMS.unregister("half_lr_test")


@pytest.mark.slow
def test_training_plans(base):
    ctx = _ctx(base)
    single = arms.ARMS["single_task"].fn(ctx, None)
    assert single.mixture == ctx.cfg.target_task and single.init_params is base and single.extra_loss is None
    assert single.optimizer.name == "adafactor" and single.optimizer.multiply_by_parameter_scale
    assert single.describe() == "adafactor, lr 0.001"

    for name, value, expected in (("l2sp", 0.5, 1.0), ("ewc", 0.5, 2.0)):  # fisher is 2 everywhere
        plan = arms.ARMS[name].fn(ctx, value)
        loss = plan.extra_loss
        assert float(loss.fn(base, loss.aux)) == 0.0
        moved = jax.tree.map(lambda x: x + 0.1, base)
        size = sum(x.size for x in jax.tree.leaves(base))
        assert float(loss.fn(moved, loss.aux)) == pytest.approx(0.5 * value * expected * 0.01 * size, rel=1e-4)
        assert plan.describe().endswith("penalty")

    lora = arms.ARMS["lora"].fn(ctx, 32)
    template = ctx.cfg.lora
    assert lora.model_config.lora.rank == 32 and lora.model_config.lora.alpha == pytest.approx(template.scale * 32)
    assert lora.optimizer.name == "adafactor" and not lora.optimizer.multiply_by_parameter_scale  # same family
    assert lora.optimizer.learning_rate == ctx.cfg.lora_learning_rate
    assert lora.init_params is base  # the trainer gives the base weights fresh adapters (lora.setup)
    assert "no parameter scaling" in lora.describe()

    import flanx.data

    flanx.data.register_all()
    replay = arms.ARMS["replay"].fn(ctx, 0.25)
    assert replay.mixture == f"{ctx.cfg.target_task}_replay_{ctx.cfg.base_mixture}_r0.25"


def test_wise_ft_interpolates_exactly(base):
    rng = np.random.default_rng(0)
    tuned = jax.tree.map(lambda x: (x + rng.normal(size=x.shape)).astype(np.float32), base)
    for a, b in zip(jax.tree.leaves(arms.interpolate(base, tuned, 0.0)), jax.tree.leaves(base)):
        assert np.array_equal(a, b)
    for a, b in zip(jax.tree.leaves(arms.interpolate(base, tuned, 1.0)), jax.tree.leaves(tuned)):
        assert np.array_equal(a, b)
    mid = arms.interpolate(base, tuned, 0.25)
    for m, b, t in zip(jax.tree.leaves(mid), jax.tree.leaves(base), jax.tree.leaves(tuned)):
        np.testing.assert_allclose(m, 0.75 * b + 0.25 * t, rtol=1e-6, atol=1e-6)

    ctx = _ctx(base, trained=lambda name: tuned)
    assert arms.ARMS["wise_ft"].fn(ctx, 0.0).same_as == arms.BASE
    assert arms.ARMS["wise_ft"].fn(ctx, 1.0).same_as == "single_task"
    plan = arms.ARMS["wise_ft"].fn(ctx, 0.5)
    assert not plan.trains and plan.describe() == "none (evaluation only)"
    np.testing.assert_allclose(plan.params["token_embedder"]["embedding"],
                               0.5 * base["token_embedder"]["embedding"] + 0.5 * tuned["token_embedder"]["embedding"],
                               rtol=1e-6)
    with pytest.raises(ValueError, match=r"alpha must be in \[0, 1\]"):
        arms.ARMS["wise_ft"].fn(ctx, 1.5)
