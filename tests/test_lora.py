"""flanx.models.lora: adapter layout, trainable count and mask, zero-B identity, merging,
frozen base under a masked optimizer, export with adapters merged."""
import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from flanx.checkpoints import stack_layers
from flanx.checkpoints.tree import flatten, unflatten
from flanx.models import LoraConfig, Transformer, get_config, init_params, param_axes
from flanx.models import lora

BASE = get_config("tiny", num_encoder_layers=1, num_decoder_layers=1, dropout_rate=0.0)
LORA = dataclasses.replace(BASE, lora=LoraConfig(rank=4, alpha=8.0))


@functools.partial(jax.jit, static_argnames=("cfg", "enable_dropout"))
def _logits(cfg, params, enc, dec, enable_dropout=False, rng=None):
    return Transformer(cfg).apply({"params": params}, enc, dec, enable_dropout=enable_dropout,
                                  rngs={"dropout": rng} if enable_dropout else None)


def _batch():
    rng = np.random.default_rng(0)
    enc = rng.integers(2, 384, (2, 7)).astype(np.int32)
    enc[1, 4:] = 0
    dec = rng.integers(2, 384, (2, 5)).astype(np.int32)
    dec[:, 0] = 0
    return enc, dec


@pytest.fixture(scope="module")
def base_params():
    return init_params(BASE, jax.random.PRNGKey(0))


def _randomize_b(params, key):
    flat = flatten(params)
    out = {}
    for i, (path, x) in enumerate(sorted(flat.items())):
        out[path] = jax.random.normal(jax.random.fold_in(key, i), x.shape) * 0.5 if path.endswith("lora_b") else x
    return unflatten(out)


def test_flan_t5_base_rank_32_trainable_count():
    cfg = get_config("flan_t5_base", lora=LoraConfig(rank=32, alpha=32.0))
    shapes = jax.eval_shape(lambda: init_params(cfg, jax.random.PRNGKey(0)))
    assert lora.count_trainable(shapes) == 3_538_944
    total = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes))
    assert total - 3_538_944 == 247_577_856  # the untouched FLAN-T5 base model


def test_adapter_layout_and_mask(base_params):
    params = lora.add_lora(base_params, LORA, jax.random.PRNGKey(1))
    flat = flatten(params)
    adapters = sorted(p for p in flat if p.endswith(("lora_a", "lora_b")))
    # q and v in encoder self-, decoder self- and encoder-decoder attention: 3 blocks x 2 x 2
    assert len(adapters) == 12
    assert all(p.split("/")[-2] in ("query", "value") for p in adapters)
    assert flat["decoder/layers_0/encoder_decoder_attention/value/lora_a"].shape == (64, 4)
    assert flat["decoder/layers_0/encoder_decoder_attention/value/lora_b"].shape == (4, 64)
    assert not flat["encoder/layers_0/attention/query/lora_b"].any()
    for p, x in flatten(base_params).items():  # base weights untouched
        np.testing.assert_array_equal(flat[p], x)
    mask = flatten(lora.trainable_mask(params))
    assert {p for p, m in mask.items() if m} == set(adapters)
    assert all(flatten(lora.trainable_mask(base_params)).values())
    axes = flatten(param_axes(LORA), is_leaf=lambda x: isinstance(x, tuple))
    assert axes["encoder/layers_0/attention/query/lora_a"] == ("embed", None)
    assert axes["encoder/layers_0/attention/query/lora_b"] == (None, "joined_kv")
    with pytest.raises(ValueError, match="targets"):
        LoraConfig(targets=("q",))


def test_zero_b_is_base_and_merge_reproduces_lora(base_params):
    enc, dec = _batch()
    params = lora.add_lora(base_params, LORA, jax.random.PRNGKey(1))
    base_logits = _logits(BASE, base_params, enc, dec)
    np.testing.assert_allclose(_logits(LORA, params, enc, dec), base_logits, atol=1e-6)
    trained = _randomize_b(params, jax.random.PRNGKey(2))
    lora_logits = _logits(LORA, trained, enc, dec)
    assert float(jnp.abs(lora_logits - base_logits).max()) > 0.1
    merged = lora.merge_lora(trained, LORA)
    assert not lora.has_lora(merged)
    np.testing.assert_allclose(_logits(BASE, merged, enc, dec), lora_logits, atol=1e-4)
    # scanned layout merges the same way
    scan_lora = dataclasses.replace(LORA, scan_layers=True)
    merged_scan = lora.merge_lora(stack_layers(trained), scan_lora)
    np.testing.assert_allclose(merged_scan["decoder"]["layers"]["self_attention"]["value"]["kernel"][:, 0],
                               merged["decoder"]["layers_0"]["self_attention"]["value"]["kernel"], atol=1e-6)
    with pytest.raises(ValueError, match="config.lora is None"):
        lora.merge_lora(trained, BASE)


def test_lora_dropout_and_frozen_base(base_params):
    enc, dec = _batch()
    cfg = dataclasses.replace(BASE, lora=LoraConfig(rank=4, alpha=8.0, dropout=0.5))
    params = _randomize_b(lora.add_lora(base_params, cfg, jax.random.PRNGKey(1)), jax.random.PRNGKey(3))
    a = _logits(cfg, params, enc, dec, True, jax.random.PRNGKey(0))
    b = _logits(cfg, params, enc, dec, True, jax.random.PRNGKey(1))
    assert float(jnp.abs(a - b).max()) > 1e-3
    np.testing.assert_array_equal(_logits(cfg, params, enc, dec), _logits(cfg, params, enc, dec))

    # the optimizer sees only the adapters: a masked update leaves the base untouched
    labels = jax.tree.map(lambda m: "train" if m else "freeze", lora.trainable_mask(params))
    opt = optax.multi_transform({"train": optax.sgd(0.1), "freeze": optax.set_to_zero()}, labels)
    grads = jax.tree.map(jnp.ones_like, params)
    updates, _ = opt.update(grads, opt.init(params), params)
    before, after = flatten(params), flatten(optax.apply_updates(params, updates))
    changed = {p for p in before if not np.array_equal(before[p], after[p])}
    assert changed == {p for p in before if p.endswith(("lora_a", "lora_b"))}


def test_export_hf_merges_adapters(base_params, tmp_path):
    from flanx.checkpoints.hf import export_hf, import_hf

    enc, dec = _batch()
    trained = _randomize_b(lora.add_lora(base_params, LORA, jax.random.PRNGKey(1)), jax.random.PRNGKey(4))
    export_hf(trained, LORA, tmp_path / "hf")
    params, config = import_hf(tmp_path / "hf")
    assert config.lora is None and config.vocab_size == BASE.vocab_size
    np.testing.assert_allclose(_logits(config, params, enc, dec), _logits(LORA, trained, enc, dec), atol=1e-4)


def test_setup_is_the_one_lora_preparation(base_params):
    """No LoRA: params as given, everything trains. LoRA on base weights: fresh adapters (as add_lora with
    the same key), mask = adapters only. Params that already have adapters (shapes too) keep them."""
    same, mask = lora.setup(base_params, BASE, jax.random.PRNGKey(1))
    assert same is base_params and mask is None
    prepared, mask = lora.setup(base_params, LORA, jax.random.PRNGKey(1))
    expected = flatten(lora.add_lora(base_params, LORA, jax.random.PRNGKey(1)))
    assert set(flatten(prepared)) == set(expected)
    for path, value in flatten(prepared).items():
        np.testing.assert_array_equal(np.asarray(value), np.asarray(expected[path]), err_msg=path)
    trainable = {p for p, m in flatten(mask).items() if m}
    assert trainable == {p for p in expected if p.endswith(("lora_a", "lora_b"))}
    kept, _ = lora.setup(prepared, LORA, jax.random.PRNGKey(7))
    assert kept is prepared
    shapes = jax.eval_shape(lambda: init_params(LORA, jax.random.PRNGKey(0)))
    _, shape_mask = lora.setup(shapes, LORA)
    assert {p for p, m in flatten(shape_mask).items() if m} == trainable
    with pytest.raises(ValueError, match="no LoRA adapters.*rng="):
        lora.setup(base_params, LORA)


def _run_from_gins(run_gin: str):
    """flanx.train as `python -m flanx.train --gin_file=models/tiny.gin --gin_file=RUN_GIN` builds it (LoRA on)."""
    from flanx import entrypoints, gin_utils
    gin_utils.reset()
    try:
        gin_utils.parse_gin(["models/tiny.gin", run_gin],
                            ["MODEL_DIR = '/tmp/never'", "MIXTURE_OR_TASK_NAME = 'x'", "INITIAL_CHECKPOINT_PATH = 'x'",
                             "TRAIN_STEPS = 40", "BATCH_SIZE = 8", "flanx.T5Config.lora = @flanx.LoraConfig()"],
                            finalize=False)
        gin_utils.prepare_macros(read=entrypoints.DIRECT_MACROS["train"])
        return gin_utils.evaluate("flanx.train")
    finally:
        gin_utils.reset()


@pytest.mark.slow
def test_finetune_lora_gin_trains_where_finetune_gin_stalls():
    """runs/finetune_lora.gin (AdamW) moves the loss of zero-initialised adapters clearly within 40 steps;
    runs/finetune.gin's Adafactor with parameter scaling, on the same adapters and data, barely moves it."""
    from flanx.train import trainer
    from flanx.train.synthetic import SyntheticBatches

    drops = {}
    for run_gin in ("runs/finetune.gin", "runs/finetune_lora.gin"):
        run = _run_from_gins(run_gin)
        assert run.model.lora is not None
        base = init_params(run.model.replace(lora=None), jax.random.PRNGKey(0))
        cfg = dataclasses.replace(run.config, model_dir=None)
        result = trainer.train(cfg, run.model, lambda shard: SyntheticBatches(shard, 32, 16, vocab_size=64),
                               init_params=base)
        losses = [result.losses[s] for s in sorted(result.losses)]
        drops[run_gin] = float(np.mean(losses[:5]) - np.mean(losses[-5:]))
    lora_run = _run_from_gins("runs/finetune_lora.gin")
    assert lora_run.config.optimizer.name == "adamw" and lora_run.model.lora.rank == 16
    assert drops["runs/finetune_lora.gin"] > 0.3, drops
    assert abs(drops["runs/finetune.gin"]) < 0.15, drops
@pytest.mark.slow
def test_trainer_resumes_a_lora_run_started_from_base_weights(tmp_path, base_params):
    """A LoRA run given base weights (no adapters) resumes from its checkpoint, adapters and all."""
    from flanx.train import trainer
    from flanx.train.config import OptimizerConfig, TrainConfig
    from flanx.train.synthetic import SyntheticBatches

    base = jax.tree.map(np.asarray, base_params)

    def run(steps):
        cfg = TrainConfig(train_steps=steps, batch_size=2, model_dir=str(tmp_path), checkpoint_period=2,
                          log_every=2, optimizer=OptimizerConfig(name="adamw", learning_rate=1e-2))
        return trainer.train(cfg, LORA, lambda s: SyntheticBatches(s, 8, 4, vocab_size=64), init_params=base)

    first = run(2)
    again = run(2)  # finished: nothing to train, the checkpoint's parameters come back
    more = run(4)   # two more steps from step 2
    assert again.resumed_from == 2 and more.resumed_from == 2 and more.step == 4
    for a, b in zip(jax.tree.leaves(first.params), jax.tree.leaves(again.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert lora.has_lora(more.params)
