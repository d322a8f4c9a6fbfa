"""Evaluation with seqio's Evaluator: predict metrics by decoding, score metrics by log-likelihood.

Plain-Python API (the forgetting study and the trainer call these; no gin):

    results = evaluate(params, model_config, ["synth_multitask", "cb_mix"], split="validation",
                       feature_lengths={"inputs": 512, "targets": 128},
                       decode=DecodeConfig(method="greedy"), num_examples=200)
    # -> {"task_name": {"accuracy": 0.81, ...}, ...}

    runner = EvalRunner(model_config, task_names, split, feature_lengths, decode, num_examples)
    runner(params, step)   # the same, reusing seqio's cached eval datasets: the trainer's eval_fn

`use_cached=True` (both) reads the tasks from their offline cache (`flanx cache`);
an uncached task fails at construction naming the command that caches it.

Names may be tasks or mixtures (a mixture evaluates each of its tasks that has
metrics and the split). Predict metrics get the model's decoded outputs
(greedy, beam search or sampling, `flanx.models.decoding`); score metrics
(rank classification over `*_scoring` tasks) get per-example target
log-likelihoods (`decoding.score`). Batches are padded to a fixed size so each
task compiles once. In a multi-process run every process evaluates the same
examples with the (sharded) parameters and gets the same results.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Any, Callable, Mapping, Sequence

import jax
import numpy as np

logger = logging.getLogger("flanx")

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


def make_predict_fn(params, model_config, decode: DecodeConfig) -> Callable:
    """seqio `predict_fn(dataset, model_feature_shapes)` -> [(index, token ids)]."""
    def predict_fn(dataset, model_feature_shapes=None):
        out = []
        for i, (indices, features) in enumerate(dataset.batch(decode.batch_size).as_numpy_iterator()):
            length = decode.max_decode_length or features["decoder_target_tokens"].shape[1]
            tokens, _ = decode_tokens(params, model_config, features["encoder_input_tokens"], decode, length, i)
            # Fixed-length rows (0 after EOS): seqio stacks them into one array before decoding.
            out += [(int(idx), [int(t) for t in row]) for idx, row in zip(indices, tokens)]
        return out
    return predict_fn


def make_score_fn(params, model_config, batch_size: int) -> Callable:
    """seqio `score_fn(dataset, model_feature_shapes)` -> [(index, log-likelihood)]."""
    def score_fn(dataset, model_feature_shapes=None):
        out = []
        for indices, features in dataset.batch(batch_size).as_numpy_iterator():
            scores = score_batch(params, model_config, features, batch_size)
            out += [(int(idx), float(s)) for idx, s in zip(indices, scores)]
        return out
    return score_fn


class EvalRunner:
    """seqio Evaluators for a list of tasks/mixtures, built once, run on any parameters."""

    def __init__(self, model_config, task_names: Sequence[str] | str, split: str = "validation",
                 feature_lengths: Mapping[str, int] | None = None, decode: DecodeConfig = DecodeConfig(),
                 num_examples: int | None = None, seed: int = 42, use_cached: bool = False):
        import seqio

        from flanx.data import cache, register_all
        register_all()
        names = [task_names] if isinstance(task_names, str) else list(task_names)
        if not names:
            raise ValueError("no evaluation tasks given (EVAL_MIXTURES / task_names is empty)")
        self.model_config, self.decode = model_config, decode
        self.evaluators = []
        known = set(seqio.TaskRegistry.names()) | set(seqio.MixtureRegistry.names())
        for name in names:
            if name not in known:
                import difflib
                close = difflib.get_close_matches(name, sorted(known), n=5)
                raise ValueError(f"unknown evaluation task or mixture {name!r}"
                                 + (f"; close matches: {', '.join(close)}" if close else ""))
            if use_cached:
                cache.require_cached(name, split)
            ev = seqio.Evaluator(
                mixture_or_task_name=name, feature_converter=seqio.EncDecFeatureConverter(pack=False),
                eval_split=split, use_cached=use_cached, seed=seed,
                sequence_length=dict(feature_lengths) if feature_lengths else None,
                num_examples=num_examples, shuffle=False, use_memory_cache=True)
            if not ev.eval_tasks:
                raise ValueError(f"{name!r} has no task with metrics and a {split!r} split to evaluate")
            self.evaluators.append(ev)

    @property
    def task_names(self) -> list[str]:
        return [t.name for ev in self.evaluators for t in ev.eval_tasks]

    def __call__(self, params, step: int | None = None) -> dict[str, dict[str, float]]:
        predict_fn = make_predict_fn(params, self.model_config, self.decode)
        score_fn = make_score_fn(params, self.model_config, self.decode.batch_size)
        results: dict[str, dict[str, float]] = {}
        for ev in self.evaluators:
            future, _ = ev.evaluate(compute_metrics=True, step=step, predict_fn=predict_fn, score_fn=score_fn)
            for task, metrics in future.result().items():
                results[task] = {k: float(getattr(v, "value", v)) for k, v in metrics.items()}
        for task, metrics in results.items():
            logger.info("[eval] step %s %s %s", step, task,
                        " ".join(f"{k}={v:.4f}" for k, v in sorted(metrics.items())))
        return results

    def close(self) -> None:
        for ev in self.evaluators:
            ev.close()


def evaluate(params, model_config, task_names: Sequence[str] | str, split: str = "validation",
             feature_lengths: Mapping[str, int] | None = None, decode: DecodeConfig = DecodeConfig(),
             num_examples: int | None = None, step: int | None = None,
             use_cached: bool = False) -> dict[str, dict[str, float]]:
    """Evaluate `params` on tasks/mixtures -> {task: {metric: value}} (see the module docstring)."""
    runner = EvalRunner(model_config, task_names, split, feature_lengths, decode, num_examples,
                        use_cached=use_cached)
    try:
        return runner(params, step)
    finally:
        runner.close()
