"""LAMBADA and UnifiedQA science questions, the two tasks Flan 2022 adds to the FLAN 2021 submixture: their
row transforms against FLAN's preprocessing, and every template and format on mock TFDS rows."""
from __future__ import annotations

import pytest

from flanx import paths
from flanx.data.card_files import load_card_file
from flanx.data.flan2022 import flan_tasks
from flanx.data.transforms import DataFormatError
from test_flan2021_collection import mock_tfds, render_all

CARDS = {name: paths.tasks_dir() / "flan2022" / f"{name}.yaml" for name in ("lambada", "unified_qa_science_inst")}


def test_lambada_takes_the_last_word_as_the_answer():
    row = flan_tasks.lambada({"passage": b"  she looked up at the night sky and saw the moon "})
    assert (row["sentence"], row["answer"]) == ("she looked up at the night sky and saw the", "moon")
    assert flan_tasks.lambada({"passage": "one"}) == {"passage": "one", "sentence": "", "answer": "one"}
    assert flan_tasks.lambada({"passage": "   "}) is None


def test_unified_qa_science_rows_become_question_options_answer():
    row = flan_tasks.unified_qa_science_inst({
        "input": "What is the largest insect? \\n (A) Giant weta. (B) Ant. (C) Lion. (D) Flea beetle.",
        "output": "Giant weta."})
    assert row["question"] == "What is the largest insect?"
    assert row["options"] == ["Giant weta.", "Ant.", "Lion.", "Flea beetle."] and row["answer"] == "Giant weta."
    assert flan_tasks.unified_qa_science_inst({"input": "q (A) a (B) b (C) c", "output": "a"}) is None  # 3 options
    assert flan_tasks.unified_qa_science_inst({"input": "q (A) a (B) b (C) c (D) d (E) e", "output": "a"}) is None
    with pytest.raises(DataFormatError, match=r"field 'input': expected options \(A\) to \(D\)"):
        flan_tasks.unified_qa_science_inst({"input": "q (D) d (A) a", "output": "a"})


@pytest.mark.parametrize("name", sorted(CARDS))
def test_cards_render_every_template_and_format_on_mock_rows(name):
    pytest.importorskip("tensorflow_datasets")
    (card,) = load_card_file(CARDS[name])
    assert card.submixture == "flan" and card.group == "held_in" and len(card.templates) == 10
    with mock_tfds(card):
        assert render_all(card) > 0
