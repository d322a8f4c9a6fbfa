"""Task cards: validation errors, the shipped collection, and registration from YAML and from Python."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import seqio
import yaml

import flanx.data
from flanx import paths
from flanx.data import card_files, pipeline, render, tasks
from flanx.data.card_files import load_card_file
from flanx.data.cards import CardError, load_card, task_specs

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
    by_name = {c.name: c for p in card_files.collection_card_files() for c in load_card_file(p)}
    expected = {"dialogsum", "samsum", "rte", "cb", "sst2", "trec", "ag_news_subset", "gsm8k", "gsm8k_cot", "mmlu", "bbh",
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
        inverted = [t for t in by_name[name].templates if t.inverted and "{summary}" in t.input]
        assert inverted and all(t.target in ("{dialogue}", "{chat}") for t in inverted), name
    assert by_name["dialogsum"].templates[0].input == "Summarize the following conversation.\n\n{dialogue}\n\nSummary: "
    held_out = {n for n, c in by_name.items() if c.group == "held_out"}
    assert {"mmlu", "bbh", "synth_chat_customer_name", "synth_chat_refund"} <= held_out
    assert by_name["mmlu"].eval_only and by_name["bbh"].eval_only
    assert by_name["t0_adversarial_qa_dbert"].submixture == "t0" and by_name["gsm8k_cot"].submixture == "cot"
    assert by_name["t0_ag_news"].submixture is None  # FLAN 2021 has AG News: not in T0-SF


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


@pytest.mark.parametrize("overrides, match", [
    ({"row_transform": "gsm8"}, r"row_transform: 'gsm8' is not one of the registered row transforms: .*"
                                r"did you mean: gsm8k\? Register one with @flanx.data.transforms"),
    ({"postprocess": "strp"}, r"postprocess: 'strp' is not one of the registered postprocessors: .*did you mean: strip"),
    ({"vocabulary": "bytes"}, r"vocabulary: 'bytes' is not one of the registered vocabularys?: .*did you mean: byte"),
    ({"labels": None, "metrics": ["f1"]}, r"metrics: f1 needs the card's fixed answer options"),
    ({"labels": None, "metrics": ["rank_classification"]}, r"metrics: rank_classification scores answer options"),
    ({"metrics": ["matthews_corrcoef"], "references_field": "label"}, r"metrics: matthews_corrcoef takes one "
                                                                      r"reference per example"),
    ({"references_field": "summary"}, r"references_field: 'summary' is not in `fields`"),
    ({"metric_scale": 10}, r"metric_scale: 10 is not one of 1, 100"),
    ({"override": "yes"}, r"override: expected true or false"),
    ({"source": {"type": "lines"}, "splits": {"train": "x.txt"}}, r"source.pattern: a `lines` source needs `pattern`"),
    ({"source": {"type": "jsonl"}}, r"splits.train: a `jsonl` source reads files"),
    ({"fields": {"chat": ["chat", 3], "label": "intent"}, "templates": [{"input": "{chat}", "target": "{label}"}]},
     None),
])
def test_card_keys_are_checked_against_the_registries(overrides, match):
    if match is None:  # a field may map to a list of columns (several references)
        assert load_card(card(**overrides)).fields["chat"] == ["chat", "3"]
        return
    with pytest.raises(CardError, match=r"task card tasks/mini.yaml \(mini\): " + match):
        load_card(card(**overrides), "tasks/mini.yaml")


def _write_card(path, **overrides):
    spec = card(**overrides)
    spec["templates"] = [{"input": f"{i}: {{chat}}{{options}}", "target": "{label}"} for i in range(8)]
    path.write_text(yaml.safe_dump(spec))
    return path


def test_card_files_with_flan_names_need_eight_templates(tmp_path):
    path = tmp_path / "few.yaml"
    path.write_text(yaml.safe_dump(card()))  # two templates
    minimum = card_files.MIN_FLAN_TEMPLATES
    with pytest.raises(CardError, match=rf"task card {path} \(mini\): templates: 2 template\(s\), but a card with "
                                        rf"FLAN task names .* at least {minimum}.*task_naming: plain"):
        load_card_file(path)
    path.write_text(yaml.safe_dump(card(task_naming="plain")))
    assert [s.name for s in task_specs(load_card_file(path)[0])] == ["mini", "mini_scoring"]
    assert len(load_card_file(_write_card(tmp_path / "eight.yaml"))[0].templates) == 8


def test_same_card_name_from_two_files_needs_override(tmp_path):
    first, second = _write_card(tmp_path / "a.yaml", name="coll"), _write_card(tmp_path / "b.yaml", name="coll")
    with pytest.raises(CardError, match=rf"task card {second} \(coll\): name: 'coll' is already the name of task "
                                        rf"card {first}; rename this card, or set `override: true`"):
        card_files.load_card_files([first, second])
    _write_card(second, name="coll", override=True, labels={"refund": "refund", "other": "other"})
    loaded = card_files.load_card_files([first, second])
    assert sorted(loaded["coll"].options) == ["other", "refund"] and loaded["coll"].file == str(second)
    # A user card named like a collection card.
    user_rte = _write_card(tmp_path / "rte.yaml", name="rte")
    with pytest.raises(CardError, match=rf"{user_rte} \(rte\): name: 'rte' is already the name of task card "
                                        rf".*tasks/flan2021/rte.yaml"):
        card_files.load_card_files(card_files.collection_card_files() + [user_rte])
    flanx.data.register_all()
    with pytest.raises(CardError, match=r"'rte' is already the name of task card .*tasks/flan2021/rte.yaml"):
        flanx.data.register_task_card(str(user_rte))
    assert tasks.get_card("rte").file.endswith("tasks/flan2021/rte.yaml")


def test_override_replaces_the_card_and_its_stale_task_names(tmp_path):
    first = _write_card(tmp_path / "a.yaml", name="over")
    second = tmp_path / "b.yaml"
    spec = card(name="over", override=True)
    spec["templates"] = [{"input": f"{i}) {{chat}}{{options}}", "target": "{label}"} for i in range(9)]
    second.write_text(yaml.safe_dump(spec))
    flanx.data.register_task_card(str(first), refresh_mixtures=False)
    try:
        assert "over_template_0to7_zsopt" in seqio.TaskRegistry.names()
        flanx.data.register_task_card(str(second), refresh_mixtures=False)
        assert "over_template_0to8_zsopt" in seqio.TaskRegistry.names()
        assert "over_template_0to7_zsopt" not in seqio.TaskRegistry.names()
        with pytest.raises(KeyError, match="did you mean: over_template_0to8_zsopt"):
            tasks.get_spec("over_template_0to7_zsopt")
        stale = task_specs(load_card_file(first)[0])[-1]
        with pytest.raises(KeyError, match=r"task 'over_template_0to7_fsopt_scoring' was made by an earlier version"):
            render.render_examples(tasks.get_card("over"), dataclasses.replace(stale, template_ids=(8, 9)), "train")
    finally:
        tasks.unregister_card("over")


def test_cli_with_an_overriding_card_has_no_stale_tasks(tmp_path, monkeypatch, capsys):
    from flanx import cli
    first = _write_card(tmp_path / "a.yaml", name="clicard")
    second = tmp_path / "b.yaml"
    spec = card(name="clicard", override=True)
    spec["templates"] = [{"input": f"{i}) {{chat}}{{options}}", "target": "{label}"} for i in range(9)]
    second.write_text(yaml.safe_dump(spec))
    monkeypatch.setattr(card_files, "collection_card_files", lambda: [second, first])  # override first, then the other
    assert cli.main(["tasks", "list"]) == 1  # the error boundary: one message, no traceback
    err = capsys.readouterr().err
    assert "flanx tasks: error: task card" in err and "already the name of task card" in err and "Traceback" not in err
    monkeypatch.setattr(card_files, "collection_card_files", lambda: [first, second])
    assert cli.main(["tasks", "show", "clicard_template_0to7_zsopt", "--split", "validation"]) == 2
    assert "did you mean: clicard_template_0to8_zsopt" in capsys.readouterr().err.lower()
    assert cli.main(["tasks", "show", "clicard_template_0to8_zsopt", "--split", "validation", "-n", "1"]) == 0
    assert "OPTIONS" in capsys.readouterr().out


def test_seqio_task_metrics_bind_options_and_scale():
    names = flanx.data.register_task_card(card(name="scaled", metrics=["f1", "accuracy"], metric_scale=100,
                                               labels={"refund": "refund", "delivery": "delivery"}),
                                          refresh_mixtures=False)
    try:
        task = seqio.get_mixture_or_task("scaled_template_0to1_zsopt")
        f1, acc = task.predict_metric_fns
        assert (f1.__name__, acc.__name__) == ("f1", "accuracy")
        # Positive class "delivery" (the last option): TP 1, FN 1, FP 0 -> F1 2/3, on the 0-100 scale.
        assert f1(targets=["delivery", "delivery", "refund"], predictions=["delivery", "refund", "refund"]) == \
            {"f1": pytest.approx(200 / 3)}
        scoring = seqio.get_mixture_or_task("scaled_template_0to1_zsopt_scoring")
        (rank,) = scoring.score_metric_fns
        assert rank(targets=[(0, 0, True), (0, 1, False)], scores=[-1.0, -2.0]) == {"rank_accuracy": 100.0}
        assert "scaled_template_0to1_zsopt_scoring" in names
    finally:
        tasks.unregister_card("scaled")
