"""FLAN 2021 QA row transforms (flanx.data.flan_transforms.qa) on hand-made rows shaped like TFDS records.

The rows look the way the tfds source yields them (`tfds.as_numpy`, then top-level text decoded):
top-level text is `str`, a `Sequence` of text is a numpy array of `bytes`, nested dicts hold numpy
arrays, `bytes` and numpy scalars, ClassLabels are ints. Each transform is also run on the same row
with plain lists and `str`, and must give the same result. Last, each card of
`tasks/flan2021/` that uses them renders its row: evaluation targets and references, and the
correct option(s) of rank classification, as FLAN defines them.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from flanx import paths
from flanx.data import render, sources
from flanx.data.card_files import load_card_file
from flanx.data.cards import load_card, task_specs
from flanx.data.templates import render_options
from flanx.data.transforms import ROW_TRANSFORMS, DataFormatError


def _b(*texts: str) -> np.ndarray:
    """A TFDS `Sequence(Text)` as tfds.as_numpy gives it: an object array of UTF-8 bytes."""
    return np.array([t.encode() for t in texts], dtype=object)


def plain(value):
    """The same value with numpy arrays as lists, bytes as str and numpy scalars as Python values."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return [plain(v) for v in value.tolist()]
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.generic):
        return value.item()
    return value


ROWS = {
    "squad_v1": {"id": "5733be", "title": "University_of_Notre_Dame", "context": "The college was founded in 1842.",
                 "question": "When was the college founded?",
                 "answers": {"text": _b("1842", "in 1842"), "answer_start": np.array([27, 24], np.int32)}},
    "squad_v2": {"id": "5a8d7b", "title": "Normans", "context": "The Normans lived in Normandy.",
                 "question": "Who gave Normandy its name?", "is_impossible": True,
                 "answers": {"text": _b(), "answer_start": np.array([], np.int32)},
                 "plausible_answers": {"text": _b("The Normans"), "answer_start": np.array([0], np.int32)}},
    "openbookqa": {"question": {"stem": b"A magnet will stick to", "choice_A": b"wood", "choice_B": b"an iron nail",
                                "choice_C": b"glass", "choice_D": b"paper"},
                   "fact1": "magnets attract iron", "humanScore": np.float32(1.0), "clarity": np.float32(2.0),
                   "turkIdAnonymized": "x1", "answerKey": 1},
    "trivia_qa": {"question": "Which planet is known as the Red Planet?", "question_id": "tc_1",
                  "question_source": "http://example.org",
                  "entity_pages": {"doc_source": _b(), "filename": _b(), "title": _b(), "wiki_context": _b()},
                  "search_results": {"description": _b(), "filename": _b(), "rank": np.array([], np.int32),
                                     "title": _b(), "url": _b(), "search_context": _b()},
                  "answer": {"aliases": _b("Mars", "Planet Mars"), "normalized_aliases": _b("mars", "planet mars"),
                             "matched_wiki_entity_name": b"", "normalized_matched_wiki_entity_name": b"",
                             "normalized_value": b"mars", "type": b"WikipediaEntity", "value": b"Mars"}},
    "natural_questions": {"question": "who wrote the declaration of independence",
                          "answer": _b("Thomas Jefferson", "Jefferson")},
    "arc": {"id": "Mercury_1", "question": "Which of these conducts electricity best?",
            "choices": {"text": _b("wood", "rubber", "copper", "plastic"), "label": np.array([0, 1, 2, 3])},
            "answerKey": 2},
    "copa": {"premise": "The man broke his toe.", "choice1": "He dropped a hammer on his foot.",
             "choice2": "He got a hole in his sock.", "question": "cause", "idx": 0, "label": 0},
    "piqa": {"id": "p1", "goal": "To open a jar with a tight lid,", "sol1": "run the lid under hot water.",
             "sol2": "put the jar in the freezer.", "label": 0},
    "hellaswag": {"context": "[header] How to tie a tie [title] Drape the tie. [step] Put it around",
                  "endings": _b("[substeps] your neck.", "the dog.", "a tree.", "[title] the car."),
                  "activity_label": "Clothing", "label": 0, "split_type": "indomain", "source_id": "wikihow~1"},
    "story_cloze": {"context": "Ann baked a cake. She let it cool. She added icing. Her friends came over.",
                    "endings": _b("They ate the cake together.", "Ann hates cake."), "label": 1},
    "record": {"passage": "Tom Smith won the race in London.\n@highlight\nSmith wins\n@highlight\nRace report",
               "query": "@placeholder, 25, said he trained for a year.",
               "entities": _b("London", "Tom Smith", "Smith"), "answers": _b("Smith", "Tom Smith"),
               "idx": {"passage": np.int32(0), "query": np.int32(0)}},
    "cosmos_qa": {"context": "I missed the bus, so I walked to work.", "question": "Why did I walk?",
                  "answer0": "I like walking.", "answer1": "I missed the bus.", "answer2": "My car broke.",
                  "answer3": "None of the above choices.", "label": 1, "id": "c1"},
    "quac": {"context": "She was born in Ohio. CANNOTANSWER", "followup": "y", "yesno": "x",
             "question": "Where was she born?", "section_title": "Early life", "background": "An American singer.",
             "title": "Jane Doe", "answers": {"text": _b("born in Ohio"), "answer_start": np.array([4], np.int32)},
             "orig_answer": {"text": b"She was born in Ohio.", "answer_start": np.int32(0)}},
    "coqa": {"source": "mctest", "story": "Once there was a cat named Tom. Tom liked milk.",
             "questions": _b("What was the cat's name?", "What did he like?"),
             "answers": {"input_text": _b("Tom", "milk"), "answer_start": np.array([27, 38], np.int32),
                         "answer_end": np.array([30, 46], np.int32)}},
}

# What each transform adds or replaces, worked out by hand from FLAN's preprocessors.
EXPECTED = {
    "squad_v1": {"title": "University of Notre Dame", "answer": "1842", "answers": ["1842", "in 1842"]},
    "squad_v2": {"title": "Normans", "answer": "unanswerable", "answers": ["unanswerable"]},
    "openbookqa": {"question": "A magnet will stick to", "fact": "magnets attract iron",
                   "options": ["wood", "an iron nail", "glass", "paper"], "answer": "an iron nail"},
    "trivia_qa": {"answer": "mars", "answers": ["mars", "planet mars"]},
    "natural_questions": {"question": "who wrote the declaration of independence?", "answer": "Thomas Jefferson",
                          "answers": ["Thomas Jefferson", "Jefferson"]},
    "arc": {"options": ["wood", "rubber", "copper", "plastic"], "answer": "copper"},
    "copa": {"question": "cause", "options": ["He dropped a hammer on his foot.", "He got a hole in his sock."],
             "answer": "He dropped a hammer on his foot."},
    "piqa": {"options": ["run the lid under hot water.", "put the jar in the freezer."],
             "answer": "run the lid under hot water."},
    "hellaswag": {"context": "How to tie a tie \nDrape the tie. \nPut it around",
                  "options": ["your neck.", "the dog.", "a tree.", "the car."], "answer": "your neck."},
    "story_cloze": {"options": ["They ate the cake together.", "Ann hates cake."],
                    "answer": "They ate the cake together."},
    "record": {"passage": "Tom Smith won the race in London.", "query": "",
               "options": ["London, 25, said he trained for a year.", "Tom Smith, 25, said he trained for a year.",
                           "Smith, 25, said he trained for a year."],
               "answers": ["Smith, 25, said he trained for a year.", "Tom Smith, 25, said he trained for a year."],
               "answer": "Smith, 25, said he trained for a year."},
    "cosmos_qa": {"options": ["I like walking.", "I missed the bus.", "My car broke.", "None of the above choices."],
                  "answer": "I missed the bus."},
    "quac": {"answer": "She was born in Ohio."},
    "coqa": {"text": "Once there was a cat named Tom. Tom liked milk.",
             "numbered_questions": "1. What was the cat's name?\n2. What did he like?",
             "numbered_answers": "1. Tom\n2. milk"},
}


@pytest.mark.parametrize("name", sorted(ROWS))
@pytest.mark.parametrize("shape", ["tfds_numpy", "plain_lists"])
def test_transform_builds_flan_fields(name, shape):
    row = ROWS[name] if shape == "tfds_numpy" else plain(ROWS[name])
    out = ROW_TRANSFORMS[name](row)
    got = {k: out[k] for k in EXPECTED[name]}
    assert got == EXPECTED[name]
    assert all(type(v) is str or (type(v) is list and all(type(x) is str for x in v)) for v in got.values())
    assert {k: v for k, v in out.items() if k not in EXPECTED[name]}.keys() == row.keys() - EXPECTED[name].keys()


def test_squad_v2_answerable_rows_keep_every_answer():
    row = dict(ROWS["squad_v2"], is_impossible=np.bool_(False),
               answers={"text": _b("the Normans", "Normans"), "answer_start": np.array([0, 4], np.int32)})
    out = ROW_TRANSFORMS["squad_v2"](row)
    assert (out["answer"], out["answers"]) == ("the Normans", ["the Normans", "Normans"])


def test_trivia_qa_without_aliases_falls_back_to_the_value():
    row = plain(ROWS["trivia_qa"])
    row["answer"]["normalized_aliases"] = []
    assert ROW_TRANSFORMS["trivia_qa"](row)["answers"] == ["mars"]


def test_arc_keeps_only_four_choice_questions():
    for n in (3, 5):
        row = dict(ROWS["arc"], choices={"text": _b(*"abcde"[:n]), "label": np.arange(n)})
        assert ROW_TRANSFORMS["arc"](row) is None


@pytest.mark.parametrize("label", [-1, 4, 255])
def test_hellaswag_drops_rows_without_a_label_0_to_3(label):
    assert ROW_TRANSFORMS["hellaswag"](dict(ROWS["hellaswag"], label=label)) is None


def test_story_cloze_label_counts_from_one():
    assert ROW_TRANSFORMS["story_cloze"](dict(ROWS["story_cloze"], label=2))["answer"] == "Ann hates cake."
    with pytest.raises(DataFormatError, match=r"field 'label': label 0 does not name one of the row's 2 options "
                                              r"\(labels count from 1\)"):
        ROW_TRANSFORMS["story_cloze"](dict(ROWS["story_cloze"], label=0))


def test_record_text_after_the_placeholder_completes_options_and_answers():
    row = dict(ROWS["record"], query="The winner, @placeholder, thanked the crowd.")
    out = ROW_TRANSFORMS["record"](row)
    assert out["query"] == "The winner,"
    assert out["options"] == [e + ", thanked the crowd." for e in ("London", "Tom Smith", "Smith")]
    assert out["answer"] == "Smith, thanked the crowd." and set(out["answers"]) <= set(out["options"])


@pytest.mark.parametrize("name, change, message", [
    ("record", {"query": "No blank here."}, "field 'query': no '@placeholder'"),
    ("record", {"answers": _b()}, "field 'answers': no reference answer"),
    ("squad_v1", {"answers": {"text": _b(), "answer_start": np.array([], np.int32)}},
     "field 'answers.text': no reference answer"),
    ("openbookqa", {"answerKey": 7}, "field 'answerKey': label 7 does not name one of the row's 4 options"),
    ("copa", {"label": "choice1"}, "field 'label': expected an integer label, got 'choice1'"),
    ("squad_v2", {"is_impossible": "maybe"}, "field 'is_impossible': expected true or false"),
    ("natural_questions", {"answer": "Jefferson"}, "field 'answer': expected a list of texts, got str"),
])
def test_malformed_rows_name_the_field(name, change, message):
    row = dict(ROWS[name], **change)
    with pytest.raises(DataFormatError, match=message.replace("(", r"\(").replace(")", r"\)")):
        ROW_TRANSFORMS[name](row)


def test_invalid_utf8_and_missing_nested_feature_are_reported_by_the_source():
    card = load_card({"name": "squad_probe", "source": {"type": "tfds", "name": "squad/v1.1:3.0.0"},
                      "splits": {"train": {"name": "train"}}, "row_transform": "squad_v1",
                      "fields": {"question": "question", "answer": "answer"},
                      "templates": [{"input": "{question}", "target": "{answer}"}]})
    broken = dict(ROWS["squad_v1"], answers={"answer_start": np.array([1], np.int32)})
    with pytest.raises(DataFormatError, match="missing field 'answers.text' needed by row_transform 'squad_v1'"):
        sources.prepare_row(card, "train", broken)
    bad_bytes = dict(ROWS["squad_v1"], answers={"text": np.array([b"\xff"], dtype=object)})
    with pytest.raises(DataFormatError, match="field 'answers.text': not valid UTF-8"):
        sources.prepare_row(card, "train", bad_bytes)


def test_non_ascii_bytes_decode_as_utf8():
    row = dict(ROWS["coqa"], questions=_b("Qui est l\u00e0 ?", "Pourquoi ?"))
    assert ROW_TRANSFORMS["coqa"](row)["numbered_questions"] == "1. Qui est l\u00e0 ?\n2. Pourquoi ?"


def test_flattened_nested_columns_are_accepted():
    row = {k: v for k, v in ROWS["quac"].items() if k != "orig_answer"}
    row["orig_answer/text"] = "She was born in Ohio."
    assert ROW_TRANSFORMS["quac"](row)["answer"] == "She was born in Ohio."


# ----------------------------------------------------------------------------- the cards that use these transforms

EXTRA_ROWS = {  # cards that map TFDS columns directly (no transform), or share one (ARC)
    "drop": {"passage": "The Bears scored 7 points and the Jets 3.", "question": "How many more points?",
             "answer": "4", "validated_answers": _b("4", "four"), "query_id": "q1"},
    "multirc": {"paragraph": "Sam has a red bike.", "question": "What colour is the bike?", "answer": "Red",
                "idx": {"paragraph": np.int32(0), "question": np.int32(0), "answer": np.int32(0)}, "label": 1},
    "bool_q": {"question": "is the sky blue", "passage": "The sky is blue.", "answer": False, "title": "Sky"},
    "math_dataset": {"question": "Solve 2*x + 4 = 10 for x.", "answer": "3"},
    "arc_easy": ROWS["arc"], "arc_challenge": ROWS["arc"],
}
# card: (its row, the correct option(s) of rank classification or None, the evaluation target, its references)
CARD_CASES = {
    "squad_v1": (None, "1842", ["1842", "in 1842"]),
    "squad_v2": (None, "unanswerable", ["unanswerable"]),
    "drop": (None, "4", None),
    "multirc": (["yes"], "yes", None),
    "openbookqa": (["an iron nail"], "an iron nail", None),
    "bool_q": (["no"], "no", None),
    "trivia_qa": (None, "mars", ["mars", "planet mars"]),
    "natural_questions": (None, "Thomas Jefferson", ["Thomas Jefferson", "Jefferson"]),
    "arc_challenge": (["copper"], "copper", None),
    "arc_easy": (["copper"], "copper", None),
    "copa": (["He dropped a hammer on his foot."], "He dropped a hammer on his foot.", None),
    "hellaswag": (["your neck."], "your neck.", None),
    "piqa": (["run the lid under hot water."], "run the lid under hot water.", None),
    "story_cloze": (["They ate the cake together."], "They ate the cake together.", None),
    "record": (["Smith, 25, said he trained for a year.", "Tom Smith, 25, said he trained for a year."],
               "Smith, 25, said he trained for a year.",
               ["Smith, 25, said he trained for a year.", "Tom Smith, 25, said he trained for a year."]),
    "cosmos_qa": (["I missed the bus."], "I missed the bus.", None),
    "quac": (None, "She was born in Ohio.", None),
    "coqa": (None, "1. Tom\n2. milk", None),
    "math_dataset": (None, "3", None),
}


def qa_card(name: str):
    """The card `tasks/flan2021/{name}.yaml` with its hand-made row as the only row of every split."""
    (card,) = load_card_file(paths.tasks_dir() / "flan2021" / f"{name}.yaml")
    raw = EXTRA_ROWS.get(name, ROWS.get(name))
    for split in card.splits:
        card.row_cache[split] = [sources.prepare_row(card, split, raw)]
    return card


@pytest.mark.parametrize("name", sorted(CARD_CASES))
def test_card_evaluates_its_row_as_flan_does(name):
    correct, target, references = CARD_CASES[name]
    card = qa_card(name)
    specs = {s.name: s for s in task_specs(card) if not s.per_template}
    zs = specs[f"{name}_template_0to9_{'zsopt' if card.has_options else 'zsnoopt'}"]
    # Evaluation uses only direct templates: every one of them targets the answer.
    for split in ("validation", "test"):
        for i in range(len(card.templates)):
            (ex,) = render.render_examples(card, dataclasses.replace(zs, name=f"{zs.name}_{i}_{split}"), split,
                                           length_fn=len)
            assert ex["targets_pretokenized"] == target
            assert ex.get("references") == references
    if correct is None:
        assert not card.has_options
        return
    (scoring,) = [s for s in specs.values() if s.scoring and s.fmt == "zsopt"]
    examples = render.render_examples(card, scoring, "test", length_fn=len)
    options = card.row_options(card.row_cache["test"][0])
    assert [ex["targets_pretokenized"] for ex in examples] == options
    assert sorted(ex["targets_pretokenized"] for ex in examples if ex["is_correct"]) == sorted(correct)
    assert all(render_options(options) in ex["inputs_pretokenized"] for ex in examples)


def test_inverted_templates_train_only_and_ask_for_another_field():
    card = qa_card("story_cloze")
    inverted = [i for i, t in enumerate(card.templates) if t.inverted]
    assert inverted == [8, 9]
    row = render.text_row(card, card.row_cache["train"][0])
    for i in inverted:
        inp, tgt = card.templates[i].render(row, card.row_options(row), with_options=False)
        assert ROWS["story_cloze"]["context"] not in inp and "They ate the cake together." in inp
        assert tgt == ROWS["story_cloze"]["context"] + " They ate the cake together."
