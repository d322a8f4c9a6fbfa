"""Edit-distance metric of the FLAN text-formatting tasks (true_case, fix_punct, word_segment).

`edit_distance` (registered in `flanx.eval.metrics.METRICS`) is T5's
word-level edit distance: target and prediction are lower-cased and split at
every character that is not a word character (so punctuation and spaces
separate words and count as empty words), and the Levenshtein distance
between the two word lists is computed with the `editdistance` library.
It reports the distribution over examples (`mean_edit`, `median_edit`,
`min_edit`, `max_edit`, `sum_edit`): counts of word edits, lower is better,
not fractions, so a card's `metric_scale` should stay 1.
"""
from __future__ import annotations

import re
import statistics
from typing import Sequence

from flanx.eval.metrics import METRICS, _check_lengths, _single, _text, single_reference

_NON_WORD = re.compile(r"\W")


def word_edit_distance(target: str, prediction: str, lower: bool = True) -> int:
    """Word-level Levenshtein distance, splitting at every non-word character as T5 does."""
    import editdistance  # noqa: PLC0415 - imported when first used
    if lower:
        target, prediction = target.lower(), prediction.lower()
    return int(editdistance.eval(_NON_WORD.split(prediction), _NON_WORD.split(target)))


@METRICS.register("edit_distance")
@single_reference
def edit_distance(targets: Sequence, predictions: Sequence[str]) -> dict[str, float]:
    """Mean, median, min, max and sum over examples of the word-level edit distance (lower is better)."""
    _check_lengths(targets, predictions)
    keys = ("mean_edit", "median_edit", "min_edit", "max_edit", "sum_edit")
    if not targets:
        return {k: float("nan") for k in keys}
    dists = [word_edit_distance(_single(t, "edit_distance"), _text(p)) for t, p in zip(targets, predictions)]
    return {"mean_edit": sum(dists) / len(dists), "median_edit": float(statistics.median(dists)),
            "min_edit": float(min(dists)), "max_edit": float(max(dists)), "sum_edit": float(sum(dists))}
