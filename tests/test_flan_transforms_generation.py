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
    assert T("samsum")({"dialogue": "", "summary": "problem with the content"}) is None
    assert T("samsum")({"dialogue": "A: hi", "summary": " "}) is None


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


# ----------------------------------------------------------------------------- real files (FLANX_DATA_DIR)

def _flan2021_card(name):
    from flanx import paths  # noqa: PLC0415
    from flanx.data import card_files  # noqa: PLC0415
    (card,) = card_files.load_card_file(paths.tasks_dir() / "flan2021" / f"{name}.yaml")
    return card


def _render(card, template, split, limit):
    from flanx.data import render  # noqa: PLC0415
    from flanx.data.cards import TaskSpec  # noqa: PLC0415
    fmt = "zsopt" if card.has_options else "zsnoopt"
    return render.render_examples(card, TaskSpec(f"{card.name}_check_{template}", card.name, (template,), fmt),
                                  split, limit=limit)


@pytest.mark.needs_data
def test_samsum_local_files_mirror_flans_splits_and_render(data_root):
    from flanx.data import render  # noqa: PLC0415
    card = _flan2021_card("samsum")
    assert card.variant == "local" and card.alternate.source == {"type": "tfds", "name": "samsum:1.0.0"}
    counts = {split: render.count_examples(card, split) for split in card.splits}
    # FLAN: train, validation[:200], test; one train row has an empty dialogue and is dropped.
    assert counts == {"train": 14732 - 1, "validation": 200, "test": 819}
    assert counts == {s: spec["num_examples"] for s, spec in card.splits.items()}
    (first,) = _render(card, 0, "train", 1)
    assert first["inputs_pretokenized"] == ("Amanda: I baked  cookies. Do you want some?\nJerry: Sure!\n"
                                            "Amanda: I'll bring you tomorrow :-)\n\nSum up this chat in a sentence or two.")
    assert first["targets_pretokenized"] == "Amanda baked cookies and will bring Jerry some tomorrow."
    rows = render.sources.load_rows(card, "train")
    leon = rows[13]  # id 13729567: "Leon: <file_photo>\r\nArthur: that actually looks nice"
    assert "Leon:  \nArthur: that actually looks nice" in leon["dialogue"] and "<file_photo>" not in leon["dialogue"]
    assert not any("\r" in r["dialogue"] for r in rows)
    (inverted,) = _render(card, 8, "train", 1)  # inverted: write the chat from its summary
    assert inverted["inputs_pretokenized"].endswith("Amanda baked cookies and will bring Jerry some tomorrow.")
    assert inverted["targets_pretokenized"].startswith("Amanda: I baked  cookies.")


@pytest.mark.needs_data
def test_ag_news_local_test_file_is_evaluation_only(data_root, tmp_path, monkeypatch):
    from flanx import paths  # noqa: PLC0415
    from flanx.data import mixtures, render  # noqa: PLC0415
    monkeypatch.setenv(paths.TFDS_DIR_ENV, str(tmp_path))  # no prepared TFDS data: only the local file
    card = _flan2021_card("ag_news_subset")
    assert card.variant == "local" and set(card.splits) == {"test"}   # the local file is AG News's test split
    assert render.count_examples(card, "test") == 7600
    assert render.num_examples(card, "train") == (30000, "recorded")  # FLAN's train[:30000], from TFDS only
    assert mixtures.needs_preparing(card)  # no training rows here: training mixtures leave it out
    with pytest.raises(paths.MissingDataError):  # training rows never come from the test file
        render.sources.load_rows(card, "train")
    (first,) = _render(card, 1, "test", 1)
    assert first["inputs_pretokenized"].startswith("Classify the topic of this news item.\n\n"
                                                   "Headline: Fears for T N pension after talks\nStory: Unions")
    assert first["inputs_pretokenized"].endswith("OPTIONS:\n- World\n- Sports\n- Business\n- Science/Tech")
    assert first["targets_pretokenized"] == "Business"   # class 3 of the file
    topics = [r["label"] for r in render.sources.load_rows(card, "test")]
    assert {t: topics.count(t) for t in set(topics)} == {"World": 1900, "Sports": 1900, "Business": 1900,
                                                         "Science/Tech": 1900}
