"""Metrics and postprocessors for flanx tasks, with seqio's metric-function signatures.

Predict metrics take `(targets, predictions)`, score metrics `(targets,
scores)`; all return a dict of floats in [0, 1]:

- `rouge`: ROUGE-1/2/L/Lsum F-measure (rouge-score, Porter stemming on),
  averaged over examples; for Lsum, target and prediction are first split
  into sentences, one per line, as ROUGE-Lsum expects.
- `accuracy`: exact string match after the task's postprocessor.
- `exact_match`: numeric answers (GSM8K) compared as normalized numbers.
- `rank_classification`: targets are `(example, option, is_correct)` tuples
  from the `rank_target` postprocessor, scores the model's log-likelihood of
  each option; an example counts as right when its best-scored option is a
  correct one.

Postprocessors take `(text, example=None, is_target=False)` as seqio calls
them: `strip`, `normalize`, `gsm8k_number`, `bbh_answer`, `rank_target`.
"""
from __future__ import annotations

import functools
import re
import string
from typing import Any, Sequence

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


# ----------------------------------------------------------------------------- postprocessors

def strip(text, example=None, is_target=False) -> str:
    """Surrounding whitespace removed."""
    return _text(text).strip()


def normalize(text, example=None, is_target=False) -> str:
    """Lowercase, single spaces, no surrounding punctuation."""
    return " ".join(_text(text).lower().split()).strip(string.punctuation + " ")


def _norm_number(token: str) -> str:
    token = token.replace(",", "")
    if "." in token:
        token = token.rstrip("0").rstrip(".")
    return "0" if token in ("-0", "") else token


def gsm8k_number(text, example=None, is_target=False) -> str:
    """The last number in the text (a chain of thought ends with its answer), normalized."""
    text = _text(text)
    tail = text.rsplit("answer is", 1)[-1] if "answer is" in text else text
    numbers = _NUMBER.findall(tail) or _NUMBER.findall(text)
    return _norm_number(numbers[-1]) if numbers else text.strip()


def bbh_answer(text, example=None, is_target=False) -> str:
    """The text after the last "So the answer is", without the final period."""
    text = _text(text).strip()
    if "answer is" in text:
        text = text.rsplit("answer is", 1)[1]
    return text.strip().rstrip(".").strip()


def rank_target(text, example=None, is_target=False):
    """For rank-classification tasks: targets become (example, option, is_correct)."""
    if is_target and example is not None:
        idx = example["idx"]
        return int(idx[0]), int(idx[1]), bool(example["is_correct"])
    return text


POSTPROCESSORS = {"strip": strip, "normalize": normalize, "gsm8k_number": gsm8k_number,
                  "bbh_answer": bbh_answer, "rank_target": rank_target}


# ----------------------------------------------------------------------------- metrics

def _sentences_per_line(text: str) -> str:
    lines = []
    for line in text.splitlines():
        lines += [s for s in _SENTENCE_END.split(line.strip()) if s]
    return "\n".join(lines)


@functools.lru_cache(maxsize=None)
def _scorer():
    from rouge_score import rouge_scorer  # noqa: PLC0415 - imported when first used
    return rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL", "rougeLsum"], use_stemmer=True)


def rouge(targets: Sequence[str], predictions: Sequence[str]) -> dict[str, float]:
    """Mean ROUGE-1/2/L/Lsum F-measure in [0, 1]."""
    _check_lengths(targets, predictions)
    if not targets:
        return {k: float("nan") for k in ("rouge1", "rouge2", "rougeL", "rougeLsum")}
    totals = {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0, "rougeLsum": 0.0}
    scorer = _scorer()
    for target, prediction in zip(targets, predictions):
        target, prediction = _text(target), _text(prediction)
        scores = scorer.score(target, prediction)
        for key in ("rouge1", "rouge2", "rougeL"):
            totals[key] += scores[key].fmeasure
        lsum = scorer.score(_sentences_per_line(target), _sentences_per_line(prediction))
        totals["rougeLsum"] += lsum["rougeLsum"].fmeasure
    return {k: v / len(targets) for k, v in totals.items()}


def accuracy(targets: Sequence[str], predictions: Sequence[str]) -> dict[str, float]:
    """Fraction of predictions equal to their target."""
    _check_lengths(targets, predictions)
    if not targets:
        return {"accuracy": float("nan")}
    return {"accuracy": sum(_text(t) == _text(p) for t, p in zip(targets, predictions)) / len(targets)}


def exact_match(targets: Sequence[str], predictions: Sequence[str]) -> dict[str, float]:
    """Fraction of predictions whose final number equals the target's."""
    _check_lengths(targets, predictions)
    if not targets:
        return {"exact_match": float("nan")}
    hits = sum(gsm8k_number(t) == gsm8k_number(p) for t, p in zip(targets, predictions))
    return {"exact_match": hits / len(targets)}


def rank_classification(targets: Sequence[tuple], scores: Sequence[float]) -> dict[str, float]:
    """Accuracy of picking the highest-scoring option per example."""
    _check_lengths(targets, scores)
    best: dict[int, tuple[float, bool]] = {}
    for (example, _option, correct), score in zip(targets, scores):
        score = float(score)
        if example not in best or score > best[example][0]:
            best[example] = (score, bool(correct))
    if not best:
        return {"rank_accuracy": float("nan")}
    return {"rank_accuracy": sum(c for _, c in best.values()) / len(best)}


METRICS = {"rouge": rouge, "accuracy": accuracy, "exact_match": exact_match,
           "rank_classification": rank_classification}


def _check_lengths(targets, outputs) -> None:
    if len(targets) != len(outputs):
        raise ValueError(f"metric got {len(targets)} targets but {len(outputs)} model outputs")
