"""Task cards: validation errors, the shipped collection, and registration from YAML and from Python."""
from __future__ import annotations

import json

import numpy as np
import pytest
import seqio
import yaml

import flanx.data
from flanx import paths
from flanx.data import cards, pipeline, tasks
from flanx.data.cards import CardError, load_card, load_card_file, task_specs

BASE = {"name": "mini", "source": {"type": "synthetic", "generator": "chat"},
        "splits": {"train": {"size": 30}, "validation": {"size": 10}},
        "fields": {"chat": "chat", "label": "intent"},
        "labels": {"delivery": "delivery", "refund": "refund", "password": "password", "billing": "billing",
                   "cancel": "cancel"},
        "templates": [{"input": "{chat}\nIntent?{options}", "target": "{label}"},
                      {"input": "Intent of: {chat}", "target": "{label}"}],
        "vocabulary": "byte", "group": "test_group"}


def card(**overrides):
    spec = json.loads(json.dumps(BASE))
    spec.update(overrides)
    return spec


@pytest.mark.parametrize("overrides, match", [
    ({"tempaltes": []}, r"tempaltes: unknown key"),
    ({"name": "Bad-Name"}, r"name: 'Bad-Name' must be lowercase"),
    ({"source": {"type": "parquet"}}, r"source.type: expected one of"),
    ({"templates": [{"input": "{chat} {missing}", "target": "{label}"}]}, r"templates\[0\]: uses field\(s\) missing"),
    ({"templates": [{"input": "{chat.__class__}", "target": "{label}"}]}, r"templates\[0\] input: unsupported brace"),
    ({"templates": [{"input": "{chat}"}]}, r"templates\[0\]: expected a mapping with `input` and `target`"),
    ({"formats": ["zsopt", "fewshot"]}, r"formats: 'fewshot' is not one of"),
    ({"labels": None, "formats": ["zsopt"]}, r"formats: zsopt needs `options`"),
    ({"fewshot": {"k": 2, "shots": 3}}, r"fewshot: .*shots"),
    ({"fewshot": {"pool_split": "dev"}, "formats": ["fsopt"]}, r"fewshot.pool_split: 'dev' is not a split"),
    ({"metrics": ["blue"]}, r"metrics: 'blue' is not one of the registered metrics: .*did you mean: bleu\?"),
    ({"on_error": "ignore"}, r"on_error: 'ignore' is not one of"),
    ({"splits": {"train": {"files": "x", "every": 3}}}, r"splits.train: unknown key"),
    ({"labels": {"refund": True, "other": False}}, r"labels: YAML read an unquoted yes/no"),
])
def test_card_errors_name_card_and_key(overrides, match):
    with pytest.raises(CardError, match=match):
        load_card(card(**overrides), "tasks/mini.yaml")


def test_card_error_names_yaml_file(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(card(fields={"chat": "chat"})))
    with pytest.raises(CardError, match=rf"{path} \(mini\): templates\[0\]: uses field\(s\) label"):
        load_card_file(path)


def test_task_names_follow_flan():
    c = load_card(card())
    names = [s.name for s in task_specs(c)]
    assert names[:2] == ["mini_template_0_zero_shot", "mini_template_1_zero_shot"]
    assert "mini_template_0to1_zsopt" in names and "mini_template_0to1_fsnoopt" in names
    assert "mini_template_0to1_fsopt_scoring" in names and "mini_template_0to1_zsnoopt_scoring" not in names
    assert c.options == ["delivery", "refund", "password", "billing", "cancel"]


def test_collection_cards_are_valid_and_varied():
    by_name = {c.name: c for p in cards.collection_card_files() for c in load_card_file(p)}
    expected = {"dialogsum", "samsum", "rte", "cb", "sst2", "trec", "agnews", "gsm8k", "gsm8k_cot", "mmlu", "bbh",
                "synth_chat_summary", "synth_chat_intent", "synth_chat_order_number", "synth_chat_sentiment",
                "synth_order_total", "synth_chat_customer_name", "synth_chat_refund"}
    assert expected <= set(by_name)
    assert len([n for n in by_name if n.startswith("t0_")]) == 35
    for name in expected:
        c = by_name[name]
        inputs = [t.input for t in c.templates]
        assert len(c.templates) >= 8 and len(set(inputs)) == len(inputs), name
        # Instruction position varies: some templates start with the data, some with the instruction.
        assert any(t.input.startswith("{") for t in c.templates) or name in ("mmlu", "synth_order_total"), name
        assert any(not t.input.startswith("{") for t in c.templates), name
    for name in ("dialogsum", "samsum", "synth_chat_summary"):
        inverted = [t for t in by_name[name].templates if t.inverted]
        assert inverted and "{summary}" in inverted[0].input and inverted[0].target in ("{dialogue}", "{chat}")
    assert by_name["dialogsum"].templates[0].input == "Summarize the following conversation.\n\n{dialogue}\n\nSummary: "
    held_out = {n for n, c in by_name.items() if c.group == "held_out"}
    assert {"mmlu", "bbh", "synth_chat_customer_name", "synth_chat_refund"} <= held_out
    assert by_name["mmlu"].eval_only and by_name["bbh"].eval_only
    assert by_name["t0_ag_news"].submixture == "t0" and by_name["gsm8k_cot"].submixture == "cot"


def test_register_task_card_from_python_dict():
    names = flanx.data.register_task_card(card(name="py_card"))
    try:
        assert "py_card_template_0to1_zsopt" in names and "py_card_template_0to1_zsopt" in seqio.TaskRegistry.names()
        task = seqio.get_mixture_or_task("py_card_template_1_zero_shot")
        ex = next(iter(task.get_dataset({"inputs": 256, "targets": 16}, split="validation", shuffle=False)))
        text = ex["inputs_pretokenized"].numpy().decode()
        assert text.startswith("Intent of: Customer: Hi, I'm ") and "OPTIONS" in text
        target = ex["targets_pretokenized"].numpy().decode()
        assert target in BASE["labels"].values()
        assert list(ex["targets"].numpy()) == [b + 3 for b in target.encode()] + [1]
    finally:
        tasks.unregister_card("py_card")
    assert "py_card_template_0to1_zsopt" not in seqio.TaskRegistry.names()


def test_register_task_card_from_yaml_path(tmp_path):
    data = tmp_path / "mydata"
    data.mkdir()
    (data / "train.jsonl").write_text('{"q": "2+2?", "a": "4"}\n{"q": "3+3?", "a": "6"}\n')
    spec = {"name": "yaml_card", "source": {"type": "jsonl", "root": "mydata"}, "splits": {"train": "train.jsonl"},
            "fields": {"question": "q", "answer": "a"}, "vocabulary": "byte", "group": "test_group",
            "templates": [{"input": "Q: {question}", "target": "{answer}"}] * 1 +
                         [{"input": f"{i}: {{question}}", "target": "{answer}"} for i in range(7)]}
    path = tmp_path / "yaml_card.yaml"
    path.write_text(yaml.safe_dump(spec))
    names = flanx.data.register_task_card(str(path))
    try:
        assert "yaml_card_template_0to7_zsnoopt" in names
        (a, b) = pipeline.get_eval_dataset("yaml_card_template_0_zero_shot", "train", {"inputs": 32, "targets": 8})
        assert (a["inputs_pretokenized"], a["targets_pretokenized"]) == ("Q: 2+2?", "4")
        assert b["inputs_pretokenized"] == "Q: 3+3?"
        np.testing.assert_array_equal(a["targets"], [ord("4") + 3, 1])
    finally:
        tasks.unregister_card("yaml_card")


def test_duplicate_task_names_across_cards_are_refused():
    flanx.data.register_task_card(card(name="dup_a"), refresh_mixtures=False)
    try:
        with pytest.raises(KeyError, match="did you mean"):
            tasks.get_spec("dup_a_template_0to1_zsopx")
        # A plain-named card whose single task is named like one of dup_a's tasks.
        clash = load_card(card(name="dup_a_template_0_zero_shot", task_naming="plain", labels=None, formats=["zsnoopt"]))
        with pytest.raises(ValueError, match="already made by card 'dup_a'"):
            tasks.register_card(clash)
    finally:
        tasks.unregister_card("dup_a")


def test_docs_yaml_card_example_is_a_valid_card():
    text = (paths.tasks_dir().parent / "docs" / "tasks.md").read_text()
    block = text.split("```yaml\n", 1)[1].split("```", 1)[0]
    c = load_card(yaml.safe_load(block), "docs/tasks.md")
    assert c.name == "my_nli" and c.options == ["yes", "no"] and c.splits["validation"]["files"] == ["my_nli/dev.jsonl"]
    assert [s.name for s in task_specs(c)][-1] == "my_nli_template_0to1_fsopt_scoring"
