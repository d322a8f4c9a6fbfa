"""Row transforms of the FLAN 2021 generation cards, on hand-made rows (plain Python values and the
numpy/bytes values the tfds source yields for nested features)."""
from __future__ import annotations

import numpy as np
import pytest

from flanx.data.flan_transforms import generation
from flanx.data.transforms import ROW_TRANSFORMS, DataFormatError


def T(name):
    return ROW_TRANSFORMS[name]


def _bytes_array(items):
    return np.array([s.encode() for s in items], dtype=object)


# ----------------------------------------------------------------------------- summarization

def test_aeslc_flattens_newlines_and_drops_empty_emails():
    row = T("aeslc")({"email_body": "Hi team,\nthe call moved.\n", "subject_line": "Call\nmoved"})
    assert row["body"] == "Hi team, the call moved. " and row["subject"] == "Callmoved"
    assert T("aeslc")({"email_body": "", "subject_line": ""}) is None
    assert T("aeslc")({"email_body": b"", "subject_line": b"x"})["subject"] == "x"


def test_cnn_dailymail_keeps_the_story_after_the_dateline():
    cnn = T("cnn_dailymail")({"article": "LONDON, England (Reuters) -- Markets fell on Monday.",
                              "highlights": "Markets fell .\nTraders worried ."})
    assert cnn["text"] == "Markets fell on Monday."
    assert cnn["highlights"] == "Markets fell. Traders worried."
    mail = ("By . Jane Roe . PUBLISHED: . 10:07 EST, 30 March 2013 . | . UPDATED: . 11:15 EST, 30 March 2013 . "
            "A dog was rescued from a frozen lake.")
    assert T("cnn_dailymail")({"article": mail, "highlights": "h"})["text"] == "A dog was rescued from a frozen lake."
    # No dateline: the article stays whole; a separator deep inside the story is not a dateline.
    plain = "Police said the man was arrested."
    assert T("cnn_dailymail")({"article": plain, "highlights": "h"})["text"] == plain
    deep = "x" * (generation.CNN_DATELINE_MAX_CHARS + 10) + " (AP) -- quoted wire copy."
    assert T("cnn_dailymail")({"article": deep, "highlights": "h"})["text"] == deep


def test_gigaword_drops_masked_rows():
    keep = {"document": "australia 's current account deficit shrunk", "summary": "deficit narrows"}
    assert T("gigaword")(keep) == keep
    assert T("gigaword")({"document": "the UNK said", "summary": "x"}) is None
    assert T("gigaword")({"document": "shares rose #.# percent", "summary": "shares up"}) is None


def test_samsum_turns_crlf_to_newlines_and_removes_each_tag():
    row = T("samsum")({"dialogue": "Ann: look <file_photo>\r\nBob: nice! <file_gif> haha", "summary": "s"})
    assert row["dialogue"] == "Ann: look  \nBob: nice!   haha"
    assert T("samsum")({"dialogue": b"A: hi", "summary": "s"})["dialogue"] == "A: hi"


def test_opinion_abstracts_number_the_first_ten_items():
    reviews = [f"review {i}" for i in range(1, 13)]
    for critics in ({"key": _bytes_array(["c"] * 12), "value": _bytes_array(reviews)},   # tfds: dict of arrays
                    [{"key": "c", "value": r} for r in reviews]):                        # hand rows: list of dicts
        row = T("opinion_abstracts_rotten_tomatoes")({
            "_movie_name": b"the_big_lebowski", "_movie_id": b"m1", "_critic_consensus": "Dude abides.",
            "_critics": critics})
        assert row["movie"] == "the big lebowski" and row["first_review"] == "review 1"
        lines = row["numbered_reviews"].split("\n")
        assert len(lines) == 10 and lines[0] == "1. review 1" and lines[9] == "10. review 10"
        assert row["critic_consensus"] == "Dude abides."
    assert T("opinion_abstracts_rotten_tomatoes")({"_movie_name": "m", "_critic_consensus": "c",
                                                   "_critics": {"key": [], "value": []}}) is None
    debate = T("opinion_abstracts_idebate")({
        "_debate_name": "Ban homework", "_claim_id": "c1", "_claim": "Homework harms sleep.",
        "_argument_sentences": {"key": _bytes_array(["1", "2"]), "value": _bytes_array(["Kids sleep less.", "Tired."])}})
    assert debate["argument_sentences"] == "1. Kids sleep less.\n2. Tired."
    assert debate["claim"] == "Homework harms sleep." and debate["debate_name"] == "Ban homework"
    with pytest.raises(DataFormatError, match="_argument_sentences"):
        T("opinion_abstracts_idebate")({"_debate_name": "d", "_claim": "c", "_argument_sentences": "oops"})


# ----------------------------------------------------------------------------- structure to text

def test_web_nlg_joins_triples_and_keeps_every_reference():
    row = T("web_nlg_en")({"input": _bytes_array(["Alan_Bean | birthPlace | Wheeler,_Texas",
                                                  "Alan_Bean | occupation | Test_pilot"]),
                           "target": "Alan Bean was born in Wheeler, Texas.",
                           "references": _bytes_array(["Alan Bean, a test pilot, was born in Wheeler, Texas.",
                                                       "Alan Bean was born in Wheeler, Texas."])})
    assert row["input_string"] == "Alan Bean, birthPlace, Wheeler, Texas; Alan Bean, occupation, Test pilot"
    # Target first (templates show the first reference), duplicates once.
    assert row["references"] == ["Alan Bean was born in Wheeler, Texas.",
                                 "Alan Bean, a test pilot, was born in Wheeler, Texas."]


def test_common_gen_e2e_and_dart():
    cg = T("common_gen")({"concepts": ["dog", "frisbee", "catch"], "target": "A dog catches a frisbee.",
                          "references": []})
    assert cg["concepts"] == "dog, frisbee, catch" and cg["concepts_newline"] == "dog\nfrisbee\ncatch"
    assert cg["references"] == ["A dog catches a frisbee."]
    e2e = T("e2e_nlg")({"meaning_representation": "name[The Eagle], eatType[coffee shop]", "target": "t",
                        "references": np.array([], dtype=object)})
    assert e2e["meaning_representation"] == "name = The Eagle, eatType = coffee shop"
    dart = T("dart")({"tripleset": _bytes_array(["[TABLECONTEXT] | [TITLE] | Lakers", "Lakers | COACH | Ham"]),
                      "target": "Ham coaches the Lakers.", "references": _bytes_array(["The Lakers' coach is Ham."])})
    assert dart["tripleset"] == " |  | Lakers; Lakers | COACH | Ham"
    assert dart["tripleset_newline"] == "[TABLECONTEXT] | [TITLE] | Lakers\nLakers | COACH | Ham"
    assert dart["references"] == ["Ham coaches the Lakers.", "The Lakers' coach is Ham."]
    with pytest.raises(DataFormatError, match="'concepts'"):
        T("common_gen")({"concepts": "dog", "target": "t", "references": []})


# ----------------------------------------------------------------------------- translation

@pytest.mark.parametrize("code,name", [("es", "Spanish"), ("fr", "French"), ("de", "German"), ("tr", "Turkish"),
                                       ("cs", "Czech"), ("fi", "Finnish"), ("ro", "Romanian"), ("ru", "Russian")])
def test_translation_goes_from_english_to_the_other_language(code, name):
    row = T("translation")({code: f"<{code}>".encode(), "en": b"Hello."})
    assert (row["lang1"], row["lang2"], row["sent1"], row["sent2"]) == ("English", name, "Hello.", f"<{code}>")


def test_translation_reads_a_nested_pair_and_rejects_others():
    row = T("translation")({"translation": {"de": "Hallo.", "en": "Hello."}})
    assert row["sent2"] == "Hallo." and row["lang2"] == "German"
    with pytest.raises(DataFormatError, match="one other language"):
        T("translation")({"de": "Hallo.", "fr": "Salut."})
    with pytest.raises(DataFormatError, match="one other language"):
        T("translation")({"en": "Hello."})


# ----------------------------------------------------------------------------- text formatting

def test_text_formatting_inputs_and_filters():
    sentence = "Copenhagen's harbour, built in 1167, is busy."
    tc = T("true_case")({"en": sentence, "da": "x"})
    assert tc["lower"] == "copenhagen's harbour, built in 1167, is busy." and tc["answer"] == sentence
    assert T("true_case")({"en": "already lower case.", "da": "x"}) is None
    fp = T("fix_punct")({"en": sentence, "da": "x"})
    assert fp["no_punct"] == "Copenhagens harbour built in 1167 is busy" and fp["answer"] == sentence
    assert T("fix_punct")({"en": "No punctuation here", "da": "x"}) is None
    assert T("fix_punct")({"en": "Café, naïve.", "da": "x"})["no_punct"] == "Café naïve"   # letters stay
    ws = T("word_segment")({"en": sentence, "da": "x"})
    assert ws["no_space"] == "Copenhagen'sharbour,builtin1167,isbusy." and ws["answer"] == sentence
    with pytest.raises(DataFormatError, match="'en'"):
        T("word_segment")({"da": "x"})
