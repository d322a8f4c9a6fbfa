"""The FLAN 2021 cards with local data (RTE, CB, SST-2, TREC) read FLANX_DATA_DIR with FLAN's split map.

Each card's `local:` block mirrors FLAN's splits on the files (train minus the
held-back rows, those rows as validation, the labelled dev/test file as test).
The counts are checked against the card's recorded `num_examples` and against
the files themselves; the label maps against rows read from the files by hand.
"""
from __future__ import annotations

import json

import pytest

from flanx import paths
from flanx.data import render, sources
from flanx.data.card_files import load_card_file
from flanx.data.cards import task_specs

pytestmark = pytest.mark.needs_data

# card -> (training file, held-back rows, test file, FLAN's options in order)
LOCAL = {
    "rte": ("classic_cls/rte/train.jsonl", 200, "classic_cls/rte/val.jsonl", ["yes", "no"]),
    "cb": ("classic_cls/cb/train.jsonl", 50, "classic_cls/cb/val.jsonl", ["Yes", "No", "It's impossible to say"]),
    "sst2": ("classic_cls/sst2/stsa.binary.train", 200, "classic_cls/sst2/stsa.binary.dev", ["negative", "positive"]),
    "trec": ("classic_cls/trec/train.txt", 200, "classic_cls/trec/test.txt",
             ["description", "entity", "abbreviation", "human", "numeric", "location"]),
}


def _card(name):
    return load_card_file(paths.tasks_dir() / "flan2021" / f"{name}.yaml", use_local=True)[0]


def _lines(data_root, rel):
    return (data_root / rel).read_text(encoding="utf-8").splitlines()


@pytest.mark.parametrize("name", sorted(LOCAL))
def test_local_splits_follow_flans_split_map(name, data_root):
    train_file, held_back, test_file, options = LOCAL[name]
    card = _card(name)
    assert card.variant == "local" and card.alternate.source["type"] == "tfds"
    n_train = len(_lines(data_root, train_file))
    expected = {"train": n_train - held_back, "validation": held_back, "test": len(_lines(data_root, test_file))}
    counts = {split: len(sources.load_rows(card, split)) for split in ("train", "validation", "test")}
    assert counts == expected == {split: spec["num_examples"] for split, spec in card.splits.items()}
    # Same options, in FLAN's order, whichever variant reads the data.
    assert card.options == card.alternate.options == options


def test_rte_rows_and_labels(data_root):
    card = _card("rte")
    train_rows = [json.loads(line) for line in _lines(data_root, "classic_cls/rte/train.jsonl")]
    train, validation, test = (sources.load_rows(card, s) for s in ("train", "validation", "test"))
    assert train[0] == {"premise": "No Weapons of Mass Destruction Found in Iraq Yet.",
                        "hypothesis": "Weapons of Mass Destruction Found in Iraq.", "label": "no"}
    assert train[1]["label"] == "yes"  # the Pope Benedict row is labelled entailment
    assert validation[0]["hypothesis"] == "Heavy rain caused flooding in Yemen." == train_rows[2290]["hypothesis"]
    assert validation[0]["label"] == "yes" and train[-1]["premise"] == train_rows[2289]["premise"]
    assert test[0]["hypothesis"] == "Christopher Reeve had an accident." and test[0]["label"] == "no"


def test_cb_rows_and_labels():
    card = _card("cb")
    validation, test = sources.load_rows(card, "validation"), sources.load_rows(card, "test")
    assert validation[0]["hypothesis"] == "they would have done that" and validation[0]["label"] == "No"
    assert test[0]["hypothesis"] == "Valence was helping" and test[0]["label"] == "No"            # contradiction
    assert test[1]["hypothesis"] == "there is a shipment" and test[1]["label"] == "It's impossible to say"  # neutral
    assert test[2]["hypothesis"] == "Jenny's bedroom's at the rear of the house" and test[2]["label"] == "Yes"


def test_sst2_rows_and_labels():
    card = _card("sst2")
    validation, test = sources.load_rows(card, "validation"), sources.load_rows(card, "test")
    assert validation[0] == {"sentence": "the satire is unfocused , while the story goes nowhere .", "label": "negative"}
    assert test[0] == {"sentence": "one long string of cliches .", "label": "negative"}
    assert {r["label"] for r in test} == {"negative", "positive"}
    assert sum(r["label"] == "positive" for r in test) == sum(
        line.startswith("1 ") for line in _lines(paths.data_dir(), "classic_cls/sst2/stsa.binary.dev"))


def test_trec_rows_and_labels():
    card = _card("trec")
    train, validation, test = (sources.load_rows(card, s) for s in ("train", "validation", "test"))
    assert train[0] == {"question": "How did serfdom develop in and then leave Russia ?", "label": "description"}
    assert train[1]["label"] == "entity"                                       # ENTY:cremat
    assert validation[0] == {"question": "Who made the rotary engine automobile ?", "label": "human"}
    assert validation[-1] == {"question": "What currency is used in Australia ?", "label": "entity"}
    assert test[:2] == [{"question": "How far is it from Denver to Aspen ?", "label": "numeric"},
                        {"question": "What county is Modesto , California in ?", "label": "location"}]


def test_scoring_marks_the_labelled_option_correct():
    card = _card("cb")
    spec = next(s for s in task_specs(card) if s.scoring and s.per_template)
    examples = render.render_examples(card, spec, "test")
    first = [e for e in examples if e["idx"][0] == 0]
    assert [(e["targets_pretokenized"], e["is_correct"]) for e in first] == [
        ("Yes", False), ("No", True), ("It's impossible to say", False)]
    assert "Valence was helping" in first[0]["inputs_pretokenized"]
