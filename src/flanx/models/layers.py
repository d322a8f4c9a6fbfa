"""T5 building blocks in Flax linen: dense, embedding, RMSNorm, relative position
bias, attention (with a KV cache for decoding), the MLP, and the encoder and
decoder layers.

Conventions (see docs/architecture.md): parameters are float32 and created
with their T5X logical axis names; activations run in `config.dtype`; dense
kernels are 2-D `[in, out]` with attention heads joined; no biases anywhere.
T5 does not scale attention logits by 1/sqrt(head_dim) (that factor lives in
the query initialisation). Each stack folds its boolean mask (padding,
causality, packing segments) into the relative position bias once
(`attention_bias`), so every layer's attention is `softmax(q.k + bias) v`
with a single additive bias (`dot_product_attention`). A `Dense` named in
`config.lora.targets` adds a LoRA adapter (`lora_delta`; the tree operations
on adapters live in `flanx.models.lora`).
"""
from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from flanx.models.config import T5Config
from flanx.models.dropout import Dropout

LORA_PARAM_NAMES = ("lora_a", "lora_b")  # beside the kernel of a LoRA-adapted Dense


def activation_dtype(config: T5Config):
    return jnp.bfloat16 if config.dtype == "bfloat16" else jnp.float32


def _fan_in_normal(scale: float = 1.0):
    return nn.initializers.variance_scaling(scale, "fan_in", "truncated_normal")


def lora_delta(module: nn.Module, x, features: int, axes: tuple, lora, deterministic: bool):
    """Create (or read) `lora_a`/`lora_b` on `module` and return the adapter's output for `x`."""
    in_features = x.shape[-1]
    a = module.param("lora_a", nn.with_logical_partitioning(
        nn.initializers.normal(stddev=in_features ** -0.5), (axes[0], None)),
        (in_features, lora.rank), jnp.float32)
    b = module.param("lora_b", nn.with_logical_partitioning(
        nn.initializers.zeros_init(), (None, axes[1])), (lora.rank, features), jnp.float32)
    if lora.dropout > 0.0:
        x = nn.Dropout(rate=lora.dropout, name="lora_dropout")(x, deterministic=deterministic)
    return (x @ a.astype(x.dtype)) @ (b * lora.scale).astype(x.dtype)


class Dense(nn.Module):
    """`x @ kernel` with a 2-D float32 kernel `[in, features]`, optionally LoRA-adapted.

    LoRA applies when `config.lora` names this module (`query`, `value`, ...).
    """

    features: int
    axes: tuple
    config: T5Config
    kernel_init: callable = _fan_in_normal()
    deterministic: bool = True

    @nn.compact
    def __call__(self, x):
        kernel = self.param("kernel", nn.with_logical_partitioning(self.kernel_init, self.axes),
                            (x.shape[-1], self.features), jnp.float32)
        # A 2-D [rows, in] @ [in, out] matmul: its gradients are plain transposed GEMMs. Left
        # 3-D, XLA's CPU backend contracts over (batch, length) in the kernel gradient through
        # transposing copies fused into the elementwise producers (1.5x slower MLP forward +
        # backward here). On accelerators the reshape is free.
        rows = x.reshape(-1, x.shape[-1])
        y = rows @ kernel.astype(x.dtype)
        lora = self.config.lora
        if lora is not None and self.name in lora.targets:
            y = y + lora_delta(self, rows, self.features, self.axes, lora, self.deterministic)
        return y.reshape(x.shape[:-1] + (self.features,))


class Embed(nn.Module):
    """The token embedding `[vocab, d_model]`, shared by encoder, decoder and tied logits."""

    config: T5Config

    def setup(self):
        cfg = self.config
        self.embedding = self.param(
            "embedding", nn.with_logical_partitioning(nn.initializers.normal(1.0), ("vocab", "embed")),
            (cfg.vocab_size, cfg.d_model), jnp.float32)

    def __call__(self, tokens):
        return jnp.take(self.embedding, tokens, axis=0).astype(activation_dtype(self.config))

    def attend(self, x):
        rows = x.reshape(-1, x.shape[-1])
        logits = rows @ self.embedding.T.astype(x.dtype)
        return logits.reshape(x.shape[:-1] + (logits.shape[-1],))


class RMSNorm(nn.Module):
    """T5 layer norm: scale * x / sqrt(mean(x^2) + eps), no mean subtraction, no bias."""

    config: T5Config

    @nn.compact
    def __call__(self, x):
        x32 = x.astype(jnp.float32)
        var = jnp.mean(jnp.square(x32), axis=-1, keepdims=True)
        y = x32 * lax.rsqrt(var + self.config.layer_norm_epsilon)
        scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones_init(), ("embed",)),
                           (x.shape[-1],), jnp.float32)
        return (y * scale).astype(activation_dtype(self.config))


def relative_position_bucket(relative_position, bidirectional: bool, num_buckets: int,
                             max_distance: int):
    """T5's bucketing of `key_position - query_position`: exact near zero, log-spaced further out."""
    rel = relative_position.astype(jnp.int32)
    bucket = jnp.zeros_like(rel)
    if bidirectional:
        num_buckets //= 2
        bucket = bucket + (rel > 0).astype(jnp.int32) * num_buckets
        rel = jnp.abs(rel)
    else:
        rel = -jnp.minimum(rel, 0)
    max_exact = num_buckets // 2
    is_small = rel < max_exact
    log_ratio = jnp.log(jnp.maximum(rel, 1).astype(jnp.float32) / max_exact)
    large = max_exact + (log_ratio / math.log(max_distance / max_exact)
                         * (num_buckets - max_exact)).astype(jnp.int32)
    large = jnp.minimum(large, num_buckets - 1)
    return bucket + jnp.where(is_small, rel, large)


class RelativePositionBias(nn.Module):
    """Learned per-head bias from bucketed relative positions, shared by a stack's layers."""

    config: T5Config
    bidirectional: bool

    @nn.compact
    def __call__(self, query_positions, key_positions):
        """Positions [B or 1, T] and [B or 1, S] -> float32 bias [B or 1, heads, T, S]."""
        cfg = self.config
        rel = key_positions[:, None, :] - query_positions[:, :, None]
        bucket = relative_position_bucket(rel, self.bidirectional, cfg.relative_attention_num_buckets,
                                          cfg.relative_attention_max_distance)
        table = self.param(
            "rel_embedding", nn.with_logical_partitioning(
                nn.initializers.variance_scaling(1.0, "fan_avg", "uniform"), ("heads", "relpos_buckets")),
            (cfg.num_heads, cfg.relative_attention_num_buckets), jnp.float32)
        return jnp.transpose(jnp.take(table.T, bucket, axis=0), (0, 3, 1, 2))


MASKED = -1.0e9  # finite: a fully masked (padding) row stays finite, as in T5X


def attention_bias(mask, bias=None):
    """One float32 additive bias from a boolean `mask` [B|1, 1, T, S] and an optional
    relative position `bias` [B|1, heads, T, S]: 0 / MASKED where the mask allows / forbids."""
    masked = jnp.where(mask, 0.0, MASKED).astype(jnp.float32)
    return masked if bias is None else bias.astype(jnp.float32) + masked


@jax.custom_jvp
def softmax(logits):
    """Softmax over the last axis whose derivative is written in terms of its output.

    `jax.nn.softmax` (unless `jax_softmax_custom_jvp` is set) is differentiated through
    its `exp / sum`: the backward pass keeps the unnormalised exponentials and a
    broadcast `1 / sum` of the scores' full size besides the probabilities, and runs
    more passes over them. Here the tangent is `y * (dx - sum(y * dx))`, which needs
    only the output `y` (the attention probabilities, which the `probs @ v` backward
    keeps anyway). Same values; in the [B, heads, T, S] attention scores that is two
    fewer score-sized arrays per layer held for the backward pass.
    """
    shifted = logits - lax.stop_gradient(jnp.max(logits, axis=-1, keepdims=True))
    unnormalized = jnp.exp(shifted)
    return unnormalized / jnp.sum(unnormalized, axis=-1, keepdims=True)


@softmax.defjvp
def _softmax_jvp(primals, tangents):
    (logits,), (dlogits,) = primals, tangents
    y = softmax(logits)
    return y, y * (dlogits - jnp.sum(y * dlogits, axis=-1, keepdims=True))


def dot_product_attention(q, k, v, bias):
    """`softmax(q.k + bias) v` per head, unscaled. q [B, T, heads, d], k/v [B, S, heads, d],
    bias float32 broadcastable to [B, heads, T, S]. Logits and softmax are float32, the
    output has q's dtype.

    A plain matmul / softmax / matmul chain (what `jax.nn.dot_product_attention` does on
    its XLA path, minus the separate mask select, which `attention_bias` folded in),
    written on head-major operands, q [B, heads, T, d] @ k [B, heads, d, S] and
    probs @ v [B, heads, S, d], with the head transpose after the second matmul. The
    same products as the `btnh,bsnh->bnts` / `bnts,bsnh->btnh` einsums, but XLA's CPU
    backend then runs `probs @ v` as a library matmul: with the transpose folded into
    the einsum it can fuse that matmul into a loop fusion of its own (a t5_1_1_small
    encoder pass over one 512-token row took 11% longer).
    """
    q = jnp.transpose(q, (0, 2, 1, 3))
    k = jnp.transpose(k, (0, 2, 3, 1))
    v = jnp.transpose(v, (0, 2, 1, 3))
    logits = jnp.matmul(q, k, preferred_element_type=jnp.float32) + bias
    probs = softmax(logits).astype(v.dtype)
    return jnp.transpose(jnp.matmul(probs, v), (0, 2, 1, 3))


class Attention(nn.Module):
    """Multi-head attention with joined-head `query/key/value/out` kernels.

    decode=True keeps a cache, laid out for the per-step matmuls so that a step
    reads it in place (as T5X does): keys as `[B, heads, head_dim, length]`,
    values as `[B, heads, length, head_dim]`. Self-attention writes this step's
    key/value at `decode_position` into `cached_key/cached_value` (the cache
    length is the key length of `bias`); encoder-decoder attention projects the
    encoder output once into `cross_key/cross_value` and reuses it.
    """

    config: T5Config
    cross: bool = False
    decode: bool = False
    deterministic: bool = True

    @nn.compact
    def __call__(self, x, kv, bias, decode_position=None):
        """`bias`: the stack's float32 additive bias from `attention_bias` (its key length
        is the cache length when decoding)."""
        cfg = self.config
        heads, head_dim, inner = cfg.num_heads, cfg.head_dim, cfg.inner_dim

        def dense(name, features, axes, fan_scale):
            return Dense(features, axes, cfg, kernel_init=_fan_in_normal(fan_scale),
                         deterministic=self.deterministic, name=name)

        # T5 folds 1/sqrt(head_dim) into the query initialisation instead of the logits.
        query = dense("query", inner, ("embed", "joined_kv"), 1.0 / head_dim)
        key = dense("key", inner, ("embed", "joined_kv"), 1.0)
        value = dense("value", inner, ("embed", "joined_kv"), 1.0)

        def split(t):
            return t.reshape(t.shape[:2] + (heads, head_dim))

        q = nn.with_logical_constraint(split(query(x)), ("batch", "length", "heads", "kv"))
        if self.decode:
            out = self._cached_attention(q, x, kv, key, value, bias, decode_position, split)
        else:
            k = nn.with_logical_constraint(split(key(kv)), ("batch", "length", "heads", "kv"))
            v = nn.with_logical_constraint(split(value(kv)), ("batch", "length", "heads", "kv"))
            out = dot_product_attention(q, k, v, bias)
        out = out.reshape(out.shape[:2] + (inner,))
        return dense("out", cfg.d_model, ("joined_kv", "embed"), 1.0)(out)

    def _cached_attention(self, q, x, kv, key, value, bias, decode_position, split):
        """One decoding step against the cache: q [B, 1, heads, d] -> [B, 1, heads, d]."""
        key_axes, value_axes = ("batch", "heads", "kv", "length"), ("batch", "heads", "length", "kv")

        def keys(t):  # [B, L, inner] -> [B, heads, d, L]
            return nn.with_logical_constraint(jnp.transpose(split(t), (0, 2, 3, 1)), key_axes)

        def values(t):  # [B, L, inner] -> [B, heads, L, d]
            return nn.with_logical_constraint(jnp.transpose(split(t), (0, 2, 1, 3)), value_axes)

        if self.cross:
            k = self.variable("cache", "cross_key", lambda: keys(key(kv))).value
            v = self.variable("cache", "cross_value", lambda: values(value(kv))).value
        else:
            cfg, length = self.config, bias.shape[-1]
            dtype = activation_dtype(cfg)
            shape_k = (x.shape[0], cfg.num_heads, cfg.head_dim, length)
            shape_v = (x.shape[0], cfg.num_heads, length, cfg.head_dim)
            cached_k = self.variable("cache", "cached_key", jnp.zeros, shape_k, dtype)
            cached_v = self.variable("cache", "cached_value", jnp.zeros, shape_v, dtype)
            cached_k.value = lax.dynamic_update_slice(
                cached_k.value, keys(key(x)).astype(dtype), (0, 0, 0, decode_position))
            cached_v.value = lax.dynamic_update_slice(
                cached_v.value, values(value(x)).astype(dtype), (0, 0, decode_position, 0))
            k, v = cached_k.value, cached_v.value
        q = jnp.transpose(q, (0, 2, 1, 3))  # [B, heads, 1, d]
        logits = jnp.einsum("bnth,bnhs->bnts", q, k, preferred_element_type=jnp.float32) + bias
        probs = softmax(logits).astype(v.dtype)
        return jnp.transpose(jnp.einsum("bnts,bnsh->bnth", probs, v), (0, 2, 1, 3))


_ACTIVATIONS = {
    "gelu": lambda x: jax.nn.gelu(x, approximate=True),  # tanh approximation, HF "gelu_new"
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
    "linear": lambda x: x,
}


class Mlp(nn.Module):
    """T5 MLP: product of activated `wi_k` projections (or a single `wi`), dropout, `wo`."""

    config: T5Config
    deterministic: bool = True

    @nn.compact
    def __call__(self, x):
        cfg = self.config
        acts = cfg.mlp_activations
        h = None
        for i, act in enumerate(acts):
            name = "wi" if len(acts) == 1 else f"wi_{i}"
            y = _ACTIVATIONS[act](Dense(cfg.d_ff, ("embed", "mlp"), cfg,
                                        deterministic=self.deterministic, name=name)(x))
            h = y if h is None else h * y
        h = nn.with_logical_constraint(h, ("batch", "length", "mlp"))
        h = Dropout(cfg.dropout_rate)(h, deterministic=self.deterministic)
        return Dense(cfg.d_model, ("mlp", "embed"), cfg, deterministic=self.deterministic,
                     name="wo")(h)


def _residual(module, x, h):
    h = Dropout(module.config.dropout_rate)(h, deterministic=module.deterministic)
    return nn.with_logical_constraint(x + h, ("batch", "length", "embed"))


class EncoderLayer(nn.Module):
    """Pre-norm self-attention then MLP, each with dropout and a residual connection."""

    config: T5Config
    deterministic: bool = True
    scanned: bool = False

    @nn.compact
    def __call__(self, x, bias):
        cfg, det = self.config, self.deterministic
        h = RMSNorm(cfg, name="pre_attention_layer_norm")(x)
        h = Attention(cfg, deterministic=det, name="attention")(h, h, bias)
        x = _residual(self, x, h)
        h = Mlp(cfg, deterministic=det, name="mlp")(RMSNorm(cfg, name="pre_mlp_layer_norm")(x))
        x = _residual(self, x, h)
        return (x, None) if self.scanned else x


class DecoderLayer(nn.Module):
    """Pre-norm causal self-attention, encoder-decoder attention, then MLP."""

    config: T5Config
    deterministic: bool = True
    decode: bool = False
    scanned: bool = False

    @nn.compact
    def __call__(self, x, self_bias, encoded, cross_bias, decode_position=None):
        cfg, det = self.config, self.deterministic
        h = RMSNorm(cfg, name="pre_self_attention_layer_norm")(x)
        h = Attention(cfg, decode=self.decode, deterministic=det, name="self_attention")(
            h, h, self_bias, decode_position)
        x = _residual(self, x, h)
        h = RMSNorm(cfg, name="pre_cross_attention_layer_norm")(x)
        h = Attention(cfg, cross=True, decode=self.decode, deterministic=det,
                      name="encoder_decoder_attention")(h, encoded, cross_bias)
        x = _residual(self, x, h)
        h = Mlp(cfg, deterministic=det, name="mlp")(RMSNorm(cfg, name="pre_mlp_layer_norm")(x))
        x = _residual(self, x, h)
        return (x, None) if self.scanned else x
