"""Row transforms: the registry, filters, per-row options, several correct answers, several references."""
from __future__ import annotations

import json
import logging

import pytest

from flanx.data import render, sources, transforms
from flanx.data.cards import CardError, load_card, task_specs
from flanx.data.transforms import ROW_TRANSFORMS, DataFormatError

ROWS = [{"question": "2+2?", "choices": "3|4|four", "correct": "4|four", "keep": "y"},
        {"question": "Sky?", "choices": "blue|green", "correct": "blue", "keep": "n"},
        {"question": "1+1?", "choices": "1|2", "correct": "2", "keep": "y"}]


@pytest.fixture
def qa_transform():
    """A user transform: drops rows with keep=n, splits options and correct answers into lists."""
    @ROW_TRANSFORMS.register("test_qa")
    def qa(row):
        if row["keep"] != "y":
            return None
        return dict(row, options=row["choices"].split("|"), answers=row["correct"].split("|"))
    yield qa
    ROW_TRANSFORMS.unregister("test_qa")


def qa_card(tmp_path, **extra):
    (tmp_path / "qa.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    spec = {"name": "qa_test", "source": {"type": "jsonl", "root": str(tmp_path)},
            "splits": {"train": "qa.jsonl", "validation": "qa.jsonl"}, "row_transform": "test_qa",
            "fields": {"question": "question", "options": "options", "answer": "answers"},
            "options_field": "options", "answer_field": "answer", "formats": ["zsopt"],
            "templates": [{"input": "Q: {question}{options}", "target": "{answer}"}]}
    spec.update(extra)
    return load_card(spec)


def test_builtin_transforms_are_registered():
    assert {"gsm8k", "t0", "mmlu"} <= set(ROW_TRANSFORMS)
    assert sources.ROW_TRANSFORMS is ROW_TRANSFORMS and sources.DataFormatError is DataFormatError
    assert transforms.gsm8k({"answer": "a <<1+1=2>>2\n#### 2"})["rationale"] == "a 2"


def test_filter_transform_drops_rows_without_counting_them_as_errors(tmp_path, qa_transform, caplog):
    card = qa_card(tmp_path)
    with caplog.at_level(logging.INFO, logger="flanx"):
        rows = sources.load_rows(card, "train")
    assert [r["question"] for r in rows] == ["2+2?", "1+1?"] and card.skipped["train"] == 0
    assert "row_transform 'test_qa' dropped 1 row(s), kept 2" in caplog.text
    assert rows[0] == {"question": "2+2?", "options": ["3", "4", "four"], "answer": ["4", "four"]}


def test_several_correct_options_in_rank_classification(tmp_path, qa_transform):
    card = qa_card(tmp_path)
    scoring = [s for s in task_specs(card) if s.scoring and not s.per_template][0]
    examples = render.render_examples(card, scoring, "validation")
    assert [(ex["idx"], ex["targets_pretokenized"], ex["is_correct"]) for ex in examples] == [
        ([0, 0], "3", False), ([0, 1], "4", True), ([0, 2], "four", True),
        ([1, 0], "1", False), ([1, 1], "2", True)]
    assert examples[0]["inputs_pretokenized"] == "Q: 2+2?\n\nOPTIONS:\n- 3\n- 4\n- four"
    # Generation targets (and few-shot exemplars) use the first correct answer.
    plain = [s for s in task_specs(card) if not s.scoring and not s.per_template][0]
    assert [ex["targets_pretokenized"] for ex in render.render_examples(card, plain, "validation")] == ["4", "2"]


def test_several_references_ride_along_for_evaluation(tmp_path, qa_transform):
    card = qa_card(tmp_path, references_field="answer", metrics=["squad"])
    plain = [s for s in task_specs(card) if not s.scoring and not s.per_template][0]
    examples = render.render_examples(card, plain, "validation")
    assert [(ex["targets_pretokenized"], ex["references"]) for ex in examples] == [("4", ["4", "four"]),
                                                                                  ("2", ["2"])]


def test_answer_outside_the_options_names_row_and_field(tmp_path, qa_transform):
    card = qa_card(tmp_path)
    card.row_cache["validation"] = [{"question": "q", "options": ["a", "b"], "answer": ["a", "c"]}]
    scoring = [s for s in task_specs(card) if s.scoring][0]
    with pytest.raises(DataFormatError, match=r"row 0: answer 'c' \(field 'answer'\) is not one of the options"):
        render.render_examples(card, scoring, "validation")


def test_transform_errors_and_unknown_names(tmp_path, qa_transform):
    with pytest.raises(CardError, match=r"task card <python> \(qa_test\): row_transform: 'test_q' is not one of the "
                                        r"registered row transforms: .*did you mean: test_qa\?"):
        qa_card(tmp_path, row_transform="test_q")
    with pytest.raises(TypeError, match="row transform 'two_args' must take one argument"):
        ROW_TRANSFORMS.register("two_args", lambda row, extra: row)
    assert "two_args" not in ROW_TRANSFORMS
    # A missing column inside a transform names the column and the row's file and line.
    (tmp_path / "bad.jsonl").write_text('{"question": "q", "choices": "a|b", "correct": "a"}\n')
    card = qa_card(tmp_path, splits={"train": "bad.jsonl"})
    with pytest.raises(DataFormatError, match=r"bad.jsonl:1: missing field 'keep' needed by row_transform 'test_qa'"):
        sources.load_rows(card, "train")


def test_several_raw_labels_map_to_several_correct_options(tmp_path):
    (tmp_path / "m.jsonl").write_text('{"text": "t", "labels": [0, 2]}\n{"text": "u", "labels": 1}\n')
    card = load_card({"name": "multi_label", "source": {"type": "jsonl", "root": str(tmp_path)},
                      "splits": {"validation": "m.jsonl"}, "fields": {"text": "text", "label": "labels"},
                      "labels": {"0": "red", "1": "green", "2": "blue"}, "formats": ["zsopt"],
                      "templates": [{"input": "{text}{options}", "target": "{label}"}]})
    assert [r["label"] for r in sources.load_rows(card, "validation")] == [["red", "blue"], "green"]
    scoring = [s for s in task_specs(card) if s.scoring][0]
    correct = [ex["is_correct"] for ex in render.render_examples(card, scoring, "validation")]
    assert correct == [True, False, True, False, True, False]


def test_docs_plug_in_example_registers_and_works(tmp_path):
    from flanx import paths
    from flanx.eval import metrics
    text = (paths.tasks_dir().parent / "docs" / "tasks.md").read_text()
    block = text.split("### Your own source types", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    exec(compile(block, "docs/tasks.md", "exec"), {})
    try:
        (tmp_path / "qa.tsv").write_text("2+2?\t4\nSky?\tblue\n")
        card = load_card({"name": "docs_plugins", "source": {"type": "tsv_noheader", "root": str(tmp_path)},
                          "splits": {"train": "qa.tsv"}, "fields": {"q": "question", "a": "answer"},
                          "metrics": ["first_word_accuracy"], "postprocess": "first_line", "task_naming": "plain",
                          "templates": [{"input": "{q}", "target": "{a}"}]})
        assert sources.load_rows(card, "train") == [{"q": "2+2?", "a": "4"}, {"q": "Sky?", "a": "blue"}]
        assert ROW_TRANSFORMS["boolq"]({"passage": "p", "answer": True})["answer"] == "yes"
        assert ROW_TRANSFORMS["boolq"]({"passage": "", "answer": True}) is None
        assert metrics.METRICS["first_word_accuracy"](["a b", "c"], ["a x", "d"]) == {"first_word_accuracy": 0.5}
        assert metrics.POSTPROCESSORS["first_line"](" one\ntwo") == "one"
    finally:
        sources.SOURCES.unregister("tsv_noheader")
        ROW_TRANSFORMS.unregister("boolq")
        metrics.METRICS.unregister("first_word_accuracy")
        metrics.POSTPROCESSORS.unregister("first_line")


@pytest.mark.needs_data
def test_dialogsum_test_split_can_carry_its_three_summaries(data_root):
    import yaml
    from flanx import paths
    spec = yaml.safe_load((paths.tasks_dir() / "dialogsum.yaml").read_text())
    spec.update(name="dialogsum_refs", references_field="refs", fields=dict(spec["fields"], refs="summary"))
    spec["splits"]["test"]["fields"]["refs"] = ["summary1", "summary2", "summary3"]
    card = load_card(spec)
    zero_shot = [s for s in task_specs(card) if s.name == "dialogsum_refs_template_0_zero_shot"][0]
    (ex,) = render.render_examples(card, zero_shot, "test", limit=1)
    raw = json.loads((data_root / "dialogsum" / "dialogsum.test.jsonl").read_text().split("\n", 1)[0])
    assert ex["references"] == [raw["summary1"], raw["summary2"], raw["summary3"]]
    assert ex["targets_pretokenized"] == raw["summary1"] and len(set(ex["references"])) == 3
    (train,) = render.render_examples(card, zero_shot, "train", limit=1)
    assert train["references"] == [train["targets_pretokenized"]]


def test_bbh_choices_gives_closed_answer_rows_their_options():
    mc = {"input": "Which is right?\nOptions:\n(A) red\n(B) blue\n(C) green", "target": "(B)", "task": "date_understanding"}
    assert transforms.bbh_choices(mc)["choices"] == ["(A)", "(B)", "(C)"]
    binary = {"input": "not ( True ) and ( True ) is", "target": "False", "task": "boolean_expressions"}
    assert transforms.bbh_choices(binary)["choices"] == ["True", "False"]
    # Free-form tasks and answers outside the options are dropped (None), not errors.
    assert transforms.bbh_choices({"input": "2 + 2 =", "target": "4", "task": "multistep_arithmetic_two"}) is None
    assert transforms.bbh_choices(dict(mc, target="Monsters, Inc")) is None


@pytest.mark.needs_data
def test_bbh_choice_card_rank_classifies_the_closed_answer_tasks(data_root):
    import seqio

    import flanx.data

    if not (data_root / "bbh").is_dir():
        pytest.skip("BBH is not in FLANX_DATA_DIR")
    flanx.data.register_all()
    task = seqio.get_mixture_or_task("bbh_choice_template_0_zero_shot_scoring")
    rows = list(task.get_dataset({"inputs": 1024, "targets": 16}, split="test", shuffle=False).take(40))
    by_example = {}
    for row in rows:
        by_example.setdefault(int(row["idx"][0]), []).append(bool(row["is_correct"]))
    complete = list(by_example.values())[:-1]  # the last example may be cut by take()
    assert complete and all(sum(flags) == 1 and len(flags) >= 2 for flags in complete)
