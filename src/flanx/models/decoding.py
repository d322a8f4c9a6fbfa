"""Decoding and scoring for flanx's T5: greedy, beam search, sampling, log-likelihoods.

Every function is jit-compiled (config and lengths static), batch-first, and
takes padded `encoder_input_tokens` [B, S] (0 = padding). The decoder starts
from token 0 and runs incrementally against a KV cache (`init_cache` /
`decode_step`): self-attention keys and values are written one position per
step, the encoder-decoder keys and values are projected once.

Outputs are int32 `[B, max_decode_length]` (beam search: `[B, num_beams,
max_decode_length]`, best first), holding the EOS token where a sequence
ended and 0 after it. Decoding stops early once every row has ended.

`score(params, config, batch)` is the per-example sum of target token
log-likelihoods, weighted by `decoder_loss_weights` (or `target > 0`), for
rank classification.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from flanx.models.config import T5Config
from flanx.models.network import Transformer

NEG_INF = -1.0e9  # finite, so arithmetic on dead beams never makes NaNs


def _encode(params, config, encoder_input_tokens):
    return Transformer(config).apply({"params": params}, encoder_input_tokens, method="encode")


def init_cache(params, config: T5Config, encoded, encoder_input_tokens, max_decode_length: int):
    """An empty decoding cache for `encoded` [B, S, d_model] (cross-attention K/V precomputed)."""
    batch = encoded.shape[0]
    zeros = jnp.zeros((batch, 1), jnp.int32)
    _, variables = Transformer(config).apply(
        {"params": params}, encoded, encoder_input_tokens, zeros, decoder_positions=zeros,
        decode=True, max_decode_length=max_decode_length, method="decode", mutable=["cache"])
    return variables["cache"]


def decode_step(params, config: T5Config, cache, encoder_input_tokens, tokens, step,
                max_decode_length: int):
    """Logits [B, vocab] for the next token after `tokens` [B] at position `step`; new cache."""
    positions = jnp.full((tokens.shape[0], 1), step, jnp.int32)
    logits, variables = Transformer(config).apply(
        {"params": params, "cache": cache}, None, encoder_input_tokens, tokens[:, None],
        decoder_positions=positions, decode=True, max_decode_length=max_decode_length,
        method="decode", mutable=["cache"])
    return logits[:, 0], variables["cache"]


def argmax(logits):
    """`jnp.argmax(logits, axis=-1)` (first maximum; first NaN if any), as two plain reductions.

    XLA's CPU backend runs `argmax` as one (value, index) reduction that it does not
    vectorise: over a [50, 32128] logits row block that took 22 ms here against 1.6 ms
    for this max, compare and min; per greedy step at batch 50 that is most of a
    step's non-matmul time.
    """
    top = jnp.max(logits, axis=-1, keepdims=True)
    hit = (logits == top) | jnp.isnan(logits)
    index = lax.broadcasted_iota(jnp.int32, logits.shape, logits.ndim - 1)
    return jnp.min(jnp.where(hit, index, logits.shape[-1]), axis=-1)


def _filter_logits(logits, temperature, top_k, top_p):
    """Scale by 1/temperature, keep the top_k (0: all) and the top_p nucleus (1.0: all).

    All three may be traced values, so one compiled sampler serves every setting.
    """
    logits = logits / jnp.maximum(temperature, 1e-6)
    sorted_logits = jnp.sort(logits, axis=-1)[:, ::-1]
    vocab = logits.shape[-1]
    kth = jnp.take(sorted_logits, jnp.clip(top_k - 1, 0, vocab - 1), axis=-1)[:, None]
    kth = jnp.where(top_k > 0, kth, -jnp.inf)
    # nucleus: the smallest prefix whose mass reaches top_p (always the most likely token)
    cumulative = jnp.cumsum(jax.nn.softmax(sorted_logits, axis=-1), axis=-1)
    keep = jnp.concatenate([jnp.ones_like(cumulative[:, :1], bool), cumulative[:, :-1] < top_p], -1)
    nucleus_min = jnp.min(jnp.where(keep, sorted_logits, jnp.inf), axis=-1, keepdims=True)
    return jnp.where((logits < kth) | (logits < nucleus_min), NEG_INF, logits)


def _decode_loop(params, config, encoder_input_tokens, max_decode_length, eos_id, choose):
    batch = encoder_input_tokens.shape[0]
    encoded = _encode(params, config, encoder_input_tokens)
    cache = init_cache(params, config, encoded, encoder_input_tokens, max_decode_length)

    def cond(state):
        step, _, _, done, _ = state
        return (step < max_decode_length) & ~jnp.all(done)

    def body(state):
        step, out, last, done, cache = state
        logits, cache = decode_step(params, config, cache, encoder_input_tokens, last, step,
                                    max_decode_length)
        token = jnp.where(done, 0, choose(logits, step)).astype(jnp.int32)
        out = lax.dynamic_update_slice(out, token[:, None], (0, step))
        return step + 1, out, token, done | (token == eos_id), cache

    state = (jnp.int32(0), jnp.zeros((batch, max_decode_length), jnp.int32),
             jnp.zeros((batch,), jnp.int32), jnp.zeros((batch,), bool), cache)
    return lax.while_loop(cond, body, state)[1]


@functools.partial(jax.jit, static_argnames=("config", "max_decode_length"))
def greedy_decode(params, config: T5Config, encoder_input_tokens, max_decode_length: int,
                  eos_id: int = 1):
    """Argmax decoding -> int32 [B, max_decode_length]."""
    return _decode_loop(params, config, encoder_input_tokens, max_decode_length, eos_id,
                        lambda logits, step: argmax(logits))


def sample(params, config: T5Config, encoder_input_tokens, rng, max_decode_length: int,
           temperature=1.0, top_k=0, top_p=1.0, eos_id: int = 1):
    """Ancestral sampling with temperature, top-k (0 = off) and nucleus top-p (1.0 = off).

    temperature 0 is greedy decoding. The settings are traced, so changing them
    does not recompile.
    """
    concrete = all(isinstance(v, (int, float)) for v in (temperature, top_k, top_p))
    if concrete and (temperature < 0 or not 0.0 < top_p <= 1.0 or top_k < 0):
        raise ValueError(f"sample: need temperature >= 0, 0 < top_p <= 1, top_k >= 0; got "
                         f"temperature={temperature}, top_p={top_p}, top_k={top_k}")
    return _sample(params, config, encoder_input_tokens, rng, max_decode_length,
                   jnp.float32(temperature), jnp.int32(top_k), jnp.float32(top_p), eos_id)


@functools.partial(jax.jit, static_argnames=("config", "max_decode_length"))
def _sample(params, config, encoder_input_tokens, rng, max_decode_length, temperature, top_k,
            top_p, eos_id):
    def choose(logits, step):
        filtered = _filter_logits(logits, temperature, top_k, top_p)
        drawn = jax.random.categorical(jax.random.fold_in(rng, step), filtered, axis=-1)
        return jnp.where(temperature > 0, drawn, argmax(logits))

    return _decode_loop(params, config, encoder_input_tokens, max_decode_length, eos_id, choose)


def brevity_penalty(alpha: float, length):
    """T5X / GNMT length penalty ((5 + length) / 6) ** alpha."""
    return ((5.0 + length) / 6.0) ** alpha


def _gather_beams(x, beam_indices):
    """x [B, K', ...] -> x[b, beam_indices[b, k]] : [B, K, ...]."""
    return jax.vmap(lambda xb, ib: xb[ib])(x, beam_indices)


@functools.partial(jax.jit, static_argnames=("config", "num_beams", "max_decode_length",
                                             "alpha"))
def beam_search(params, config: T5Config, encoder_input_tokens, num_beams: int,
                max_decode_length: int, alpha: float = 0.6, eos_id: int = 1):
    """Beam search with the T5X length penalty.

    Returns (tokens [B, num_beams, max_decode_length], scores [B, num_beams]),
    best first. A finished sequence scores log p / brevity_penalty(alpha, its
    length incl. EOS); rows where no beam reached EOS return the live beams
    with their raw log-probabilities.
    """
    batch, k = encoder_input_tokens.shape[0], num_beams
    length = max_decode_length
    enc_tokens = jnp.repeat(encoder_input_tokens, k, axis=0)
    encoded = jnp.repeat(_encode(params, config, encoder_input_tokens), k, axis=0)
    cache = init_cache(params, config, encoded, enc_tokens, length)
    best_possible_penalty = brevity_penalty(alpha, length)

    def reorder_cache(cache, origin):
        def take(path, x):
            if any("cross_" in str(getattr(p, "key", "")) for p in path):
                return x  # encoder-decoder K/V are the same for every beam of an example
            x = x.reshape((batch, k) + x.shape[1:])
            return _gather_beams(x, origin).reshape((batch * k,) + x.shape[2:])
        return jax.tree_util.tree_map_with_path(take, cache)

    def cond(state):
        step, _, live_logp, _, fin_scores, fin_flags, _ = state
        best_live = live_logp[:, 0] / best_possible_penalty
        worst_fin = jnp.where(fin_flags.all(axis=1), fin_scores.min(axis=1), NEG_INF)
        return (step < length) & ~jnp.all(worst_fin > best_live)

    def body(state):
        step, live_seqs, live_logp, fin_seqs, fin_scores, fin_flags, cache = state
        last = jnp.where(step == 0, 0, _gather_step(live_seqs, step - 1)).reshape(batch * k)
        logits, cache = decode_step(params, config, cache, enc_tokens, last, step, length)
        vocab = logits.shape[-1]
        logp = jax.nn.log_softmax(logits).reshape(batch, k, vocab) + live_logp[..., None]
        cand_logp, cand_idx = lax.top_k(logp.reshape(batch, k * vocab), 2 * k)
        origin, token = cand_idx // vocab, cand_idx % vocab
        seqs = _gather_beams(live_seqs, origin)
        seqs = lax.dynamic_update_slice(seqs, token[..., None].astype(jnp.int32), (0, 0, step))
        valid = cand_logp > NEG_INF / 2
        ended = (token == eos_id) & valid
        # live beams: the best k candidates that did not just end
        live_logp, pick = lax.top_k(jnp.where(ended, NEG_INF, cand_logp), k)
        live_seqs = _gather_beams(seqs, pick)
        cache = reorder_cache(cache, _gather_beams(origin, pick))
        # finished beams: merge the newly ended candidates into the best k so far
        new_scores = jnp.where(ended, cand_logp / brevity_penalty(alpha, step + 1), NEG_INF)
        all_scores = jnp.concatenate([fin_scores, new_scores], axis=1)
        fin_scores, pick = lax.top_k(all_scores, k)
        fin_seqs = _gather_beams(jnp.concatenate([fin_seqs, seqs], axis=1), pick)
        fin_flags = _gather_beams(jnp.concatenate([fin_flags, ended], axis=1), pick)
        return step + 1, live_seqs, live_logp, fin_seqs, fin_scores, fin_flags, cache

    seqs0 = jnp.zeros((batch, k, length), jnp.int32)
    live_logp0 = jnp.tile(jnp.array([0.0] + [NEG_INF] * (k - 1), jnp.float32), (batch, 1))
    state = (jnp.int32(0), seqs0, live_logp0, seqs0, jnp.full((batch, k), NEG_INF, jnp.float32),
             jnp.zeros((batch, k), bool), cache)
    _, live_seqs, live_logp, fin_seqs, fin_scores, fin_flags, _ = lax.while_loop(cond, body, state)
    none_finished = ~fin_flags.any(axis=1)
    tokens = jnp.where(none_finished[:, None, None], live_seqs, fin_seqs)
    scores = jnp.where(none_finished[:, None], live_logp, fin_scores)
    return tokens, scores


def _gather_step(seqs, step):
    return lax.dynamic_slice_in_dim(seqs, step, 1, axis=2)[..., 0]


_PACKING_KEYS = ("encoder_segment_ids", "decoder_segment_ids", "encoder_positions",
                 "decoder_positions")


@functools.partial(jax.jit, static_argnames=("config",))
def score(params, config: T5Config, batch: dict):
    """Per-example sum of target log-likelihoods -> float32 [B].

    `batch` holds encoder_input_tokens, decoder_input_tokens, decoder_target_tokens
    and optionally decoder_loss_weights and packing features.
    """
    missing = [k for k in ("encoder_input_tokens", "decoder_input_tokens", "decoder_target_tokens")
               if k not in batch]
    if missing:
        raise ValueError(f"score: batch lacks {missing} (has {sorted(batch)})")
    packing = {k: batch[k] for k in _PACKING_KEYS if k in batch}
    logits = Transformer(config).apply({"params": params}, batch["encoder_input_tokens"],
                                       batch["decoder_input_tokens"], **packing)
    targets = batch["decoder_target_tokens"]
    token_logp = jnp.take_along_axis(jax.nn.log_softmax(logits), targets[..., None], axis=-1)[..., 0]
    weights = batch.get("decoder_loss_weights")
    weights = (targets > 0) if weights is None else weights
    return jnp.sum(token_logp * weights.astype(jnp.float32), axis=-1)
