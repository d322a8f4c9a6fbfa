"""Sequence-to-sequence cross-entropy as T5X computes it.

`token_losses(logits, targets, z_loss, label_smoothing)` gives per-token
cross-entropy (with label smoothing, shifted so a perfect prediction scores
0) plus the z-loss `z_loss * logsumexp(logits)^2` that keeps the softmax
normaliser near 1. `loss_weights(batch, normalization)` and
`normalizing_factor(batch, normalization)` turn that into one scalar:

    loss = sum(token_loss * weight) / factor

computed from the *whole* batch, so gradient accumulation over microbatches
(sum of per-microbatch sums divided by the global factor) equals the
full-batch step.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def token_losses(logits: jax.Array, targets: jax.Array, z_loss: float = 0.0,
                 label_smoothing: float = 0.0) -> tuple[jax.Array, jax.Array]:
    """Per-token (total loss, z-loss part), float32 `[B, T]`."""
    logits = logits.astype(jnp.float32)
    vocab = logits.shape[-1]
    log_z = jax.nn.logsumexp(logits, axis=-1)
    log_probs = logits - log_z[..., None]
    target_logp = jnp.take_along_axis(log_probs, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
    if label_smoothing:
        confidence = 1.0 - label_smoothing
        low = label_smoothing / (vocab - 1)
        # Cross-entropy against the smoothed distribution, minus its entropy.
        mean_logp = jnp.sum(log_probs, axis=-1)
        ce = -(confidence - low) * target_logp - low * mean_logp
        entropy = -(confidence * jnp.log(confidence) + (vocab - 1) * low * jnp.log(low + 1e-20))
        ce = ce - entropy
    else:
        ce = -target_logp
    zl = z_loss * jnp.square(log_z) if z_loss else jnp.zeros_like(ce)
    return ce + zl, zl


def _segment_lengths(weights: jax.Array, segment_ids: jax.Array | None) -> jax.Array:
    """For each token, the number of weighted tokens in its sequence (segment)."""
    if segment_ids is None:
        return jnp.broadcast_to(jnp.sum(weights, axis=-1, keepdims=True), weights.shape)
    same = segment_ids[:, :, None] == segment_ids[:, None, :]
    return jnp.einsum("bij,bj->bi", same.astype(weights.dtype), weights)


def loss_weights(batch: dict, normalization) -> jax.Array:
    """Per-token weights `[B, T]` (float32) for `normalization`."""
    targets = batch["decoder_target_tokens"]
    w = batch.get("decoder_loss_weights")
    w = (targets > 0) if w is None else w
    w = jnp.asarray(w, jnp.float32)
    if normalization == "per_sequence":
        lengths = _segment_lengths(w, batch.get("decoder_segment_ids"))
        w = jnp.where(w > 0, w / jnp.maximum(lengths, 1.0), 0.0)
    return w


def num_sequences(batch: dict) -> jax.Array:
    """Number of target sequences (packed segments count separately) with any weight."""
    targets = batch["decoder_target_tokens"]
    w = batch.get("decoder_loss_weights")
    w = (targets > 0) if w is None else w
    seg = batch.get("decoder_segment_ids")
    if seg is None:
        return jnp.sum(jnp.any(w > 0, axis=-1)).astype(jnp.float32)
    # A segment starts where its id differs from the previous position's.
    prev = jnp.pad(seg, ((0, 0), (1, 0)))[:, :-1]
    starts = (seg != prev) & (seg > 0)
    return jnp.sum(starts).astype(jnp.float32)


def normalizing_factor(batch: dict, normalization) -> jax.Array:
    """The scalar the summed weighted loss is divided by."""
    if normalization == "per_token":
        return jnp.maximum(jnp.sum(loss_weights(batch, "per_token")), 1.0)
    if normalization == "per_sequence":
        return jnp.maximum(num_sequences(batch), 1.0)
    if normalization == "per_batch":
        return jnp.asarray(batch["decoder_target_tokens"].shape[0], jnp.float32)
    return jnp.asarray(float(normalization), jnp.float32)


def weighted_sums(logits, batch, weights, z_loss: float, label_smoothing: float) -> dict:
    """Sums over the batch: loss, z-loss, weights and correct tokens (for accuracy)."""
    targets = batch["decoder_target_tokens"]
    total, zl = token_losses(logits, targets, z_loss, label_smoothing)
    mask = (weights > 0).astype(jnp.float32)
    correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32) * mask
    return {
        "loss_sum": jnp.sum(total * weights),
        "z_loss_sum": jnp.sum(zl * weights),
        "num_tokens": jnp.sum(mask),
        "correct": jnp.sum(correct),
    }
