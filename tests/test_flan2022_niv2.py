"""Super-Natural Instructions v2: a natural-instructions checkout written here in the real layout, and
TFDS `natural_instructions` through `tfds.testing.mock_data`. One card per task, FLAN's two formats,
the per-task cap, FLAN's MMLU tasks left out, and bad task files named with their field."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from helpers import chars_budget

from flanx import paths
from flanx.data import render, sources
from flanx.data.card_files import load_card_file
from flanx.data.cards import load_card, task_specs
from flanx.data.flan2022 import niv2

CARD = paths.tasks_dir() / "flan2022" / "niv2.yaml"
# FLAN's 57 MMLU task names (FLAN facts, flan2022.yaml niv2.mmlu_overlap_filter.task_names), spelled out
# here so the id range in flanx is checked against an independent list.
MMLU_SUBJECTS = (
    "abstract_algebra anatomy astronomy business_ethics".split() + [None] * 17 +
    """clinical_knowledge college_biology college_chemistry college_computer_science college_mathematics
    college_medicine college_physics computer_security conceptual_physics econometrics electrical_engineering
    elementary_mathematics formal_logic global_facts high_school_biology high_school_chemistry
    high_school_computer_science high_school_european_history high_school_geography
    high_school_government_and_politics high_school_macroeconomics high_school_mathematics
    high_school_microeconomics high_school_physics high_school_psychology high_school_statistics
    high_school_us_history high_school_world_history human_aging human_sexuality international_law
    jurisprudence logical_fallacies machine_learning management marketing medical_genetics random_topic
    moral_disputes moral_scenarios nutrition philosophy prehistory professional_accounting professional_law
    professional_medicine professional_psychology public_relations security_studies sociology
    us_foreign_policy virology world_religions""".split())
MMLU_TASKS = [f"task{664 + i}_mmmlu_answer_generation_{s}" for i, s in enumerate(MMLU_SUBJECTS) if s]


def task_doc(definition="Answer the question about the passage.", instances=3, positives=2, **extra):
    doc = {
        "Contributors": ["someone"], "Source": ["quoref"], "URL": ["https://example.org"],
        "Categories": ["Question Answering"], "Reasoning": [], "Definition": [definition],
        "Input_language": ["English"], "Output_language": ["English"], "Instruction_language": ["English"],
        "Domains": ["Wikipedia"],
        "Positive Examples": [{"input": f"pos input {j}", "output": f"pos output {j}", "explanation": "why"}
                              for j in range(positives)],
        "Negative Examples": [{"input": "neg input", "output": "neg output", "explanation": "wrong"}],
        "Instances": [{"id": f"t-{i}", "input": f"instance input {i}", "output": [f"answer {i}", f"alt {i}"]}
                      for i in range(instances)],
        "Instance License": ["CC BY 4.0"],
    }
    doc.update(extra)
    return doc


def write_checkout(root: Path, tasks: dict, train_list=None) -> Path:
    (root / "tasks").mkdir(parents=True, exist_ok=True)
    (root / "splits" / "default").mkdir(parents=True, exist_ok=True)
    for name, doc in tasks.items():
        (root / "tasks" / f"{name}.json").write_text(json.dumps(doc, indent=2), encoding="utf-8")
    names = list(tasks) if train_list is None else train_list
    (root / "splits" / "default" / "train_tasks.txt").write_text("\n".join(names) + "\n", encoding="utf-8")
    (root / "splits" / "default" / "test_tasks.txt").write_text("", encoding="utf-8")
    return root


def specs_by_fmt(card):
    return {s.fmt: s for s in task_specs(card) if not s.per_template}


@pytest.fixture
def checkout(tmp_path, monkeypatch):
    root = write_checkout(tmp_path / "natural-instructions", {
        "task001_quoref_question_generation": task_doc(instances=4),
        "task074_squad1.1_question_generation": task_doc(definition="Write a question.", instances=2, positives=1),
        "task700_mmmlu_answer_generation_high_school_chemistry": task_doc(),
        "task900_big_task": task_doc(instances=5003, positives=0),
    })
    monkeypatch.setenv(niv2.CHECKOUT_ENV, str(root))
    return root


def test_mmlu_overlap_ids_are_flans_57_mmlu_tasks():
    assert len(MMLU_TASKS) == 57 == len(niv2.MMLU_OVERLAP_TASK_IDS)
    assert all(niv2.overlaps_mmlu(t) for t in MMLU_TASKS)
    assert not niv2.overlaps_mmlu("task663_global_voices_en_fa_translation")
    assert not niv2.overlaps_mmlu("task738_perspectrum_classification")
    tfds_tasks = niv2.tfds_task_list()  # the builder's list: what FLAN trained on
    assert len(tfds_tasks) == 1613
    assert sorted(t for t in tfds_tasks if niv2.overlaps_mmlu(t)) == sorted(MMLU_TASKS)


def test_checkout_gives_one_card_per_task_without_mmlu(checkout):
    cards = {c.name: c for c in load_card_file(CARD)}
    assert set(cards) == {"niv2_task001_quoref_question_generation", "niv2_task074_squad1_1_question_generation",
                          "niv2_task900_big_task"}
    card = cards["niv2_task074_squad1_1_question_generation"]
    assert card.variant == "local" and card.source["type"] == "niv2" and card.submixture == "niv2"
    assert card.splits["train"]["files"] == ["tasks/task074_squad1.1_question_generation.json"]
    assert card.formats == ("zsnoopt", "fsnoopt") and len(card.templates) == 10
    names = [s.name for s in task_specs(card)]
    assert "niv2_task074_squad1_1_question_generation_template_0to9_zsnoopt" in names
    assert "niv2_task074_squad1_1_question_generation_template_0to9_fsnoopt" in names
    assert [c.name for c in load_card_file(CARD)] == list(cards)  # read again: the same cards, same order


def test_rows_formats_and_exemplars(checkout):
    cards = {c.name: chars_budget(c) for c in load_card_file(CARD)}
    card = cards["niv2_task001_quoref_question_generation"]
    rows = sources.load_rows(card, "train")
    assert [(r["input"], r["output"]) for r in rows] == [(f"instance input {i}", f"answer {i}") for i in range(4)]
    specs = specs_by_fmt(card)
    zero = render.render_examples(card, specs["zsnoopt"], "train")
    few = render.render_examples(card, specs["fsnoopt"], "train")
    for i, (z, f) in enumerate(zip(zero, few)):
        assert z["targets_pretokenized"] == f["targets_pretokenized"] == f"answer {i}"
        assert "Answer the question about the passage." in z["inputs_pretokenized"]
        assert f"instance input {i}" in z["inputs_pretokenized"] and "pos input" not in z["inputs_pretokenized"]
        # few-shot: the definition once, then the two positive examples, then the row's input, laid out by
        # the example's template (its `fewshot` block in the card)
        text, layout = f["inputs_pretokenized"], card.templates[f["_template_idx"]].fewshot
        order = ["Answer the question about the passage.", "pos input 0", "pos output 0", "pos input 1",
                 "pos output 1", f"instance input {i}"]
        assert [text.index(s) for s in order] == sorted(text.index(s) for s in order)
        assert text.count("Answer the question about the passage.") == 1 and "neg input" not in text
        assert text.startswith(layout.prefix.replace("{definition}", "Answer the question about the passage."))
        assert text.count(layout.inputs_prefix + "pos input") == 2
        assert text.endswith(layout.inputs_prefix + f"instance input {i}\n" + layout.targets_prefix.rstrip())
    assert len({f["_template_idx"] for f in few}) > 1  # the layout follows each example's template
    # One positive example: the second exemplar is another instance of the task, never the row itself.
    card = cards["niv2_task074_squad1_1_question_generation"]
    few = render.render_examples(card, specs_by_fmt(card)["fsnoopt"], "train")
    for i, ex in enumerate(few):
        other, text = 1 - i, ex["inputs_pretokenized"]
        assert text.index("pos input 0") < text.index(f"instance input {other}") < text.index(f"answer {other}") \
            < text.index(f"instance input {i}")
        assert text.count(f"instance input {i}") == 1


def test_per_task_cap_is_flans_5000(checkout):
    from flanx.data.mixtures import ExamplesRate, card_entries  # noqa: PLC0415 - seqio, only here
    cards = {c.name: c for c in load_card_file(CARD)}
    rate = ExamplesRate(cap=niv2.TASK_CAP)
    counts = {name: render.count_examples(card) for name, card in cards.items()}
    assert counts == {"niv2_task001_quoref_question_generation": 4, "niv2_task074_squad1_1_question_generation": 2,
                      "niv2_task900_big_task": 5003}
    for name, card in cards.items():
        entries = card_entries(card, rate)
        assert len(entries) == 2  # zsnoopt and fsnoopt share the task's rate
        assert sum(r.value(counts[name]) for _, r in entries) == pytest.approx(min(5000, counts[name]))


def test_cards_weigh_with_flans_recorded_counts(checkout):
    counts = niv2.recorded_counts()  # FLAN facts: 1,654 tasks, 5,163,933 rows in constants_niv2.py
    assert len(counts) == 1654 and sum(counts.values()) == 5163933
    assert counts["task001_quoref_question_generation"] == 4225 and counts["task002_quoref_answer_generation"] == 6500
    assert niv2.recorded_count("task074_squad1.1_question_generation") == counts["task074_squad1"]
    assert all(niv2.recorded_count(t) for t in MMLU_TASKS)  # recorded by FLAN, left out of its mixture
    cards = {c.name: c for c in load_card_file(CARD)}
    recorded = cards["niv2_task001_quoref_question_generation"]
    assert render.num_examples(recorded) == (4225, "recorded")  # not the checkout's 4 instances
    assert len(sources.load_rows(recorded, "train")) == 4
    assert render.num_examples(cards["niv2_task900_big_task"]) == (5003, "data")  # FLAN never saw this task
    assert recorded.metadata == {"task_name": "task001_quoref_question_generation"}
    assert cards["niv2_task074_squad1_1_question_generation"].metadata["task_name"] == \
        "task074_squad1.1_question_generation"


def test_task_lists_and_selected_tasks(checkout, tmp_path):
    spec = {"name": "niv2", "source": {"type": "niv2"}, "local": {"source": {"type": "niv2"}}}
    entries = niv2.niv2_groups(spec, {"tasks": ["task900_big_task"]})
    assert [e["group"] for e in entries] == ["task900_big_task"]
    with pytest.raises(sources.SourceFormatError, match="task700_mmmlu.* is not an NIv2 task here"):
        niv2.niv2_groups(spec, {"tasks": ["task700_mmmlu_answer_generation_high_school_chemistry"]})
    flans = niv2.niv2_groups(spec, {"task_lists": ["tfds"]})  # the checkout's tasks that FLAN trained on
    assert [e["group"] for e in flans] == ["task001_quoref_question_generation",
                                           "task074_squad1.1_question_generation"]
    (checkout / "splits" / "default" / "test_tasks.txt").write_text("task900_big_task\n", encoding="utf-8")
    (checkout / "splits" / "default" / "train_tasks.txt").write_text("task001_quoref_question_generation\n")
    both = niv2.niv2_groups(spec, {"task_lists": ["splits/default/train_tasks.txt", "splits/default/test_tasks.txt"]})
    assert [e["group"] for e in both] == ["task001_quoref_question_generation", "task900_big_task"]


def test_no_data_no_cards(tmp_path, monkeypatch):
    monkeypatch.delenv(niv2.CHECKOUT_ENV, raising=False)
    monkeypatch.setenv(paths.DATA_DIR_ENV, str(tmp_path))
    monkeypatch.setenv(paths.TFDS_DIR_ENV, str(tmp_path / "tfds"))
    assert load_card_file(CARD) == []


# ----------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("doc,field", [
    (task_doc(Definition=[]), "'Definition' is missing or empty"),
    ({k: v for k, v in task_doc().items() if k != "Definition"}, "'Definition' is missing or empty"),
    (task_doc(Instances=[]), "'Instances' is missing or empty"),
    (task_doc(Definition=[3]), "'Definition' must be a string"),
])
def test_bad_task_files_fail_naming_file_and_field(tmp_path, monkeypatch, doc, field):
    root = write_checkout(tmp_path / "ni", {"task002_bad": doc})
    monkeypatch.setenv(niv2.CHECKOUT_ENV, str(root))
    (card,) = load_card_file(CARD)
    with pytest.raises(sources.SourceFormatError) as e:
        sources.load_rows(card, "train")
    assert str(root / "tasks" / "task002_bad.json") in str(e.value) and field in str(e.value)


@pytest.mark.parametrize("output", ["answer", [], [1, "a"], None])
def test_an_output_that_is_not_a_list_of_strings_names_the_instance(tmp_path, monkeypatch, output):
    doc = task_doc(instances=3)
    doc["Instances"][1]["output"] = output
    root = write_checkout(tmp_path / "ni", {"task003_out": doc})
    monkeypatch.setenv(niv2.CHECKOUT_ENV, str(root))
    (card,) = load_card_file(CARD)
    with pytest.raises(sources.DataFormatError) as e:
        sources.load_rows(card, "train")
    assert f"{root / 'tasks' / 'task003_out.json'}: Instances[1].output: expected a non-empty list of strings" \
        in str(e.value)
    skipping = dataclasses.replace(card, on_error="skip", row_cache={})
    assert [r["input"] for r in sources.load_rows(skipping, "train")] == ["instance input 0", "instance input 2"]


def test_unknown_task_in_the_split_file_names_the_line(tmp_path, monkeypatch):
    root = write_checkout(tmp_path / "ni", {"task001_quoref_question_generation": task_doc()},
                          train_list=["task001_quoref_question_generation", "", "task001_quoref_question_generatio"])
    monkeypatch.setenv(niv2.CHECKOUT_ENV, str(root))
    with pytest.raises(sources.SourceFormatError) as e:
        load_card_file(CARD)
    msg = str(e.value)
    assert msg.startswith(f"{root / 'splits' / 'default' / 'train_tasks.txt'}:3: unknown task "
                          f"'task001_quoref_question_generatio'")
    assert "did you mean: task001_quoref_question_generation?" in msg


# ----------------------------------------------------------------------------- TFDS natural_instructions

def test_tfds_form_splits_the_builder_rows_by_task(tmp_path, monkeypatch):
    import numpy as np
    import tensorflow as tf
    import tensorflow_datasets as tfds

    monkeypatch.delenv(niv2.CHECKOUT_ENV, raising=False)
    (tmp_path / "data").mkdir()
    monkeypatch.setenv(paths.DATA_DIR_ENV, str(tmp_path / "data"))
    data_dir = tmp_path / "tfds"
    prepared = data_dir / "natural_instructions" / "1.0.1"
    prepared.mkdir(parents=True)
    (prepared / "dataset_info.json").write_text("{}")
    monkeypatch.setenv(paths.TFDS_DIR_ENV, str(data_dir))
    tasks = ["task001_quoref_question_generation", "task1346_glue_cola_grammatical_correctness_classification"]
    rows = [{"id": f"{t}-{i}", "input": f"{t} input {i}", "output": f"out {i}", "source": "src",
             "task_name": t, "definition": f"Definition of {t}."} for i in range(3) for t in tasks]

    def as_dataset(self, *args, **kwargs):
        return tf.data.Dataset.from_tensor_slices({k: np.array([r[k] for r in rows]) for k in rows[0]})

    spec = {"name": "niv2", "source": {"type": "niv2_tfds", "name": niv2.TFDS_NAME, "task": "{group}"},
            "splits": {"train": {"name": "train"}}, "fields": {"definition": "definition", "input": "input",
                                                                  "output": "output", "exemplars": "exemplars"},
            "templates": [{"input": "{definition}\n{input}", "target": "{output}"}],
            "groups": {"list": "niv2_tasks", "tasks": tasks}}
    from flanx.data.card_files import expand_groups
    cards = [chars_budget(load_card(s)) for s in expand_groups(spec)]
    assert [c.name for c in cards] == ["niv2_task001_quoref_question_generation",
                                       "niv2_task1346_glue_cola_grammatical_correctness_classification"]
    with tfds.testing.mock_data(as_dataset_fn=as_dataset):
        got = {c.name: sources.load_rows(c, "train") for c in cards}
    cache = tmp_path / "data" / "niv2_tfds_by_task" / "natural_instructions_1.0.1"
    assert (cache / "_COMPLETE").is_file() and len(list(cache.glob("*.jsonl"))) == 2
    for card, task in zip(cards, tasks):
        assert [r["input"] for r in got[card.name]] == [f"{task} input {i}" for i in range(3)]
        assert {r["definition"] for r in got[card.name]} == {f"Definition of {task}."}
        assert all(len(r["exemplars"]) == 2 and f"{task} input" in r["exemplars"][0]["input"] for r in got[card.name])
    # A second read uses the split files, not TFDS (no mock around it now).
    again = dataclasses.replace(cards[0], row_cache={})
    assert sources.load_rows(again, "train") == got[cards[0].name]
