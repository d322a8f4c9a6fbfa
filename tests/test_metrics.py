"""Metrics and postprocessors, checked against values worked out by hand."""
from __future__ import annotations

import math

import pytest

from flanx.eval import metrics


def test_rouge_by_hand():
    # "the cat sat" vs "the cat": unigram P = 2/2, R = 2/3 -> F = 0.8; bigram P = 1/1, R = 1/2 -> F = 2/3.
    m = metrics.rouge(["the cat sat"], ["the cat"])
    assert m["rouge1"] == pytest.approx(0.8) and m["rouge2"] == pytest.approx(2 / 3)
    assert m["rougeL"] == pytest.approx(0.8) and m["rougeLsum"] == pytest.approx(0.8)
    assert metrics.rouge(["Same words here."], ["same words here"]) == pytest.approx(
        {"rouge1": 1.0, "rouge2": 1.0, "rougeL": 1.0, "rougeLsum": 1.0})
    # Averaged over examples: 1.0 and 0.0.
    assert metrics.rouge(["a b", "c d"], ["a b", "x y"])["rouge1"] == pytest.approx(0.5)


def test_rouge_stems_and_lsum_splits_sentences():
    assert metrics.rouge(["the dogs were running"], ["the dog was run"])["rouge1"] == pytest.approx(0.75)
    # Swapped sentences: the plain LCS drops, the summary-level LCS (one sentence per line) does not.
    m = metrics.rouge(["Tom ate lunch. Ann went home."], ["Ann went home. Tom ate lunch."])
    assert m["rougeLsum"] == pytest.approx(1.0)
    assert m["rougeL"] == pytest.approx(0.5)  # LCS "ann went home" or "tom ate lunch": 3 of 6 words


def test_accuracy_exact_match_and_rank_classification():
    assert metrics.accuracy(["yes", "no", "no"], ["yes", "no", "yes"]) == {"accuracy": pytest.approx(2 / 3)}
    assert metrics.exact_match(["72", "1000", "5"], ["So the answer is 72.", "It is 1,000", "no idea"]) == \
        {"exact_match": pytest.approx(2 / 3)}
    targets = [(0, 0, False), (0, 1, True), (1, 0, True), (1, 1, False), (1, 2, False)]
    scores = [-3.0, -1.0, -2.0, -0.5, -9.0]  # example 0 picks option 1 (right), example 1 picks option 1 (wrong)
    assert metrics.rank_classification(targets, scores) == {"rank_accuracy": 0.5}
    assert math.isnan(metrics.accuracy([], [])["accuracy"])
    with pytest.raises(ValueError, match="2 targets but 1"):
        metrics.accuracy(["a", "b"], ["a"])


def test_postprocessors():
    assert metrics.strip(b"  yes \n") == "yes"
    assert metrics.normalize("  It Is  NOT possible.  ") == "it is not possible"
    assert metrics.gsm8k_number("... 48+24 = 72 clips.\nSo the answer is 72.") == "72"
    assert metrics.gsm8k_number("The answer is 1,234.50 dollars") == "1234.5"
    assert metrics.gsm8k_number("-3") == "-3" and metrics.gsm8k_number("none") == "none"
    assert metrics.bbh_answer("Let's think. So the answer is (B).") == "(B)"
    assert metrics.bbh_answer("No") == "No"
    assert metrics.rank_target("opt", example={"idx": [3, 2], "is_correct": 1}, is_target=True) == (3, 2, True)
    assert metrics.rank_target("opt", example={"idx": [3, 2], "is_correct": 1}) == "opt"
    assert set(metrics.METRICS) >= {"rouge", "accuracy", "exact_match", "rank_classification", "bleu", "squad",
                                    "f1", "mean_multiclass_f1", "matthews_corrcoef", "pearson_spearman", "edit_distance"}  # + plug-ins


# ----------------------------------------------------------------------------- FLAN / T5 metrics

def test_bleu_matches_hand_computed_corpus_bleu():
    # Hypothesis vs reference: n-gram precisions 5/6, 3/5, 1/4, 0/3; sacrebleu's "exp" smoothing turns the
    # first zero count into 1 / (2 * 3). Equal lengths: brevity penalty 1. BLEU = geometric mean.
    expected = (5 / 6 * 3 / 5 * 1 / 4 * 1 / 6) ** 0.25
    assert metrics.bleu(["the cat is on the mat"], ["the cat sat on the mat"]) == {"bleu": pytest.approx(expected)}
    # A second reference equal to the hypothesis makes every n-gram match.
    assert metrics.bleu([["the cat is on the mat", "the cat sat on the mat"]], ["the cat sat on the mat"]) == \
        {"bleu": pytest.approx(1.0)}
    # Examples with fewer references: padding a missing one equals repeating the one it has.
    ragged = metrics.bleu([["the cat is on the mat", "a dog"], "one two three four"],
                          ["the cat sat on the mat", "one two three five"])
    padded = metrics.bleu([["the cat is on the mat", "a dog"], ["one two three four"] * 2],
                          ["the cat sat on the mat", "one two three five"])
    assert ragged == pytest.approx(padded) and 0 < ragged["bleu"] < 1


def test_squad_normalizes_and_takes_the_best_reference():
    assert metrics.squad_normalize("The  Eiffel-Tower, in Paris!") == "eiffeltower in paris"
    assert metrics.squad_normalize("an apple and a pear") == "apple and pear"
    # "in the big city" vs "big city center": tokens [in, big, city] / [big, city, center]: P = R = 2/3.
    m = metrics.squad([["Eiffel tower", "x"], "big city center"], ["The Eiffel Tower!", "in the big city"])
    assert m == {"em": pytest.approx(0.5), "f1": pytest.approx((1 + 2 / 3) / 2)}
    assert metrics.squad([["nope", "Big City"]], ["big city"]) == {"em": 1.0, "f1": 1.0}


def test_f1_counts_answers_outside_the_options_as_wrong():
    # Positive class "yes" (the last option). gold 1 1 0 0 1, predicted 1 0 0 1 and "maybe" (wrong: 0).
    # TP 1, FP 1, FN 2: F1 = 2 / (2 + 1 + 2).
    m = metrics.f1(["yes", "yes", "no", "no", "yes"], ["yes", "no", "no", "yes", "maybe"], options=["no", "yes"])
    assert m == {"f1": pytest.approx(0.4)}
    # An invalid answer on a negative example counts as a false positive.
    assert metrics.f1(["no", "yes"], ["??", "yes"], options=["no", "yes"]) == {"f1": pytest.approx(2 / 3)}


def test_mean_multiclass_f1_and_matthews_by_hand():
    # yes: TP 1, FN 1 -> 2/3; no: TP 1, FP 1 -> 2/3; maybe: TP 0 -> 0. Mean 4/9; "foo" adds no class.
    m = metrics.mean_multiclass_f1(["yes", "yes", "no", "maybe"], ["yes", "no", "no", "foo"],
                                   options=["yes", "no", "maybe"])
    assert m == {"mean_3class_f1": pytest.approx(4 / 9)}
    assert metrics.mean_multiclass_f1(["a", "b"], ["a", "b"]) == {"mean_2class_f1": 1.0}
    # Positive "a": TP 2, FN 1, TN 2, FP 0 -> (2*2 - 0*1) / sqrt(2 * 3 * 2 * 3) = 2/3.
    assert metrics.matthews_corrcoef(list("aabba"), list("abbba")) == {"matthews_corrcoef": pytest.approx(2 / 3)}
    with pytest.raises(ValueError, match="one reference per example"):
        metrics.matthews_corrcoef([["a", "b"]], ["a"])


def test_pearson_spearman_against_numpy():
    import numpy as np
    gold, pred_text = [1.0, 2.0, 3.0, 4.5, 0.2], ["1.5", "2", "not a number", "4", "0.0"]
    pred = [1.5, 2.0, -1.0, 4.0, 0.0]  # a non-number counts as -1, as in T5
    m = metrics.pearson_spearman([str(g) for g in gold], pred_text)
    assert m["pearson_corrcoef"] == pytest.approx(np.corrcoef(gold, pred)[0, 1])
    ranks = lambda x: np.argsort(np.argsort(x))  # noqa: E731 - no ties here
    assert m["spearman_corrcoef"] == pytest.approx(np.corrcoef(ranks(gold), ranks(pred))[0, 1])


def test_rouge_accuracy_exact_match_take_the_best_reference():
    refs, pred = ["the dog ran home fast", "a cat sat on the mat"], "the cat sat on a mat"
    best = metrics.rouge([refs], [pred])
    for key, value in best.items():
        assert value == pytest.approx(max(metrics.rouge([r], [pred])[key] for r in refs)), key
    assert metrics.accuracy([["a", "b"], ["c"]], ["b", "b"]) == {"accuracy": 0.5}
    # Numbers compare by value (a chain of thought's final number); text compares exactly.
    assert metrics.exact_match([["12", "twelve"], "Paris", "Paris"], ["so 12.0", " Paris", "paris"]) == \
        {"exact_match": pytest.approx(2 / 3)}


def test_rank_classification_with_several_correct_options():
    targets = [(0, 0, True), (0, 1, True), (0, 2, False), (1, 0, True), (1, 1, True), (1, 2, False)]
    scores = [-5.0, -1.0, -3.0, -4.0, -6.0, -2.0]  # example 0 picks option 1 (correct), example 1 option 2 (wrong)
    assert metrics.rank_classification(targets, scores) == {"rank_accuracy": 0.5}


def test_scale_options_binding_and_references_postprocessor():
    bound = metrics.bind_metric(metrics.f1, options=["no", "yes"], scale=100)
    assert bound.__name__ == "f1" and bound(targets=["yes", "no"], predictions=["yes", "yes"]) == \
        {"f1": pytest.approx(100 * 2 / 3)}
    assert metrics.bind_metric(metrics.accuracy) is metrics.accuracy
    scaled = metrics.bind_metric(metrics.rank_classification, scale=100)
    assert scaled(targets=[(0, 0, True), (0, 1, False)], scores=[0.0, -1.0]) == {"rank_accuracy": 100.0}
    post = metrics.with_references(metrics.normalize)
    example = {"references": b'["First One.", "second"]'}
    assert post("First", example=example, is_target=True) == ["first one", "second"]
    assert post(" Pred. ", example=example) == "pred"
    assert post("T.", example={}, is_target=True) == "t"


def test_user_metric_and_postprocessor_registration_checks_signatures():
    @metrics.METRICS.register("test_first_word")
    def first_word(targets, predictions):
        return {"first_word": sum(t.split()[0] == p.split()[0] for t, p in zip(targets, predictions)) / len(targets)}

    try:
        assert metrics.METRICS["test_first_word"] is first_word
        with pytest.raises(TypeError, match=r"metric 'bad' must take \(targets, predictions\)"):
            metrics.METRICS.register("bad", lambda preds, refs: {})
        with pytest.raises(TypeError, match="postprocessor 'bad' must accept"):
            metrics.POSTPROCESSORS.register("bad", lambda text: text)
        with pytest.raises(ValueError, match="metric 'rouge' is already registered"):
            metrics.METRICS.register("rouge", first_word)
    finally:
        metrics.METRICS.unregister("test_first_word")
    assert "bad" not in metrics.METRICS and "bad" not in metrics.POSTPROCESSORS
