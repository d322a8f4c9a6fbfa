"""FLAN 2021 classification row transforms on hand-made rows shaped like the TFDS features."""
from __future__ import annotations

import numpy as np
import pytest

from flanx.data import render, sources
from flanx.data.cards import load_card, task_specs
from flanx.data.flan_transforms import classification as cls
from flanx.data.transforms import ROW_TRANSFORMS, DataFormatError

NAMES = ("snli", "sentiment140", "imdb_reviews", "yelp_polarity_reviews", "glue_qqp", "stsb", "winogrande",
         "definite_pronoun_resolution")


def test_every_transform_is_registered_by_importing_flanx_data_transforms():
    assert all(ROW_TRANSFORMS[name] is getattr(cls, name) for name in NAMES)


def test_snli_drops_rows_without_a_gold_label():
    rows = [{"premise": "p", "hypothesis": "h", "label": label} for label in (0, 1, 2, -1)]
    assert [cls.snli(r) for r in rows] == rows[:3] + [None]


@pytest.mark.parametrize("polarity, label", [(0, 0), (2, 0), (4, 1), (3, 1), (1, 0)])
def test_sentiment140_counts_only_polarity_3_and_4_as_positive(polarity, label):
    row = {"text": "great day", "polarity": np.int32(polarity)}
    assert cls.sentiment140(row) == {"text": "great day", "polarity": polarity, "label": label}


def test_imdb_line_breaks_become_newlines():
    row = {"text": "Loved it.<br /><br />Go see it.", "label": 1}
    assert cls.imdb_reviews(row)["text"] == "Loved it.\n\nGo see it."


def test_yelp_unescapes_quotes_and_literal_newlines():
    raw = 'The \\""best\\"" tacos.\\nWill return.'   # as stored: backslash, two quotes; backslash, n
    assert cls.yelp_polarity_reviews({"text": raw, "label": 1})["text"] == 'The "best" tacos. Will return.'


def test_qqp_doubled_quotes_become_apostrophes_in_both_questions():
    out = cls.glue_qqp({"question1": 'What is ""AI""?', "question2": b'Why ""so""?', "label": 0})
    assert (out["question1"], out["question2"]) == ("What is 'AI'?", "Why 'so'?")


@pytest.mark.parametrize("label, score", [(3.8, "4"), (0.2, "0"), (2.5, "2"), (3.5, "4"), (5.0, "5"),
                                          (np.float32(1.6), "2")])
def test_stsb_score_is_the_label_printed_without_decimals(label, score):
    # "%.0f" rounds half to even, as C's printf (TensorFlow's as_string with precision 0) does.
    assert cls.stsb({"sentence1": "a", "sentence2": "b", "label": label})["score"] == score == "%.0f" % label


def test_stsb_rejects_a_label_that_is_not_a_number():
    with pytest.raises(DataFormatError, match="field 'label'"):
        cls.stsb({"label": "high"})


def test_winogrande_splits_at_the_blank_and_completes_each_option():
    row = {"sentence": "Sarah was a much better surgeon than Maria so _ always got the harder cases.",
           "option1": "Sarah", "option2": "Maria", "label": 0}
    out = cls.winogrande(row)
    assert out["context"] == "Sarah was a much better surgeon than Maria so "
    assert out["options"] == ["Sarah always got the harder cases.", "Maria always got the harder cases."]
    assert out["answer"] == out["options"][0]
    assert cls.winogrande(dict(row, label=1))["answer"] == "Maria always got the harder cases."


def test_winogrande_rejects_a_sentence_without_a_blank_and_a_bad_label():
    with pytest.raises(DataFormatError, match="no '_' blank"):
        cls.winogrande({"sentence": "No blank here.", "option1": "a", "option2": "b", "label": 0})
    with pytest.raises(DataFormatError, match="outside 0..1"):
        cls.winogrande({"sentence": "A _ b.", "option1": "a", "option2": "b", "label": 2})


def test_dpr_candidates_become_options_and_the_label_picks_the_answer():
    row = {"sentence": "The bee landed on the flower because it had pollen.", "pronoun": "it",
           "candidates": np.array([b"The bee", b"the flower"], dtype=object), "label": 1}
    out = cls.definite_pronoun_resolution(row)
    assert out["options"] == ["The bee", "the flower"] and out["answer"] == "the flower"


def test_transforms_inside_a_card_render_options_and_answers():
    """A Winogrande-like card on in-memory rows: per-row options reach the prompt and rank classification."""
    rows = [{"sentence": "The cup did not fit in the box because _ was too big.", "option1": "the cup",
             "option2": "the box", "label": 0}]
    card = load_card({
        "name": "wino_check", "source": {"type": "hf", "dataset": {"validation": rows}},
        "splits": {"validation": {"name": "validation"}}, "row_transform": "winogrande",
        "fields": {"context": "context", "options": "options", "answer": "answer"},
        "options_field": "options", "answer_field": "answer", "formats": ["zsopt"],
        "templates": [{"input": "Finish the sentence: {context}{options}", "target": "{answer}"}]})
    assert sources.load_rows(card, "validation")[0]["answer"] == "the cup was too big."
    scoring = next(s for s in task_specs(card) if s.scoring and s.per_template)
    examples = render.render_examples(card, scoring, "validation")
    assert examples[0]["inputs_pretokenized"] == (
        "Finish the sentence: The cup did not fit in the box because \n\n"
        "OPTIONS:\n- the cup was too big.\n- the box was too big.")
    assert [(e["targets_pretokenized"], e["is_correct"]) for e in examples] == [
        ("the cup was too big.", True), ("the box was too big.", False)]
