"""Metrics and postprocessors for flanx tasks: two registries with seqio's function signatures.

`METRICS` maps a card's `metrics:` names to functions: predict metrics take
`(targets, predictions)`, score metrics `(targets, scores)`, and return a
dict of floats in [0, 1] (a card's `metric_scale: 100` reports T5's 0-100
scale). A target is one reference string or a list of references (a card's
`references_field`); metrics marked "best over references" score each
prediction against its best reference, the others take one reference.

| name | keys | what (library) |
|---|---|---|
| `accuracy` | accuracy | prediction equal to a reference |
| `exact_match` | exact_match | equal to a reference; a numeric reference compares the prediction's final number (GSM8K) |
| `rouge` | rouge1, rouge2, rougeL, rougeLsum | F-measure, Porter stemming, best over references (rouge-score) |
| `bleu` | bleu | corpus BLEU, T5's settings: exp smoothing, intl tokenizer, several references (sacrebleu) |
| `squad` | em, f1 | SQuAD v1.1 answer normalization, token F1, max over references |
| `f1` | f1 | binary F1 of the card's last option; an answer outside the options counts as wrong (scikit-learn) |
| `mean_multiclass_f1` | mean_{n}class_f1 | macro F1 over the card's options, as T5 reports CB (scikit-learn) |
| `matthews_corrcoef` | matthews_corrcoef | CoLA's metric; answers outside the options form their own class (scikit-learn) |
| `pearson_spearman` | pearson_corrcoef, spearman_corrcoef | STS-B; a prediction that is not a number counts as -1 as in T5 (scipy) |
| `edit_distance` | mean_edit, median_edit, min_edit, max_edit, sum_edit | T5's word-level edit distance, lower-cased (FLAN's text formatting; `flanx.eval.edit_metrics`, editdistance) |
| `rank_classification` | rank_accuracy | score metric: an example is right when its best-scored option is one of its correct options |

`POSTPROCESSORS` map a card's `postprocess:` name to `fn(text, example=None,
is_target=False)` as seqio calls it: `strip`, `normalize`, `gsm8k_number`,
`bbh_answer`, `rank_target`. `with_references(post)` wraps one so that a
target's several references (the `references` feature of a rendered example)
come back as a list. Metrics that need the card's answer options take a
keyword `options`; `bind_metric` supplies it and the scale.

Register your own with one decorator (the name is then valid in cards):

    from flanx.eval.metrics import METRICS

    @METRICS.register("first_word_accuracy")
    def first_word_accuracy(targets, predictions):
        ...
        return {"first_word_accuracy": value}
"""
from __future__ import annotations

import collections
import functools
import inspect
import json
import re
import string
from typing import Any, Callable, Sequence

from flanx.registry import Registry

REFERENCES_FEATURE = "references"  # JSON list of reference strings carried by a rendered example
SCALES = (1, 100)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")
_PUNCTUATION = frozenset(string.punctuation)


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def references(target) -> list[str]:
    """A target as a list of reference strings (one string -> one reference)."""
    if isinstance(target, (list, tuple)):
        return [_text(t) for t in target]
    return [_text(target)]


def _single(target, metric: str) -> str:
    refs = references(target)
    if len(refs) != 1:
        raise ValueError(f"metric {metric!r} takes one reference per example, got {len(refs)}: {refs[:3]}")
    return refs[0]


# ----------------------------------------------------------------------------- postprocessors

def _positional(fn) -> tuple[str, ...]:
    return tuple(k for k, p in inspect.signature(fn).parameters.items()
                 if p.default is inspect.Parameter.empty and p.kind == p.POSITIONAL_OR_KEYWORD)


def _check_postprocessor(name: str, fn) -> None:
    try:
        inspect.signature(fn).bind("text", example=None, is_target=False)
    except TypeError:
        raise TypeError(f"postprocessor {name!r} must accept (text, example=None, is_target=False) "
                        f"as seqio calls it") from None


POSTPROCESSORS: Registry[Callable] = Registry(
    "postprocessor", validator=_check_postprocessor,
    hint="Register one with @flanx.eval.metrics.POSTPROCESSORS.register('name')")


@POSTPROCESSORS.register("strip")
def strip(text, example=None, is_target=False) -> str:
    """Surrounding whitespace removed."""
    return _text(text).strip()


@POSTPROCESSORS.register("normalize")
def normalize(text, example=None, is_target=False) -> str:
    """Lowercase, single spaces, no surrounding punctuation."""
    return " ".join(_text(text).lower().split()).strip(string.punctuation + " ")


def _norm_number(token: str) -> str:
    token = token.replace(",", "")
    if "." in token:
        token = token.rstrip("0").rstrip(".")
    return "0" if token in ("-0", "") else token


@POSTPROCESSORS.register("gsm8k_number")
def gsm8k_number(text, example=None, is_target=False) -> str:
    """The last number in the text (a chain of thought ends with its answer), normalized."""
    text = _text(text)
    tail = text.rsplit("answer is", 1)[-1] if "answer is" in text else text
    numbers = _NUMBER.findall(tail) or _NUMBER.findall(text)
    return _norm_number(numbers[-1]) if numbers else text.strip()


@POSTPROCESSORS.register("bbh_answer")
def bbh_answer(text, example=None, is_target=False) -> str:
    """The text after the last "So the answer is", without the final period."""
    text = _text(text).strip()
    if "answer is" in text:
        text = text.rsplit("answer is", 1)[1]
    return text.strip().rstrip(".").strip()


@POSTPROCESSORS.register("rank_target")
def rank_target(text, example=None, is_target=False):
    """For rank-classification tasks: targets become (example, option, is_correct)."""
    if is_target and example is not None:
        idx = example["idx"]
        return int(idx[0]), int(idx[1]), bool(example["is_correct"])
    return text


def with_references(post: Callable) -> Callable:
    """`post`, except that a target whose example carries references becomes their postprocessed list."""
    @functools.wraps(post)
    def postprocess(text, example=None, is_target=False):
        if is_target and example is not None and REFERENCES_FEATURE in example:
            refs = json.loads(_text(example[REFERENCES_FEATURE]))
            return [post(r, example=example, is_target=True) for r in refs]
        return post(text, example=example, is_target=is_target)
    return postprocess


# ----------------------------------------------------------------------------- metric registry

def _check_metric(name: str, fn) -> None:
    if not callable(fn):
        raise TypeError(f"metric {name!r} must be callable, got {type(fn).__name__}")
    if _positional(fn) not in (("targets", "predictions"), ("targets", "scores")):
        raise TypeError(f"metric {name!r} must take (targets, predictions) or (targets, scores) as seqio "
                        f"calls it (extra parameters need defaults or must be keyword-only), got "
                        f"{_positional(fn)}")


METRICS: Registry[Callable] = Registry(
    "metric", validator=_check_metric,
    hint="Register one with @flanx.eval.metrics.METRICS.register('name')")


def single_reference(fn: Callable) -> Callable:
    """Mark a metric that scores one reference per example (cards then refuse `references_field`)."""
    fn.single_reference = True
    return fn


def needs_options(fn: Callable) -> bool:
    """Whether a metric requires the card's fixed answer options (a keyword-only `options` without default)."""
    p = inspect.signature(fn).parameters.get("options")
    return p is not None and p.kind == p.KEYWORD_ONLY and p.default is inspect.Parameter.empty


def bind_metric(fn: Callable, options: Sequence[str] | None = None, scale: float = 1) -> Callable:
    """`fn` with the card's `options` bound (when it takes them) and values multiplied by `scale`."""
    takes_options = "options" in inspect.signature(fn).parameters
    if scale == 1 and not (takes_options and options is not None):
        return fn
    kwargs = {"options": list(options)} if takes_options and options is not None else {}

    @functools.wraps(fn)  # keeps __name__ and, through __wrapped__, the signature seqio inspects
    def bound(*args, **named):  # seqio calls metric_fn(targets=..., predictions=... | scores=...)
        return {k: v * scale for k, v in fn(*args, **named, **kwargs).items()}
    return bound


def _check_lengths(targets, outputs) -> None:
    if len(targets) != len(outputs):
        raise ValueError(f"metric got {len(targets)} targets but {len(outputs)} model outputs")


# ----------------------------------------------------------------------------- text metrics

@METRICS.register("accuracy")
def accuracy(targets: Sequence, predictions: Sequence[str]) -> dict[str, float]:
    """Fraction of predictions equal to (one of) their reference(s)."""
    _check_lengths(targets, predictions)
    if not targets:
        return {"accuracy": float("nan")}
    hits = sum(_text(p) in references(t) for t, p in zip(targets, predictions))
    return {"accuracy": hits / len(targets)}


def _is_number(text: str) -> bool:
    return bool(_NUMBER.fullmatch(text.strip()))


def _match(reference: str, prediction: str) -> bool:
    if _is_number(reference):
        return gsm8k_number(reference) == gsm8k_number(prediction)
    return reference.strip() == prediction.strip()


@METRICS.register("exact_match")
def exact_match(targets: Sequence, predictions: Sequence[str]) -> dict[str, float]:
    """Fraction of predictions matching a reference: numbers by value (final number), text exactly."""
    _check_lengths(targets, predictions)
    if not targets:
        return {"exact_match": float("nan")}
    hits = sum(any(_match(r, _text(p)) for r in references(t)) for t, p in zip(targets, predictions))
    return {"exact_match": hits / len(targets)}


def _sentences_per_line(text: str) -> str:
    lines = []
    for line in text.splitlines():
        lines += [s for s in _SENTENCE_END.split(line.strip()) if s]
    return "\n".join(lines)


@functools.lru_cache(maxsize=None)
def _scorer():
    from rouge_score import rouge_scorer  # noqa: PLC0415 - imported when first used
    return rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL", "rougeLsum"], use_stemmer=True)


@METRICS.register("rouge")
def rouge(targets: Sequence, predictions: Sequence[str]) -> dict[str, float]:
    """Mean ROUGE-1/2/L/Lsum F-measure in [0, 1], each the best over an example's references."""
    _check_lengths(targets, predictions)
    keys = ("rouge1", "rouge2", "rougeL", "rougeLsum")
    if not targets:
        return {k: float("nan") for k in keys}
    totals = dict.fromkeys(keys, 0.0)
    scorer = _scorer()
    for target, prediction in zip(targets, predictions):
        refs, prediction = references(target), _text(prediction)
        scores = scorer.score_multi(refs, prediction)
        for key in ("rouge1", "rouge2", "rougeL"):
            totals[key] += scores[key].fmeasure
        lsum = scorer.score_multi([_sentences_per_line(r) for r in refs], _sentences_per_line(prediction))
        totals["rougeLsum"] += lsum["rougeLsum"].fmeasure
    return {k: v / len(targets) for k, v in totals.items()}


@METRICS.register("bleu")
def bleu(targets: Sequence, predictions: Sequence[str]) -> dict[str, float]:
    """Corpus BLEU / 100 with T5's sacrebleu settings; examples may have different numbers of references."""
    import sacrebleu  # noqa: PLC0415 - imported when first used
    _check_lengths(targets, predictions)
    if not targets:
        return {"bleu": float("nan")}
    refs = [references(t) for t in targets]
    width = max(len(r) for r in refs)
    streams = [[r[i] if i < len(r) else None for r in refs] for i in range(width)]
    score = sacrebleu.corpus_bleu([_text(p) for p in predictions], streams, smooth_method="exp",
                                  smooth_value=0.0, force=False, lowercase=False, tokenize="intl",
                                  use_effective_order=False)
    return {"bleu": score.score / 100.0}


def squad_normalize(text: str) -> str:
    """SQuAD v1.1 answer normalization: lowercase, no punctuation, no articles, single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def _token_f1(reference: str, prediction: str) -> float:
    ref, pred = squad_normalize(reference).split(), squad_normalize(prediction).split()
    common = sum((collections.Counter(ref) & collections.Counter(pred)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


@METRICS.register("squad")
def squad(targets: Sequence, predictions: Sequence[str]) -> dict[str, float]:
    """SQuAD exact match and token F1 (normalized answers), each the max over an example's references."""
    _check_lengths(targets, predictions)
    if not targets:
        return {"em": float("nan"), "f1": float("nan")}
    em = f1 = 0.0
    for target, prediction in zip(targets, predictions):
        refs, prediction = references(target), _text(prediction)
        em += max(float(squad_normalize(r) == squad_normalize(prediction)) for r in refs)
        f1 += max(_token_f1(r, prediction) for r in refs)
    return {"em": em / len(targets), "f1": f1 / len(targets)}


# ----------------------------------------------------------------------------- classification metrics

@METRICS.register("f1")
@single_reference
def f1(targets: Sequence, predictions: Sequence[str], *, options: Sequence[str]) -> dict[str, float]:
    """Binary F1 of the positive class, the card's last option (GLUE's label 1: "yes", "equivalent").

    As T5's f1_score_with_invalid: a prediction that is not one of the options counts as wrong.
    """
    from sklearn.metrics import f1_score  # noqa: PLC0415
    _check_lengths(targets, predictions)
    if not targets:
        return {"f1": float("nan")}
    positive = options[-1]
    gold = [_single(t, "f1") == positive for t in targets]
    pred = [_text(p) == positive if _text(p) in options else not g for g, p in zip(gold, predictions)]
    return {"f1": float(f1_score(gold, pred, zero_division=0.0))}


@METRICS.register("mean_multiclass_f1")
@single_reference
def mean_multiclass_f1(targets: Sequence, predictions: Sequence[str], *,
                       options: Sequence[str] | None = None) -> dict[str, float]:
    """Macro F1 over the classes (the card's options, else the target labels), as T5 reports CB.

    A prediction outside the classes is a miss for its example's class and adds no class.
    """
    from sklearn.metrics import f1_score  # noqa: PLC0415
    _check_lengths(targets, predictions)
    gold = [_single(t, "mean_multiclass_f1") for t in targets]
    labels = list(options) if options else sorted(set(gold))
    key = f"mean_{len(labels)}class_f1"
    if not targets:
        return {key: float("nan")}
    value = f1_score(gold, [_text(p) for p in predictions], labels=labels, average="macro", zero_division=0.0)
    return {key: float(value)}


@METRICS.register("matthews_corrcoef")
@single_reference
def matthews_corrcoef(targets: Sequence, predictions: Sequence[str]) -> dict[str, float]:
    """Matthews correlation between target and predicted labels (CoLA)."""
    from sklearn.metrics import matthews_corrcoef as mcc  # noqa: PLC0415
    _check_lengths(targets, predictions)
    if not targets:
        return {"matthews_corrcoef": float("nan")}
    gold = [_single(t, "matthews_corrcoef") for t in targets]
    return {"matthews_corrcoef": float(mcc(gold, [_text(p) for p in predictions]))}


def _to_float(text: str, default: float | None) -> float:
    try:
        return float(_text(text).strip())
    except ValueError:
        if default is None:
            raise ValueError(f"pearson_spearman: target {text!r} is not a number") from None
        return default


@METRICS.register("pearson_spearman")
@single_reference
def pearson_spearman(targets: Sequence, predictions: Sequence[str]) -> dict[str, float]:
    """Pearson and Spearman correlation of numeric answers (STS-B); a non-number prediction is -1, as in T5."""
    from scipy import stats  # noqa: PLC0415
    _check_lengths(targets, predictions)
    gold = [_to_float(_single(t, "pearson_spearman"), None) for t in targets]
    pred = [_to_float(p, -1.0) for p in predictions]
    if len(gold) < 2 or len(set(gold)) < 2 or len(set(pred)) < 2:
        return {"pearson_corrcoef": float("nan"), "spearman_corrcoef": float("nan")}
    return {"pearson_corrcoef": float(stats.pearsonr(gold, pred)[0]),
            "spearman_corrcoef": float(stats.spearmanr(gold, pred)[0])}


# ----------------------------------------------------------------------------- score metrics

@METRICS.register("rank_classification")
def rank_classification(targets: Sequence[tuple], scores: Sequence[float]) -> dict[str, float]:
    """Accuracy of picking the highest-scoring option per example (any of its correct options counts)."""
    _check_lengths(targets, scores)
    best: dict[int, tuple[float, bool]] = {}
    for (example, _option, correct), score in zip(targets, scores):
        score = float(score)
        if example not in best or score > best[example][0]:
            best[example] = (score, bool(correct))
    if not best:
        return {"rank_accuracy": float("nan")}
    return {"rank_accuracy": sum(c for _, c in best.values()) / len(best)}


def is_score_metric(fn: Callable) -> bool:
    return _positional(fn) == ("targets", "scores")
