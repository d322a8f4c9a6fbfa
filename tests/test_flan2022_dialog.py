"""Flan 2022 dialog: WikiDialog (gzip JSON Lines shards, or TFDS via mock_data) and QReCC (its JSON
files) written here in the real layout, turned into next-turn examples and their inversions."""
from __future__ import annotations

import dataclasses
import gzip
import json

import pytest
from helpers import chars_budget

from flanx import paths
from flanx.data import render, sources
from flanx.data.card_files import load_card_file
from flanx.data.cards import task_specs
from flanx.data.flan2022 import dialog

TASKS = paths.tasks_dir() / "flan2022"


def wiki_row(i: int, n_utterances: int) -> dict:
    utterances = [f"topic {i}"] + [f"{'question' if k % 2 else 'answer'} {i}.{k}" for k in range(1, n_utterances)]
    return {"pid": f"p{i}", "title": f"Title {i}", "passage": f"Passage {i}.", "sentences": [f"Passage {i}."],
            "utterances": utterances, "author_num": [k % 2 for k in range(n_utterances)]}


WIKI_TRAIN = [[wiki_row(i, 12) for i in range(10)], [wiki_row(i, 12) for i in range(10, 20)] + [wiki_row(99, 2)]]


def write_wiki_dialog(root):
    folder = root / "wiki_dialog"
    folder.mkdir(parents=True)
    for shard, rows in enumerate(WIKI_TRAIN):
        with gzip.open(folder / f"data_train.jsonl-{shard:05}-of-00099.gz", "wt", encoding="utf-8") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
    with gzip.open(folder / "data_validation.jsonl.gz", "wt", encoding="utf-8") as f:
        f.writelines(json.dumps(wiki_row(i, 6)) + "\n" for i in range(50, 53))


def qrecc_rows() -> list[dict]:
    rows = []
    for conv in (1, 2):
        context = []
        for turn in range(1, 10):
            question, answer = f"q{conv}.{turn}", f"a{conv}.{turn}"
            rows.append({"Context": list(context), "Question": question, "Rewrite": question + "?", "Answer": answer,
                         "Answer_URL": "", "Conversation_no": conv, "Turn_no": turn, "Conversation_source": "quac"})
            context += [question, answer]
    return rows


def check_next_turn(row: dict, turns: list[str]):
    """`row` cuts `turns` before an assistant turn, with everything before it as the transcript."""
    idx = turns.index(row["next_turn"])
    assert idx % 2 == 1 and idx < 40
    lines = row["dialog"].split("\n")
    assert lines == [f"{'User' if k % 2 == 0 else 'Assistant'}: {t}" for k, t in enumerate(turns[:idx])]
    return idx


@pytest.fixture
def data(tmp_path, monkeypatch):
    monkeypatch.setenv(paths.DATA_DIR_ENV, str(tmp_path))
    monkeypatch.setenv(paths.TFDS_DIR_ENV, str(tmp_path / "tfds"))
    return tmp_path


def test_wiki_dialog_shards_give_next_turn_examples(data):
    write_wiki_dialog(data)
    (card,) = load_card_file(TASKS / "wiki_dialog.yaml")
    assert card.variant == "local" and card.source["type"] == "jsonl_gz"
    card = dataclasses.replace(card, fields=dict(card.fields, pid="pid"))
    rows = sources.load_rows(card, "train")
    raw = WIKI_TRAIN[0] + WIKI_TRAIN[1][:-1]  # the 2-utterance conversation has no assistant turn to predict
    assert [r["pid"] for r in rows] == [r["pid"] for r in raw]
    cuts = {check_next_turn(row, r["utterances"][1:]) for row, r in zip(rows, raw)}
    assert len(cuts) > 2  # the cut point varies from row to row
    again = dataclasses.replace(card, row_cache={})
    assert sources.load_rows(again, "train") == rows  # ... but is the same every time
    assert len(sources.load_rows(card, "validation")) == 3


def test_qrecc_keeps_late_turns_and_predicts_an_earlier_answer(data):
    (data / "qrecc").mkdir()
    rows = qrecc_rows()
    (data / "qrecc" / "qrecc_train.json").write_text(json.dumps(rows))
    (data / "qrecc" / "qrecc_test.json").write_text(json.dumps(rows[:9]))
    (card,) = load_card_file(TASKS / "qrecc.yaml")
    assert card.variant == "local" and card.source["type"] == "json"
    card = dataclasses.replace(card, fields=dict(card.fields, turn="Turn_no", answer="Answer"))
    got = sources.load_rows(card, "train")
    kept = [r for r in rows if r["Turn_no"] >= 7]
    assert [(g["turn"], g["answer"]) for g in got] == [(r["Turn_no"], r["Answer"]) for r in kept]
    for g, r in zip(got, kept):
        check_next_turn(g, r["Context"])
        assert g["next_turn"] != r["Answer"] and g["next_turn"].startswith("a")
    assert len(sources.load_rows(card, "test")) == 3


def test_dialog_cards_render_both_formats_and_inversions(data):
    write_wiki_dialog(data)
    (data / "qrecc").mkdir()
    (data / "qrecc" / "qrecc_train.json").write_text(json.dumps(qrecc_rows()))
    (data / "qrecc" / "qrecc_test.json").write_text(json.dumps(qrecc_rows()))
    for name in ("wiki_dialog", "qrecc"):
        (direct,) = load_card_file(TASKS / f"{name}.yaml")
        (inverted,) = load_card_file(TASKS / f"{name}_ii.yaml")
        assert direct.submixture == inverted.submixture == "dialog"
        assert len(direct.templates) == len(inverted.templates) == 10
        assert not any(t.inverted for t in direct.templates) and all(t.inverted for t in inverted.templates)
        for card in (chars_budget(direct), chars_budget(inverted)):
            is_ii = card.name.endswith("_ii")
            rows = sources.load_rows(card, "train")
            for spec in task_specs(card):
                for ex, row in zip(render.render_examples(card, spec, "train"), rows):
                    given, wanted = (row["next_turn"], row["dialog"]) if is_ii else (row["dialog"], row["next_turn"])
                    assert given in ex["inputs_pretokenized"] and ex["targets_pretokenized"] == wanted
                    if spec.fmt == "fsnoopt":  # two exemplars (with their transcripts) from other rows come first
                        assert ex["inputs_pretokenized"].count("User: ") >= (2 if is_ii else 3), spec.name


def test_bad_dialog_input_names_the_file(data):
    folder = data / "wiki_dialog"
    folder.mkdir()
    (folder / "data_train.jsonl-00000-of-00099.gz").write_text(json.dumps(wiki_row(1, 4)) + "\n")
    (folder / "data_validation.jsonl.gz").write_bytes(gzip.compress(b'{"pid": "x", "utterances": "one string"}\n'))
    (card,) = load_card_file(TASKS / "wiki_dialog.yaml")
    with pytest.raises(sources.DataFormatError, match="data_train.jsonl-00000-of-00099.gz: not a gzip file"):
        sources.load_rows(card, "train")
    with pytest.raises(sources.DataFormatError, match=r"data_validation.jsonl.gz:1: field 'utterances': expected a "
                                                      r"list of strings"):
        sources.load_rows(card, "validation")
    assert dialog.qrecc({"context": ["q", "a"], "turn_id": 3, "conversation_id": 1}) is None  # early turn
    with pytest.raises(sources.DataFormatError, match="field 'turn_id': expected an integer"):
        dialog.qrecc({"context": ["q", "a"], "turn_id": "late", "conversation_id": 1})


def test_wiki_dialog_from_tfds(data):
    import numpy as np
    import tensorflow as tf
    import tensorflow_datasets as tfds

    prepared = data / "tfds" / "wiki_dialog" / "OQ" / "1.0.0"
    prepared.mkdir(parents=True)
    (prepared / "dataset_info.json").write_text("{}")
    rows = WIKI_TRAIN[0]

    def as_dataset(self, *args, **kwargs):
        return tf.data.Dataset.from_tensor_slices({
            "pid": np.array([r["pid"] for r in rows]), "title": np.array([r["title"] for r in rows]),
            "passage": np.array([r["passage"] for r in rows]),
            "sentences": tf.ragged.constant([r["sentences"] for r in rows]),
            "utterances": tf.ragged.constant([r["utterances"] for r in rows]),
            "author_num": tf.ragged.constant([r["author_num"] for r in rows], dtype=tf.int32)})

    (card,) = load_card_file(TASKS / "wiki_dialog.yaml")
    assert card.variant == "main" and card.source["type"] == "tfds"
    with tfds.testing.mock_data(as_dataset_fn=as_dataset):
        got = sources.load_rows(card, "train")
    assert len(got) == len(rows)
    for g, r in zip(got, rows):
        check_next_turn(g, r["utterances"][1:])


@pytest.mark.parametrize("name", ["wiki_dialog", "wiki_dialog_ii", "qrecc", "qrecc_ii"])
def test_dialog_cards_render_on_mock_rows_of_their_tfds_builders(data, name):
    """Rows built from each builder's own features (offline), with the card's `mock:` values."""
    import tensorflow_datasets as tfds

    (card,) = load_card_file(TASKS / f"{name}.yaml")
    features = tfds.builder(card.source["name"], try_gcs=False).info.features
    assert set(card.mock) <= set(features.keys())

    def value(column, feature, i):
        if column in card.mock:
            return card.mock[column][i % len(card.mock[column])]
        if isinstance(feature, tfds.features.Sequence):
            return [value(column, feature.feature, 3 * i + j) for j in range(4)]
        return f"{column} {i}" if isinstance(feature, tfds.features.Text) else i

    rows = [{k: value(k, f, i) for k, f in features.items()} for i in range(6)]
    transform = dialog.wiki_dialog if name.startswith("wiki") else dialog.qrecc
    examples = [r for r in map(transform, rows) if r is not None]
    assert len(examples) == 6
    card = chars_budget(dataclasses.replace(card, row_cache={"train": [
        {field: ex[column] for field, column in card.fields.items()} for ex in examples]}))
    for spec in task_specs(card):
        rendered = render.render_examples(card, spec, "train")
        assert len(rendered) == 6 and all(ex["targets_pretokenized"] for ex in rendered), spec.name
