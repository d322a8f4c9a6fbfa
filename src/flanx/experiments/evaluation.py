"""The study's evaluation: fixed examples, every task's own metrics, per-example scores kept.

    suite = EvalSuite({"dialogsum_template_0_zero_shot": "test", "rte_template_0to9_zsopt_scoring": "test"},
                      feature_lengths={"inputs": 512, "targets": 128}, decode=DecodeConfig(...),
                      num_examples=200)
    result = suite(params, model_config)              # all selected examples
    early = suite(params, model_config, limit=50)     # the first 50 of those same examples (curves)
    # -> {task: {"metrics": {metric: value}, "per_example": {metric: [value per example]},
    #            "chance": float | None, "split": str, "num_examples": n}}

Examples are chosen once, when the suite is built, and are the same for every
call: the whole split when it has at most `num_examples` examples, else
`num_examples` evenly spaced ones (so a split stored subject by subject, as
MMLU and BBH are, is covered across subjects), in order. For a `*_scoring`
task an example is all of its option rows.

Metrics are the task's own seqio metric functions on the task's
postprocessed targets and predictions, exactly as seqio's Evaluator computes
them (greedy or beam decoding via `flanx.predict`; rank classification from
`flanx.predict.score_batch` log-likelihoods). `per_example[metric]` holds each
example's value for every metric that is a mean over examples (accuracy,
exact match, ROUGE, rank accuracy; checked: the mean of the per-example values
equals the metric), which is what bootstrap intervals need; corpus-level
metrics (BLEU, F1) have none. `chance` is the expected rank accuracy of a
uniform guess among an example's options (scoring tasks), else None.

This is the one evaluation the forgetting study and the held-out cluster
comparison use; `record` and `write_record` put a result into the evaluation
files `flanx.experiments.report` reads (`evals/<variant>/seed<k>.json`).
"""
from __future__ import annotations

import json
import logging
import math
import os
from typing import Any, Mapping

import numpy as np

from flanx.predict import DecodeConfig, decode_tokens, pad_tokens, score_batch

logger = logging.getLogger("flanx")


def _text(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def select_indices(total: int, num_examples: int | None) -> list[int]:
    """`num_examples` evenly spaced indices in [0, total) (all of them when total is not larger)."""
    if num_examples is None or num_examples >= total:
        return list(range(total))
    return [int(i * total // num_examples) for i in range(num_examples)]


class _TaskData:
    """One task's selected examples: rows (numpy dicts) grouped per example."""

    def __init__(self, task_name: str, split: str, feature_lengths, num_examples: int | None,
                 use_cached: bool = False):
        import seqio

        self.name, self.split = task_name, split
        self.task = seqio.get_mixture_or_task(task_name)
        if use_cached:
            from flanx.data import cache

            cache.require_cached(task_name, split)
        ds = self.task.get_dataset(sequence_length=dict(feature_lengths), split=split, shuffle=False,
                                   num_epochs=1, seed=None, use_cached=use_cached)
        rows = list(ds.as_numpy_iterator())
        if not rows:
            raise ValueError(f"evaluation task {task_name!r} has no examples in split {split!r}")
        self.scoring = "idx" in rows[0] and "is_correct" in rows[0]
        groups: dict[int, list[dict]] = {}
        for i, row in enumerate(rows):
            groups.setdefault(int(row["idx"][0]) if self.scoring else i, []).append(row)
        keys = list(groups)
        self.examples = [groups[keys[i]] for i in select_indices(len(keys), num_examples)]
        self.vocab = self.task.output_features["targets"].vocabulary

    def rows(self, limit: int | None) -> list[dict]:
        return [r for group in self.examples[:limit] for r in group]


def _batches(rows: list[dict], size: int):
    for start in range(0, len(rows), size):
        yield rows[start:start + size]


def _mean_metric_values(fn, targets: list, outputs: list, key_out: str, aggregate: dict) -> dict[str, list]:
    """Per-example values of each key of `fn` whose mean over examples is its aggregate value."""
    per: dict[str, list[float]] = {}
    for t, o in zip(targets, outputs):
        for k, v in fn(targets=[t], **{key_out: [o]}).items():
            per.setdefault(k, []).append(float(v))
    out = {}
    for k, values in per.items():
        agg = aggregate.get(k)
        if agg is not None and values and math.isclose(float(np.mean(values)), agg, rel_tol=1e-6, abs_tol=1e-9):
            out[k] = values
    return out


class EvalSuite:
    """Tasks (each with its split), fixed examples and decoding settings; call it on any parameters."""

    def __init__(self, tasks: Mapping[str, str], feature_lengths: Mapping[str, int], decode: DecodeConfig,
                 num_examples: int | None = None, use_cached: bool = False):
        from flanx.data import register_all

        register_all()
        self.feature_lengths = dict(feature_lengths)
        self.decode = decode
        self.data = {t: _TaskData(t, split, self.feature_lengths, num_examples, use_cached) for t, split in tasks.items()}

    def num_examples(self, task: str) -> int:
        return len(self.data[task].examples)

    def __call__(self, params, model_config, limit: int | None = None,
                 tasks: list[str] | None = None) -> dict[str, dict[str, Any]]:
        out = {}
        for name in tasks or list(self.data):
            data = self.data[name]
            out[name] = self._score_task(params, model_config, data, limit) if data.scoring else \
                self._predict_task(params, model_config, data, limit)
            out[name].update(split=data.split, num_examples=len(data.examples[:limit]))
            logger.info("[eval] %s %s", name, " ".join(f"{k}={v:.4f}" for k, v in sorted(out[name]["metrics"].items())))
        return out

    def _predict_task(self, params, model_config, data: _TaskData, limit) -> dict:
        rows = data.rows(limit)
        length = self.decode.max_decode_length or self.feature_lengths["targets"]
        predictions = []
        for i, chunk in enumerate(_batches(rows, self.decode.batch_size)):
            enc = pad_tokens([r["inputs"] for r in chunk], self.feature_lengths["inputs"])
            tokens, _ = decode_tokens(params, model_config, enc, self.decode, length, i)
            predictions += [data.vocab.decode([int(t) for t in row]) for row in tokens]
        post = data.task.postprocess_fn
        targets = [post(_text(r["targets_pretokenized"]), example=r, is_target=True) for r in rows]
        predictions = [post(p, example=r, is_target=False) for p, r in zip(predictions, rows)]
        metrics, per_example = {}, {}
        for fn in data.task.predict_metric_fns:
            values = {k: float(getattr(v, "value", v)) for k, v in fn(targets=targets, predictions=predictions).items()}
            metrics.update(values)
            per_example.update(_mean_metric_values(fn, targets, predictions, "predictions", values))
        return {"metrics": metrics, "per_example": per_example, "chance": None}

    def _score_task(self, params, model_config, data: _TaskData, limit) -> dict:
        from flanx.data.pipeline import make_eval_batch

        rows = data.rows(limit)
        scores = []
        for chunk in _batches(rows, self.decode.batch_size):
            # Options are short: score targets at the next power of two (>= 4) of the longest one in the
            # batch, not the full target length (the padding adds nothing to a log-likelihood, only cost).
            longest = max(len(r["targets"]) for r in chunk)
            lengths = dict(self.feature_lengths, targets=min(self.feature_lengths["targets"],
                                                             max(4, 1 << (longest - 1).bit_length())))
            batch = make_eval_batch(chunk, lengths)
            scores += [float(s) for s in score_batch(params, model_config, batch, self.decode.batch_size)]
        post = data.task.postprocess_fn
        targets = [post(_text(r["targets_pretokenized"]), example=r, is_target=True) for r in rows]
        metrics = {}
        for fn in data.task.score_metric_fns:
            metrics.update({k: float(getattr(v, "value", v)) for k, v in fn(targets=targets, scores=scores).items()})
        # Per example: is its best-scored option a correct one (rank classification, example by example).
        best: dict[int, tuple[float, bool]] = {}
        options: dict[int, list[bool]] = {}
        for (example, _option, correct), score in zip(targets, scores):
            options.setdefault(example, []).append(bool(correct))
            if example not in best or score > best[example][0]:
                best[example] = (score, bool(correct))
        per_example = {"rank_accuracy": [float(best[e][1]) for e in best]}
        chance = float(np.mean([sum(c) / len(c) for c in options.values()]))
        if not math.isclose(np.mean(per_example["rank_accuracy"]), metrics.get("rank_accuracy", float("nan")),
                            abs_tol=1e-9):
            per_example = {}
        return {"metrics": metrics, "per_example": per_example, "chance": chance}


def record(variant: str, seed: int, tasks: dict | None, **fields) -> dict:
    """An evaluation file's body: a suite's result (per-example scores rounded to 4 decimals, 0/1 kept
    as ints, so files stay small) plus `fields` (arm, knob, value, optimizer, steps, curve, timings...)."""
    body = {"variant": variant, "seed": int(seed), **fields}
    if tasks is not None:
        body["tasks"] = {t: {**b, "per_example": {m: [int(x) if x in (0.0, 1.0) else round(x, 4) for x in v]
                                                  for m, v in b["per_example"].items()}}
                         for t, b in tasks.items()}
    return body


def write_record(evals_dir: str, body: dict) -> str:
    """Write `evals_dir/<variant>/seed<k>.json` (compact JSON, renamed into place when complete)."""
    path = os.path.join(evals_dir, body["variant"], f"seed{body['seed']}.json")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".tmp", "w") as f:
        json.dump(body, f, sort_keys=True, default=str, separators=(",", ":"))
    os.replace(path + ".tmp", path)
    return path
