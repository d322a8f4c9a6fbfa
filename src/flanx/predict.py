"""Predictions from a model: decoding settings, batched decode and score calls, EOS trimming.

Shared by evaluation (`flanx.eval.evaluator`, which feeds seqio's Evaluator)
and inference (`flanx.infer`, which writes JSONL):

- `DecodeConfig(method='greedy'|'beam'|'sample', num_beams, alpha,
  temperature, top_k, top_p, max_decode_length, batch_size, seed)`: how
  predictions are produced (gin: `flanx.DecodeConfig`);
- `decode_tokens(params, model_config, encoder_input_tokens, decode,
  max_decode_length, rng_index)` -> (tokens `[B, L]`, beam scores or None);
- `score_batch(params, model_config, batch, batch_size)` -> per-example target
  log-likelihoods `[B]`; `score_targets(...)` builds that batch from token ids;
- `pad_tokens(sequences, length)`, `trim_at_eos(tokens)`.

Batches are padded to `batch_size` rows so each shape compiles once. In a
multi-process run every process passes the same host batch; inputs are
replicated next to the (sharded) parameters and outputs gathered back, so
every process gets the whole result. TensorFlow- and seqio-free.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import jax
import numpy as np

DECODE_METHODS = ("greedy", "beam", "sample")


@dataclasses.dataclass(frozen=True)
class DecodeConfig:
    """How predictions are produced. `max_decode_length=None` uses the targets length."""
    method: str = "greedy"
    num_beams: int = 4
    alpha: float = 0.6
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    max_decode_length: int | None = None
    batch_size: int = 32
    seed: int = 0

    def __post_init__(self):
        if self.method not in DECODE_METHODS:
            raise ValueError(f"DecodeConfig.method={self.method!r}: choose one of {DECODE_METHODS}")
        if self.batch_size < 1:
            raise ValueError(f"DecodeConfig.batch_size={self.batch_size} must be >= 1")


def _to_device(x: np.ndarray, params) -> Any:
    """Host numpy -> an array the jitted decode can take next to `params` (replicated across processes)."""
    if jax.process_count() == 1:
        return x
    leaf = jax.tree.leaves(params)[0]
    from jax.sharding import NamedSharding, PartitionSpec as P
    sharding = NamedSharding(leaf.sharding.mesh, P())
    return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])


def _host(x) -> np.ndarray:
    """The whole value of a (possibly multi-process, sharded) array on this host."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        from jax.experimental import multihost_utils
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)


def _pad_rows(x: np.ndarray, rows: int) -> np.ndarray:
    if x.shape[0] == rows:
        return x
    return np.concatenate([x, np.zeros((rows - x.shape[0],) + x.shape[1:], x.dtype)], axis=0)


def pad_tokens(sequences: Sequence[Sequence[int]], length: int) -> np.ndarray:
    """Token id sequences -> int32 `[len(sequences), length]`, 0-padded, each cut to `length`."""
    out = np.zeros((len(sequences), length), np.int32)
    for i, ids in enumerate(sequences):
        ids = np.asarray(ids, np.int32)[:length]
        out[i, :len(ids)] = ids
    return out


def trim_at_eos(tokens: Sequence[int], eos_id: int = 1) -> list[int]:
    """Token ids up to (not including) the first EOS, without padding."""
    out = []
    for t in tokens:
        t = int(t)
        if t == eos_id:
            break
        if t:
            out.append(t)
    return out


def decode_tokens(params, model_config, encoder_input_tokens: np.ndarray, decode: DecodeConfig,
                  max_decode_length: int, rng_index: int = 0) -> tuple[np.ndarray, np.ndarray | None]:
    """Decode one padded batch -> (tokens [B, L], beam scores [B] or None)."""
    from flanx.models import decoding

    n = encoder_input_tokens.shape[0]
    enc = _to_device(_pad_rows(np.asarray(encoder_input_tokens, np.int32), decode.batch_size), params)
    if decode.method == "greedy":
        out, scores = decoding.greedy_decode(params, model_config, enc, max_decode_length), None
    elif decode.method == "beam":
        out, scores = decoding.beam_search(params, model_config, enc, decode.num_beams, max_decode_length,
                                           decode.alpha)
        out, scores = out[:, 0], scores[:, 0]
    else:
        rng = jax.random.fold_in(jax.random.PRNGKey(decode.seed), rng_index)
        out, scores = decoding.sample(params, model_config, enc, rng, max_decode_length, decode.temperature,
                                      decode.top_k, decode.top_p), None
    out = _host(out)[:n]
    return out, (None if scores is None else _host(scores)[:n])


def score_batch(params, model_config, batch: Mapping[str, np.ndarray], batch_size: int) -> np.ndarray:
    """Per-example target log-likelihoods of one batch (padded to `batch_size` rows)."""
    from flanx.models import decoding

    n = next(iter(batch.values())).shape[0]
    keys = ("encoder_input_tokens", "decoder_input_tokens", "decoder_target_tokens", "decoder_loss_weights")
    padded = {k: _to_device(_pad_rows(np.asarray(batch[k], np.int32), batch_size), params)
              for k in keys if k in batch}
    return _host(decoding.score(params, model_config, padded))[:n]


def score_targets(params, model_config, encoder_input_tokens: np.ndarray, targets: Sequence[Sequence[int]],
                  length: int, batch_size: int, eos_id: int = 1) -> np.ndarray:
    """Log-likelihood of each target (token ids without EOS; EOS is appended and scored) given its input."""
    tgt = pad_tokens([list(ids)[:length - 1] + [eos_id] for ids in targets], length)
    dec_in = np.zeros_like(tgt)
    dec_in[:, 1:] = tgt[:, :-1]
    return score_batch(params, model_config, {
        "encoder_input_tokens": encoder_input_tokens, "decoder_input_tokens": dec_in,
        "decoder_target_tokens": tgt, "decoder_loss_weights": (tgt > 0).astype(np.int32)}, batch_size)
