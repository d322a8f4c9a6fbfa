"""T0-SF: P3 subtasks through the `p3` source (in-memory `datasets`, a P3 checkout's TFRecords written
here), FLAN 2021 overlap removed as data, answer choices as options, and the pre-rendered T0 cards."""
from __future__ import annotations

import json

import pytest
import yaml

from flanx import paths
from flanx.data import render, sources
from flanx.data.card_files import expand_groups, load_card_file
from flanx.data.cards import load_card, task_specs
from flanx.data.flan2022 import p3
from flanx.data.flan2022.t0_sf_data import P3_DATASETS_IN_FLAN2021, T0_SF_SUBTASKS
from flanx.data.templates import render_options

CARD = paths.tasks_dir() / "flan2022" / "t0_sf.yaml"
QA, MC, MC_OPTIONS = "adversarial_qa_dbert_based_on", "amazon_polarity_Is_this_review", "qasc_is_correct_1"
ROWS = {
    QA: [{"inputs_pretokenized": f"Passage {i}.\nQuestion: who?\n", "targets_pretokenized": f"person {i}\n"}
         for i in range(4)],
    MC: [{"inputs_pretokenized": f"Review {i}: fine.\nIs it positive? Options: Yes, No",
          "targets_pretokenized": "Yes" if i % 2 else "No", "answer_choices": ["Yes", "No"]} for i in range(4)],
    MC_OPTIONS: [{"inputs_pretokenized": f"Fact {i}. Is plant {i} green?", "targets_pretokenized": " No ",
                  "answer_choices": [" Yes", "No\n"]} for i in range(4)],
    "ag_news_classify": [{"inputs_pretokenized": "news", "targets_pretokenized": "World"}],
    "super_glue_rte_GPT_3_style_score_eval": [{"inputs_pretokenized": "a", "targets_pretokenized": "b"}],
}


def card_name(subtask: str) -> str:
    return "p3_" + subtask.lower().replace(".", "_")


def in_memory(rows=ROWS):
    import datasets
    return {name: datasets.DatasetDict({"train": datasets.Dataset.from_list(r)}) for name, r in rows.items()}


def p3_cards(dataset, **groups):
    spec = yaml.safe_load(CARD.read_text(encoding="utf-8"))
    spec["source"]["dataset"] = dataset
    spec["groups"].update(groups)
    return {c.name: c for c in (load_card(s) for s in expand_groups(spec))}


def specs(card):
    return {s.fmt: s for s in task_specs(card) if not s.per_template and not s.scoring}


def test_t0_sf_data_matches_flans_counts():
    kinds = [kind for _, kind, _, _ in T0_SF_SUBTASKS.values()]
    assert len(T0_SF_SUBTASKS) == 193 and (kinds.count("qa"), kinds.count("mc"), kinds.count("mc_options")) == \
        (104, 70, 19)
    datasets = {d for d, _, _, _ in T0_SF_SUBTASKS.values()}
    assert len(datasets) == 26 and not any(P3_DATASETS_IN_FLAN2021[d] for d in datasets)
    assert all(p3.p3_dataset(s) == d and p3.is_t0_sf(s) for s, (d, _, _, _) in T0_SF_SUBTASKS.items())
    # FLAN 2021 datasets in P3 (the flag is per dataset: similar datasets count too)
    for subtask in ("ag_news_classify", "super_glue_wsc.fixed_GPT_3_Style", "rotten_tomatoes_Movie_Expressed_Sentiment",
                    "yelp_review_full_so_i_would", "anli_GPT_3_style_r1", "winogrande_winogrande_xl_fill_in_the_blank"):
        assert p3.p3_dataset(subtask) is not None and not p3.is_t0_sf(subtask), subtask
    assert p3.p3_dataset("cos_e_v1.11_rationale") == "cos_e_v1.11"
    assert not p3.is_t0_sf("qasc_is_correct_1_score_eval") and not p3.is_t0_sf("my_own_dataset_prompt")


def test_pre_rendered_t0_cards_keep_flan2021_datasets_out_of_the_t0_submixture():
    def dataset_of(group):  # the pre-rendered files name P3 datasets with '_' for '.'
        return next((d for d in P3_DATASETS_IN_FLAN2021 if d.replace(".", "_") == group), None)

    t0 = load_card_file(paths.tasks_dir() / "t0.yaml")
    outside = load_card_file(paths.tasks_dir() / "t0_in_flan2021.yaml")
    assert len(t0) + len(outside) == 35
    for card in t0:
        group = card.name.removeprefix("t0_")
        assert card.submixture == "t0" and not P3_DATASETS_IN_FLAN2021.get(dataset_of(group), False), group
    for card in outside:
        group = card.name.removeprefix("t0_")
        assert card.submixture is None and P3_DATASETS_IN_FLAN2021[dataset_of(group)], group
    assert {c.name for c in outside} >= {"t0_ag_news", "t0_trec", "t0_samsum", "t0_xsum", "t0_imdb"}


def test_one_card_per_t0_sf_subtask_here():
    cards = p3_cards(in_memory())
    assert set(cards) == {card_name(QA), card_name(MC), card_name(MC_OPTIONS)}  # not ag_news, not a score_eval variant
    for name, card in cards.items():
        assert card.submixture == "t0" and len(card.templates) == 10
        (subtask,) = [s for s in (QA, MC, MC_OPTIONS) if card_name(s) == name]
        assert card.splits["train"]["num_examples"] == T0_SF_SUBTASKS[subtask][2]
    assert cards[card_name(MC_OPTIONS)].formats == ("zsopt", "zsnoopt", "fsopt", "fsnoopt")
    assert cards[card_name(QA)].formats == cards[card_name(MC)].formats == ("zsnoopt", "fsnoopt")
    assert not cards[card_name(MC)].has_options  # its choices are already written in the prompt
    assert cards[card_name(QA)].postprocess == "take_first_line"
    assert any(s.name.endswith("_zsopt_scoring") for s in task_specs(cards[card_name(MC_OPTIONS)]))
    assert set(p3_cards(in_memory(), subtasks=[QA])) == {card_name(QA)}


def test_rows_and_formats():
    cards = p3_cards(in_memory())
    qa = cards[card_name(QA)]
    rows = sources.load_rows(qa, "train")
    assert rows[1] == {"question": "Passage 1. Question: who?", "answer": "person 1"}  # FLAN flattens newlines
    mc = cards[card_name(MC_OPTIONS)]
    assert sources.load_rows(mc, "train")[0] == {"question": "Fact 0. Is plant 0 green?", "answer": "No",
                                                 "options": ["Yes", "No"]}
    block = render_options(["Yes", "No"])
    fmts = specs(mc)
    for ex in render.render_examples(mc, fmts["fsopt"], "train", length_fn=len):
        assert ex["inputs_pretokenized"].count(block) == 4  # few-shot keeps FLAN's fixed OPTIONS block
        assert ex["targets_pretokenized"] == "No"
    # zero-shot with options draws Flan 2022's styles: the target is "No", or its label in a lettered style
    assert mc.options_style == "random"
    for ex in render.render_examples(mc, fmts["zsopt"], "train", length_fn=len):
        inp, tgt = ex["inputs_pretokenized"], ex["targets_pretokenized"]
        assert block not in inp and inp.index("Yes") < inp.index("No", inp.index("Yes"))
        assert tgt == "No" or (tgt in inp and inp.index(tgt) < inp.rindex("No") and tgt not in ("Yes", "No"))
    for fmt in ("zsnoopt", "fsnoopt"):
        assert all("OPTIONS" not in ex["inputs_pretokenized"]
                   for ex in render.render_examples(mc, fmts[fmt], "train", length_fn=len))
    few = render.render_examples(qa, specs(qa)["fsnoopt"], "train", length_fn=len)
    for i, ex in enumerate(few):  # 3 exemplars from the other rows, then this row
        assert ex["inputs_pretokenized"].count("Question: who?") == 4
        assert ex["inputs_pretokenized"].rindex(f"Passage {i}.") > ex["inputs_pretokenized"].rindex("person")


def test_bad_p3_input_fails_clearly():
    with pytest.raises(sources.SourceFormatError,
                       match="'ag_news_classify' is a P3 subtask of ag_news, a FLAN 2021 dataset"):
        p3_cards(in_memory(), subtasks=["ag_news_classify"])
    with pytest.raises(sources.SourceFormatError, match="'qasc_is_corect_1' is not a T0-SF subtask.*did you mean: "
                                                        "qasc_is_correct_1"):
        p3_cards(in_memory(), subtasks=["qasc_is_corect_1"])
    card = load_card({"name": "one", "source": {"type": "p3", "subtask": "qasc_is_correct_2", "dataset": in_memory()},
                      "row_transform": "p3", "splits": {"train": {"name": "train"}},
                      "fields": {"question": "question", "answer": "answer"},
                      "templates": [{"input": "{question}", "target": "{answer}"}], "task_naming": "plain"})
    with pytest.raises(sources.SourceFormatError, match="unknown P3 subtask 'qasc_is_correct_2'.*did you mean: "
                                                        "qasc_is_correct_1"):
        sources.load_rows(card, "train")
    bad = {MC_OPTIONS: [{"inputs_pretokenized": "q", "targets_pretokenized": "Maybe", "answer_choices": ["Yes", "No"]}]}
    (card,) = p3_cards(in_memory(bad)).values()
    with pytest.raises(sources.DataFormatError, match=r"\[0\]: field 'targets_pretokenized': answer 'Maybe' is not "
                                                      r"one of answer_choices \['Yes', 'No'\]"):
        sources.load_rows(card, "train")


def test_hub_errors_say_what_to_do(monkeypatch):
    import datasets

    calls = []

    def refuse(path, name, split, revision=None):
        calls.append((path, name, split, revision))
        raise RuntimeError("Dataset scripts are no longer supported, but found P3.py")

    monkeypatch.setattr(datasets, "load_dataset", refuse)
    monkeypatch.setenv(p3.HUB_ENV, "1")
    monkeypatch.delenv(p3.CHECKOUT_ENV, raising=False)
    monkeypatch.setenv(paths.DATA_DIR_ENV, "/nonexistent")
    cards = p3_cards(None, subtasks=[QA])
    with pytest.raises(sources.SourceFormatError, match="could not load it .*scripts are no longer supported.*"
                                                        "source.revision"):
        sources.load_rows(cards[card_name(QA)], "train")
    assert calls == [("bigscience/P3", QA, "train", None)]


def test_postprocessors():
    from flanx.eval.metrics import POSTPROCESSORS
    assert POSTPROCESSORS["take_first_line"](" Paris\nbecause it is the capital") == "Paris"
    assert POSTPROCESSORS["take_first_word"](b"Yes, it is") == "Yes,"
    assert p3.subtask_settings("app_reviews_convert_to_rating")["postprocess"] == "take_first_word"


def test_p3_checkout_tfrecords(tmp_path, monkeypatch):
    import tensorflow as tf

    root = tmp_path / "P3"
    rows = {QA: ROWS[QA], MC_OPTIONS: ROWS[MC_OPTIONS], "ag_news_classify": ROWS["ag_news_classify"]}
    for subtask, records in rows.items():
        folder = root / "data" / subtask
        folder.mkdir(parents=True)
        text, ids = {"dtype": "string", "shape": []}, {"dtype": "int32", "shape": [None]}
        features = {"inputs": ids, "inputs_pretokenized": text, "targets": ids, "targets_pretokenized": text}
        if "answer_choices" in records[0]:
            features["answer_choices"] = {"dtype": "string", "shape": [None]}
        (folder / "info.train.json").write_text(json.dumps({"num_shards": 1, "features": features}))
        with tf.io.TFRecordWriter(str(folder / "train.tfrecord-00000-of-00001")) as w:
            for r in records:
                feats = {"inputs": tf.train.Feature(int64_list=tf.train.Int64List(value=[5, 6])),
                         "targets": tf.train.Feature(int64_list=tf.train.Int64List(value=[7]))}
                for k in ("inputs_pretokenized", "targets_pretokenized"):
                    feats[k] = tf.train.Feature(bytes_list=tf.train.BytesList(value=[r[k].encode()]))
                if "answer_choices" in r:
                    feats["answer_choices"] = tf.train.Feature(bytes_list=tf.train.BytesList(
                        value=[c.encode() for c in r["answer_choices"]]))
                w.write(tf.train.Example(features=tf.train.Features(feature=feats)).SerializeToString())
    monkeypatch.setenv(p3.CHECKOUT_ENV, str(root))
    cards = {c.name: c for c in load_card_file(CARD)}
    assert set(cards) == {card_name(QA), card_name(MC_OPTIONS)}
    got = sources.load_rows(cards[card_name(MC_OPTIONS)], "train")
    assert got == [{"question": r["inputs_pretokenized"], "answer": "No", "options": ["Yes", "No"]}
                   for r in ROWS[MC_OPTIONS]]
    assert [r["answer"] for r in sources.load_rows(cards[card_name(QA)], "train")] == [f"person {i}" for i in range(4)]
    other = load_card({"name": "x", "source": {"type": "p3", "subtask": "adversarial_qa_dbert_based_o"},
                       "splits": {"train": {"name": "train"}}, "fields": {"q": "inputs_pretokenized"},
                       "templates": [{"input": "{q}", "target": "{q}"}], "task_naming": "plain"})
    with pytest.raises(sources.SourceFormatError, match="did you mean: adversarial_qa_dbert_based_on"):
        sources.load_rows(other, "train")
