"""The T5 encoder-decoder (`Transformer`), parameter init and logical axes.

`Transformer(config)` follows docs/architecture.md: `__call__` returns float32
logits `[B, T, vocab]`; `encode` and `decode` expose the two halves (decode
with `decode=True` runs one incremental step against a KV cache, see
`flanx.models.decoding`). Packed batches pass segment ids and positions:
attention stays inside a segment and relative positions come from positions.

`init_params(config, rng)` returns plain (unboxed) float32 params;
`param_axes(config)` the same tree with a tuple of logical axis names per leaf.
With `scan_layers` the layers' params sit under `layers` with the layer axis at
position 1; `flanx.checkpoints.stack_layers` / `unstack_layers` convert
existing params between that and the per-layer layout (`layers_{i}`).
"""
from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from flanx.models.config import T5Config
from flanx.models.dropout import Dropout
from flanx.models.layers import (DecoderLayer, Dense, Embed, EncoderLayer, RMSNorm,
                                 RelativePositionBias, attention_bias)

_REMAT_POLICIES = {
    "full": None,
    "dots_saveable": jax.checkpoint_policies.dots_saveable,
}


def _stack(layer_cls, config: T5Config, num_layers: int, num_broadcast: int, **kw):
    """One module applying `num_layers` copies of `layer_cls`: scanned, or a list of layers_{i}."""
    use_remat = config.remat_policy != "none" and not kw.get("decode", False)
    if use_remat:
        layer_cls = nn.remat(layer_cls, policy=_REMAT_POLICIES[config.remat_policy],
                             prevent_cse=not config.scan_layers)
    if config.scan_layers:
        scanned = nn.scan(layer_cls, variable_axes={"params": 1, "cache": 1},
                          split_rngs={"params": True, "dropout": True},
                          in_axes=(nn.broadcast,) * num_broadcast, length=num_layers,
                          metadata_params={nn.PARTITION_NAME: "layers"})
        layer = scanned(config, scanned=True, name="layers", **kw)
        return lambda x, *args: layer(x, *args)[0]
    layers = [layer_cls(config, name=f"layers_{i}", **kw) for i in range(num_layers)]

    def run(x, *args):
        for layer in layers:
            x = layer(x, *args)
        return x
    return run


def _default_positions(tokens, positions):
    if positions is not None:
        return positions
    return jnp.arange(tokens.shape[1], dtype=jnp.int32)[None, :]


class Encoder(nn.Module):
    config: T5Config
    shared_embedding: nn.Module

    @nn.compact
    def __call__(self, tokens, segment_ids=None, positions=None, enable_dropout=False):
        cfg, det = self.config, not enable_dropout
        positions = _default_positions(tokens, positions)
        bias = RelativePositionBias(cfg, bidirectional=True, name="relpos_bias")(positions, positions)
        key_ok = tokens > 0
        mask = key_ok[:, None, None, :]
        if segment_ids is not None:
            mask = mask & (segment_ids[:, :, None] == segment_ids[:, None, :])[:, None]
        x = self.shared_embedding(tokens)
        x = Dropout(cfg.dropout_rate)(x, deterministic=det)
        x = nn.with_logical_constraint(x, ("batch", "length", "embed"))
        bias = attention_bias(mask, bias)
        x = _stack(EncoderLayer, cfg, cfg.num_encoder_layers, 1, deterministic=det)(x, bias)
        x = RMSNorm(cfg, name="encoder_norm")(x)
        return Dropout(cfg.dropout_rate)(x, deterministic=det)


class Decoder(nn.Module):
    config: T5Config
    shared_embedding: nn.Module

    @nn.compact
    def __call__(self, encoded, encoder_tokens, tokens, encoder_segment_ids=None,
                 segment_ids=None, positions=None, enable_dropout=False, decode=False,
                 max_decode_length=None):
        cfg, det = self.config, not enable_dropout
        relpos = RelativePositionBias(cfg, bidirectional=False, name="relpos_bias")
        cross_mask = (encoder_tokens > 0)[:, None, None, :]
        decode_position = None
        if decode:
            if positions is None or max_decode_length is None:
                raise ValueError("decode=True needs decoder_positions [B, 1] and max_decode_length")
            key_positions = jnp.arange(max_decode_length, dtype=jnp.int32)[None, :]
            self_bias = relpos(positions, key_positions)
            self_mask = (key_positions[:, None, :] <= positions[:, :, None])[:, None]
            decode_position = positions[0, 0]  # rows decode in lockstep
        else:
            positions = _default_positions(tokens, positions)
            self_bias = relpos(positions, positions)
            length = tokens.shape[1]
            self_mask = (jnp.arange(length)[:, None] >= jnp.arange(length)[None, :])[None, None]
            if segment_ids is not None:
                same = segment_ids[:, :, None] == segment_ids[:, None, :]
                self_mask = self_mask & same[:, None]
                cross_mask = cross_mask & (segment_ids[:, :, None]
                                           == encoder_segment_ids[:, None, :])[:, None]
        x = self.shared_embedding(tokens)
        x = Dropout(cfg.dropout_rate)(x, deterministic=det)
        x = nn.with_logical_constraint(x, ("batch", "length", "embed"))
        self_bias = attention_bias(self_mask, self_bias)
        cross_bias = attention_bias(cross_mask)
        x = _stack(DecoderLayer, cfg, cfg.num_decoder_layers, 4, deterministic=det,
                   decode=decode)(x, self_bias, encoded, cross_bias, decode_position)
        x = RMSNorm(cfg, name="decoder_norm")(x)
        x = Dropout(cfg.dropout_rate)(x, deterministic=det)
        if cfg.logits_via_embedding:
            logits = self.shared_embedding.attend(x * cfg.d_model ** -0.5)
        else:
            logits = Dense(cfg.vocab_size, ("embed", "vocab"), cfg, name="logits_dense")(x)
        logits = nn.with_logical_constraint(logits, ("batch", "length", "vocab"))
        return logits.astype(jnp.float32)


class Transformer(nn.Module):
    """T5 / FLAN-T5 encoder-decoder; batch-first int32 token arrays in, float32 logits out."""

    config: T5Config

    def setup(self):
        self.token_embedder = Embed(self.config)
        self.encoder = Encoder(self.config, self.token_embedder)
        self.decoder = Decoder(self.config, self.token_embedder)

    def encode(self, encoder_input_tokens, encoder_segment_ids=None, encoder_positions=None,
               enable_dropout=False):
        return self.encoder(encoder_input_tokens, encoder_segment_ids, encoder_positions,
                            enable_dropout)

    def decode(self, encoded, encoder_input_tokens, decoder_input_tokens, encoder_segment_ids=None,
               decoder_segment_ids=None, decoder_positions=None, enable_dropout=False,
               decode=False, max_decode_length=None):
        if (encoder_segment_ids is None) != (decoder_segment_ids is None):
            raise ValueError("packed batches need both encoder_segment_ids and decoder_segment_ids")
        return self.decoder(encoded, encoder_input_tokens, decoder_input_tokens,
                            encoder_segment_ids, decoder_segment_ids, decoder_positions,
                            enable_dropout, decode, max_decode_length)

    def __call__(self, encoder_input_tokens, decoder_input_tokens, encoder_segment_ids=None,
                 decoder_segment_ids=None, encoder_positions=None, decoder_positions=None,
                 enable_dropout=False):
        encoded = self.encode(encoder_input_tokens, encoder_segment_ids, encoder_positions,
                              enable_dropout)
        return self.decode(encoded, encoder_input_tokens, decoder_input_tokens, encoder_segment_ids,
                           decoder_segment_ids, decoder_positions, enable_dropout)


def _init_variables(config: T5Config, rng):
    tokens = jnp.ones((1, 1), jnp.int32)
    return Transformer(config).init({"params": rng, "dropout": rng}, tokens, tokens)


@functools.partial(jax.jit, static_argnums=0)
def _init_params_jit(config, rng):
    return nn.meta.unbox(_init_variables(config, rng)["params"])


def init_params(config: T5Config, rng) -> dict:
    """Freshly initialised float32 params as a plain nested dict (T5X names)."""
    return _init_params_jit(config, rng)


def param_axes(config: T5Config) -> dict:
    """Params-shaped tree of logical axis name tuples, e.g. ("embed", "joined_kv")."""
    boxed = jax.eval_shape(lambda: _init_variables(config, jax.random.PRNGKey(0)))["params"]
    is_box = lambda x: isinstance(x, nn.Partitioned)  # noqa: E731
    return jax.tree.map(lambda b: tuple(b.names), boxed, is_leaf=is_box)
