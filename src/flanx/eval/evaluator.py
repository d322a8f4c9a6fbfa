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
metrics and the split). With `predictions_dir`, each task's examples are also
written, as T5X does, to `predictions_dir/<task>-step<N>.jsonl`: one line per
example with `inputs`, `targets` (and `references` when the card has several),
`prediction` and `score`: the task's metrics on that example alone, or for
`*_scoring` tasks (one line per answer option) the log-likelihood, with
`is_correct`. Decoding and scoring log a progress line over the examples. Predict metrics get the model's decoded outputs
(greedy, beam search or sampling: `flanx.predict.DecodeConfig`); score
metrics (rank classification over `*_scoring` tasks) get per-example target
log-likelihoods. The batched decode and score calls live in `flanx.predict`
(shared with `flanx.infer`); this module adapts them to seqio's
`predict_fn`/`score_fn` and runs the Evaluators. In a multi-process run every
process evaluates the same examples with the (sharded) parameters and gets the
same results.

After each call, `EvalRunner.breakdown` holds the results by template and by
format (`_template_type`), recomputed from what seqio logged
(`flanx.eval.breakdown`).
"""
from __future__ import annotations

import json
import logging
import math
import os
from typing import Callable, Mapping, Sequence

from flanx.predict import DecodeConfig, decode_tokens, score_batch
from flanx.progress import Progress

logger = logging.getLogger("flanx")


def make_predict_fn(params, model_config, decode: DecodeConfig) -> Callable:
    """seqio `predict_fn(dataset, model_feature_shapes)` -> [(index, token ids)]."""
    def predict_fn(dataset, model_feature_shapes=None):
        out = []
        progress = examples_progress("eval", dataset, decode.batch_size)
        for i, (indices, features) in enumerate(dataset.batch(decode.batch_size).as_numpy_iterator()):
            length = decode.max_decode_length or features["decoder_target_tokens"].shape[1]
            tokens, _ = decode_tokens(params, model_config, features["encoder_input_tokens"], decode, length, i)
            # Fixed-length rows (0 after EOS): seqio stacks them into one array before decoding.
            out += [(int(idx), [int(t) for t in row]) for idx, row in zip(indices, tokens)]
            progress.advance(len(indices))
        return out
    return predict_fn


def examples_progress(name: str, dataset_or_count, batch_size: int, lines: int = 10) -> Progress:
    """A Progress over examples (a tf.data dataset's cardinality, or a count): about `lines` lines."""
    total = dataset_or_count if isinstance(dataset_or_count, int) else int(dataset_or_count.cardinality())
    total = total if total > 0 else None
    every = max(batch_size, math.ceil(total / lines)) if total else 10 * batch_size
    return Progress(name, total, every=every, unit="examples", what="examples")


def make_score_fn(params, model_config, batch_size: int) -> Callable:
    """seqio `score_fn(dataset, model_feature_shapes)` -> [(index, log-likelihood)]."""
    def score_fn(dataset, model_feature_shapes=None):
        out = []
        progress = examples_progress("eval", dataset, batch_size)
        for indices, features in dataset.batch(batch_size).as_numpy_iterator():
            scores = score_batch(params, model_config, features, batch_size)
            out += [(int(idx), float(s)) for idx, s in zip(indices, scores)]
            progress.advance(len(indices))
        return out
    return score_fn


class EvalRunner:
    """seqio Evaluators for a list of tasks/mixtures, built once, run on any parameters."""

    def __init__(self, model_config, task_names: Sequence[str] | str, split: str = "validation",
                 feature_lengths: Mapping[str, int] | None = None, decode: DecodeConfig = DecodeConfig(),
                 num_examples: int | None = None, seed: int = 42, use_cached: bool = False,
                 predictions_dir: str | None = None):
        import functools

        import seqio

        from flanx.data import cache, register_all
        from flanx.eval import breakdown as breakdown_lib
        register_all()
        names = [task_names] if isinstance(task_names, str) else list(task_names)
        if not names:
            raise ValueError("no evaluation tasks given (EVAL_MIXTURES / task_names is empty)")
        self.model_config, self.decode = model_config, decode
        self.evaluators = []
        self._records: dict = {}  # task -> what seqio logged (flanx.eval.breakdown)
        self.breakdown: dict = {}  # the latest call's results by template and by format
        recorder = functools.partial(breakdown_lib.RecordingLogger, self._records)
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
                num_examples=num_examples, shuffle=False, use_memory_cache=True,
                logger_cls=[recorder] + ([_predictions_logger()] if predictions_dir else []),
                log_dir=predictions_dir or "unused")  # the recording logger writes nothing
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
        from flanx.eval import breakdown as breakdown_lib
        self.breakdown = breakdown_lib.breakdown(self._records)
        self._records.clear()
        return results

    def close(self) -> None:
        for ev in self.evaluators:
            ev.close()


def evaluate(params, model_config, task_names: Sequence[str] | str, split: str = "validation",
             feature_lengths: Mapping[str, int] | None = None, decode: DecodeConfig = DecodeConfig(),
             num_examples: int | None = None, step: int | None = None,
             use_cached: bool = False, predictions_dir: str | None = None,
             breakdown: dict | None = None) -> dict[str, dict[str, float]]:
    """Evaluate `params` on tasks/mixtures -> {task: {metric: value}} (see the module docstring); a
    `breakdown` dict receives the results by template and by format (`flanx.eval.breakdown`)."""
    runner = EvalRunner(model_config, task_names, split, feature_lengths, decode, num_examples,
                        use_cached=use_cached, predictions_dir=predictions_dir)
    try:
        results = runner(params, step)
        if breakdown is not None:
            breakdown.update(runner.breakdown)
        return results
    finally:
        runner.close()


# ----------------------------------------------------------------------------- predictions files


def _text(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _json_value(value):
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if hasattr(value, "item"):
        return _json_value(value.item())
    if isinstance(value, (list, tuple)):
        return [_json_value(v) for v in value]
    return value


def example_metrics(task, target, prediction) -> dict[str, float]:
    """The task's predict metrics on one example (seqio signatures), NaN-free; metrics that cannot
    score a single example are left out."""
    import warnings

    out: dict[str, float] = {}
    for fn in task.predict_metric_fns:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                values = fn([target], [prediction])
        except Exception:  # noqa: BLE001 - a corpus-level metric may not take one example
            continue
        for key, value in values.items():
            value = _json_value(float(getattr(value, "value", value)))
            if value is not None:
                out[key] = value
    return out


def prediction_records(task, dataset, targets, inferences) -> list[dict]:
    """One JSON-able record per example (see the module docstring)."""
    predictions, scores = inferences.get("prediction"), inferences.get("score")
    records = []
    for i, ex in enumerate(dataset.as_numpy_iterator()):
        rec = {"inputs": _text(ex["inputs_pretokenized"]), "targets": _text(ex["targets_pretokenized"])}
        target = targets[i] if targets is not None and i < len(targets) else None
        if isinstance(target, list):
            rec["references"] = [_text(t) for t in target]
        if predictions is not None:
            rec["prediction"] = _text(predictions[i])
            rec["score"] = example_metrics(task, target, predictions[i])
        elif scores is not None:
            rec["score"] = _json_value(scores[i])
            if "is_correct" in ex:
                rec["is_correct"] = bool(ex["is_correct"])
        records.append(rec)
    return records


def _predictions_logger():
    """A seqio Logger class writing `output_dir/<task>-step<N>.jsonl` (seqio imported lazily)."""
    import seqio

    class PredictionsLogger(seqio.Logger):
        def __call__(self, task_name, step, metrics, dataset, inferences, targets):
            if dataset is None or not inferences:
                return
            task = seqio.get_mixture_or_task(task_name)
            path = os.path.join(self.output_dir, f"{task_name}-step{step if step is not None else 0}.jsonl")
            from flanx import io

            with io.open_output(path) as f:
                for rec in prediction_records(task, dataset, targets, inferences):
                    f.write(json.dumps(rec, ensure_ascii=False) + "\n")
            logger.info("[eval] %s: predictions written to %s", task_name, path)

    return PredictionsLogger
