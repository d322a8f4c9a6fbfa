"""flanx.models: configs and gin files, parameter layout, packing, scan/remat/bf16, no TF import."""
import dataclasses
import functools
import math
import subprocess
import sys

import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flanx import gin_utils, paths
from flanx.checkpoints import stack_layers, unstack_layers
from flanx.models import T5Config, Transformer, get_config, init_params, param_axes
from flanx.models.config import PRESETS

TINY = get_config("tiny", num_heads=3, num_encoder_layers=1, num_decoder_layers=2)


@functools.partial(jax.jit, static_argnames=("cfg", "enable_dropout"))
def _logits(cfg, params, enc, dec, enable_dropout=False, rng=None, **packing):
    rngs = {"dropout": rng} if enable_dropout else None
    return Transformer(cfg).apply({"params": params}, enc, dec, enable_dropout=enable_dropout,
                                  rngs=rngs, **packing)


@pytest.fixture(scope="module")
def tiny_params():
    return init_params(TINY, jax.random.PRNGKey(0))


def _batch(rng, batch=3, enc_len=9, dec_len=6, vocab=TINY.vocab_size):
    enc = rng.integers(2, vocab, size=(batch, enc_len)).astype(np.int32)
    dec = rng.integers(2, vocab, size=(batch, dec_len)).astype(np.int32)
    for i, n in enumerate(range(enc_len, 0, -3)[:batch]):
        enc[i, n:] = 0  # right padding of varying length
    dec[:, 0] = 0
    return jnp.asarray(enc), jnp.asarray(dec)


@gin.configurable
def _model_from_gin(config=gin.REQUIRED):
    return config


MODEL_GINS = sorted((paths.configs_dir() / "models").glob("*.gin"))


@pytest.mark.parametrize("path", MODEL_GINS, ids=lambda p: p.stem)
def test_model_gin_names_its_preset_and_evaluates_to_it(path):
    """A model gin is a delta over the one preset table: it names a preset and repeats no size."""
    text = path.read_text()
    bindings = [line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    assert bindings == ["MODEL_CONFIG = @flanx.get_config()", f"flanx.get_config.name = '{path.stem}'"]
    assert path.stem in PRESETS
    gin.clear_config()
    try:
        gin_utils.parse_gin([str(path)], ["_model_from_gin.config = %MODEL_CONFIG"], finalize=False)
        assert _model_from_gin() == get_config(path.stem)
        # Fields bound on flanx.T5Config override the preset (how runs set dropout and users resize).
        gin_utils.parse_gin([str(path)], ["_model_from_gin.config = %MODEL_CONFIG",
                                          "flanx.T5Config.dropout_rate = 0.25", "flanx.T5Config.d_ff = 96"],
                            finalize=False)
        assert _model_from_gin() == get_config(path.stem, dropout_rate=0.25, d_ff=96)
    finally:
        gin.clear_config()


def test_a_new_size_is_one_registered_entry():
    name = "test_only_size"
    PRESETS.register(name, get_config("tiny", d_model=48, num_heads=3))
    try:
        assert get_config(name).d_model == 48 and name in PRESETS
        with pytest.raises(ValueError, match="already registered"):
            PRESETS.register(name, get_config("tiny"))
        gin.clear_config()
        gin_utils.parse_gin([], ["_model_from_gin.config = %MODEL_CONFIG", "MODEL_CONFIG = @flanx.get_config()",
                                 f"flanx.get_config.name = '{name}'"], finalize=False)
        assert _model_from_gin() == get_config(name)
    finally:
        PRESETS.unregister(name)
        gin.clear_config()


def test_model_gin_lora_example_is_shell_quoted():
    """The LoRA override in the model gins' header, pasted into bash, reaches gin intact and builds LoRA."""
    import re

    text = (paths.configs_dir() / "models" / "tiny.gin").read_text()
    lines = [line[1:].strip() for line in text.splitlines() if line.startswith("#   --gin")]
    command = " ".join(re.sub(r"\\$", "", re.sub(r"\s+#.*$", "", line)).strip() for line in lines)
    out = subprocess.run(["bash", "-c", f"printf '%s\\n' {command}"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    files, bindings, rest = gin_utils.split_gin_args(out.stdout.splitlines())
    assert not files and not rest and len(bindings) == 3
    gin.clear_config()
    try:
        gin_utils.parse_gin(["models/tiny.gin"], ["_model_from_gin.config = %MODEL_CONFIG", *bindings],
                            finalize=False)
        assert _model_from_gin().lora.rank == 32
    finally:
        gin.clear_config()


def test_published_sizes_and_overrides():
    base = get_config("flan_t5_base")
    assert (base.d_model, base.num_heads, base.head_dim, base.d_ff, base.num_encoder_layers,
            base.vocab_size) == (768, 12, 64, 2048, 12, 32128)
    xxl = get_config("t5_1_1_xxl")
    assert (xxl.d_model, xxl.num_heads, xxl.d_ff, xxl.num_decoder_layers) == (4096, 64, 10240, 24)
    assert get_config("t5_small").mlp_activations == ("relu",)
    assert get_config("tiny", dtype="bfloat16").dtype == "bfloat16"
    with pytest.raises(ValueError, match="unknown T5Config fields.*d_modle"):
        get_config("tiny", d_modle=3)
    with pytest.raises(ValueError, match="unknown model config 'tyni'"):
        get_config("tyni")
    with pytest.raises(ValueError, match="remat_policy"):
        get_config("tiny", remat_policy="some")
    assert (paths.configs_dir() / "models" / "tiny.gin").is_file()


def test_param_names_shapes_and_axes(tiny_params):
    cfg = TINY
    shapes = jax.tree.map(lambda x: x.shape, tiny_params)
    inner = cfg.num_heads * cfg.head_dim
    assert shapes["token_embedder"]["embedding"] == (cfg.vocab_size, cfg.d_model)
    assert shapes["encoder"]["relpos_bias"]["rel_embedding"] == (3, 32)
    assert shapes["decoder"]["logits_dense"]["kernel"] == (cfg.d_model, cfg.vocab_size)
    enc0 = shapes["encoder"]["layers_0"]
    assert enc0["attention"]["query"]["kernel"] == (cfg.d_model, inner)
    assert enc0["attention"]["out"]["kernel"] == (inner, cfg.d_model)
    assert enc0["mlp"]["wi_1"]["kernel"] == (cfg.d_model, cfg.d_ff)
    dec1 = shapes["decoder"]["layers_1"]
    assert set(dec1) == {"pre_self_attention_layer_norm", "self_attention", "pre_cross_attention_layer_norm",
                         "encoder_decoder_attention", "pre_mlp_layer_norm", "mlp"}
    assert "layers_1" not in shapes["encoder"] and "layers_1" in shapes["decoder"]
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(tiny_params))
    axes = param_axes(cfg)
    assert jax.tree.structure(jax.tree.map(lambda _: 0, axes, is_leaf=lambda x: isinstance(x, tuple))) \
        == jax.tree.structure(tiny_params)
    assert axes["decoder"]["logits_dense"]["kernel"] == ("embed", "vocab")
    assert axes["encoder"]["relpos_bias"]["rel_embedding"] == ("heads", "relpos_buckets")
    assert axes["decoder"]["layers_0"]["mlp"]["wo"]["kernel"] == ("mlp", "embed")
    # original T5: a single `wi`, no logits_dense (tied embedding)
    orig = jax.eval_shape(lambda: init_params(get_config("t5_small"), jax.random.PRNGKey(0)))
    assert "logits_dense" not in orig["decoder"] and "wi" in orig["encoder"]["layers_0"]["mlp"]
    n = sum(math.prod(x.shape) for x in jax.tree.leaves(orig))
    assert n == 60_506_624  # published t5-small parameter count (vocab 32128)


def test_scan_layout_and_scan_noscan_equivalence(tiny_params):
    rng = np.random.default_rng(0)
    enc, dec = _batch(rng)
    logits = _logits(TINY, tiny_params, enc, dec)
    scan_cfg = dataclasses.replace(TINY, scan_layers=True)
    scanned = stack_layers(tiny_params)
    fresh = jax.eval_shape(lambda: init_params(scan_cfg, jax.random.PRNGKey(0)))
    assert jax.tree.map(lambda x: x.shape, scanned) == jax.tree.map(lambda x: x.shape, fresh)
    assert scanned["decoder"]["layers"]["mlp"]["wi_0"]["kernel"].shape == (64, 2, 128)
    assert param_axes(scan_cfg)["encoder"]["layers"]["attention"]["query"]["kernel"] == \
        ("embed", "layers", "joined_kv")
    scan_logits = _logits(scan_cfg, scanned, enc, dec)
    np.testing.assert_allclose(scan_logits, logits, atol=2e-5)
    back = unstack_layers(scanned)
    assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), back, tiny_params))


def test_padding_does_not_change_logits(tiny_params):
    rng = np.random.default_rng(1)
    enc, dec = _batch(rng, batch=1, enc_len=7)
    enc = enc.at[0, 5:].set(0)
    short = _logits(TINY, tiny_params, enc[:, :5], dec)
    padded = _logits(TINY, tiny_params, jnp.pad(enc, ((0, 0), (0, 6))), dec)
    np.testing.assert_allclose(padded, short, atol=1e-5)


def test_packed_equals_separate(tiny_params):
    """Two examples packed in one row give the same logits as each run alone."""
    rng = np.random.default_rng(2)
    e1, e2 = rng.integers(2, 300, 5), rng.integers(2, 300, 3)
    d1, d2 = np.r_[0, rng.integers(2, 300, 3)], np.r_[0, rng.integers(2, 300, 2)]
    pad = lambda x, n: np.pad(x, (0, n - len(x)))  # noqa: E731
    enc = np.stack([pad(np.r_[e1, e2], 10)])
    dec = np.stack([pad(np.r_[d1, d2], 8)])
    packed = _logits(
        TINY, tiny_params, enc, dec,
        encoder_segment_ids=np.array([pad([1] * 5 + [2] * 3, 10)]),
        decoder_segment_ids=np.array([pad([1] * 4 + [2] * 3, 8)]),
        encoder_positions=np.array([pad(list(range(5)) + list(range(3)), 10)]),
        decoder_positions=np.array([pad(list(range(4)) + list(range(3)), 8)]))
    alone1 = _logits(TINY, tiny_params, e1[None], d1[None])
    alone2 = _logits(TINY, tiny_params, e2[None], d2[None])
    np.testing.assert_allclose(packed[0, :4], alone1[0], atol=2e-5)
    np.testing.assert_allclose(packed[0, 4:7], alone2[0], atol=2e-5)


def test_bfloat16_and_dropout(tiny_params):
    rng = np.random.default_rng(3)
    enc, dec = _batch(rng)
    f32 = _logits(TINY, tiny_params, enc, dec)
    bf16 = _logits(dataclasses.replace(TINY, dtype="bfloat16"), tiny_params, enc, dec)
    assert bf16.dtype == jnp.float32 and np.isfinite(bf16).all()
    assert 0 < float(jnp.abs(bf16 - f32).max()) < 0.25 * float(jnp.abs(f32).max())
    drop_cfg = dataclasses.replace(TINY, dropout_rate=0.3)
    drop = lambda cfg, key: _logits(cfg, tiny_params, enc, dec, True, key)  # noqa: E731
    a, b = drop(drop_cfg, jax.random.PRNGKey(1)), drop(drop_cfg, jax.random.PRNGKey(2))
    assert float(jnp.abs(a - b).max()) > 1e-3
    np.testing.assert_array_equal(a, drop(drop_cfg, jax.random.PRNGKey(1)))


def test_remat_policies_give_the_same_gradients():
    cfg = get_config("tiny", d_model=32, num_heads=2, d_ff=32, num_encoder_layers=1, num_decoder_layers=1)
    params = init_params(cfg, jax.random.PRNGKey(1))
    enc, dec = _batch(np.random.default_rng(4))

    def grads(c, p):
        loss = lambda q: Transformer(c).apply({"params": q}, enc, dec).sum()  # noqa: E731
        assert ("remat" in str(jax.make_jaxpr(loss)(p))) == (c.remat_policy != "none")
        return jax.jit(jax.grad(loss))(p)

    ref = grads(cfg, params)
    for policy, scan in (("full", False), ("dots_saveable", True)):
        c = dataclasses.replace(cfg, remat_policy=policy, scan_layers=scan)
        g = grads(c, stack_layers(params) if scan else params)
        g = unstack_layers(g) if scan else g
        jax.tree.map(lambda x, y: np.testing.assert_allclose(
            x, y, atol=1e-5 * float(np.abs(y).max()) + 1e-6), g, ref)


def test_models_import_without_tensorflow():
    code = ("import sys, flanx.models, flanx.models.decoding, flanx.models.lora; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'seqio')]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_config_is_hashable_static_arg():
    assert hash(get_config("tiny")) == hash(get_config("tiny"))
    assert isinstance(get_config("tiny"), T5Config)


def test_attention_softmax_values_and_derivatives_equal_jax():
    """layers.softmax differentiates through its output only; values, VJPs and JVPs are
    jax.nn.softmax's (masked -1e9 entries included)."""
    from flanx.models import layers

    x = jax.random.normal(jax.random.PRNGKey(0), (2, 3, 5, 7)) * 4.0
    x = x.at[..., -2:].set(-1.0e9)  # masked keys, as attention_bias makes them
    cot = jax.random.normal(jax.random.PRNGKey(1), x.shape)
    tangent = jax.random.normal(jax.random.PRNGKey(2), x.shape)
    ref = lambda t: jax.nn.softmax(t, axis=-1)  # noqa: E731
    np.testing.assert_array_equal(np.asarray(layers.softmax(x)), np.asarray(ref(x)))
    (got,) = jax.vjp(layers.softmax, x)[1](cot)
    (want,) = jax.vjp(ref, x)[1](cot)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(jax.jvp(layers.softmax, (x,), (tangent,))[1]),
                               np.asarray(jax.jvp(ref, (x,), (tangent,))[1]), rtol=1e-5, atol=1e-6)
    assert float(jnp.abs(got[..., -2:]).max()) == 0.0  # no gradient into masked entries
