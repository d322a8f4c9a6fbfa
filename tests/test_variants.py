"""Flan 2022 renderings (`flanx.data.variants`): the `_flan2022` task variants, few-shot budgets that drop
examples left without exemplars, per-template few-shot layouts, the metadata features (carried by tasks,
gone from model batches), recorded counts, and card mistakes named by file and key."""
from __future__ import annotations

import json

import pytest

from flanx.data import render, sources, variants
from flanx.data.card_files import load_card_file
from flanx.data.cards import CardError, load_card, task_specs


def synth_card(**extra):
    spec = {"name": "vcard", "vocabulary": "byte", "submixture": "flan",
            "source": {"type": "synthetic", "generator": "order_total"},
            "splits": {"train": {"size": 40}, "validation": {"size": 6}},
            "fields": {"a": "price_a", "b": "price_b", "total": "total"},
            "options": [str(i) for i in range(2, 19)], "answer_field": "total", "metrics": ["accuracy"],
            "templates": [{"input": "{a}+{b}={options}", "target": "{total}"},
                          {"input": "Add {a} and {b}.{options}", "target": "{total}"}]}
    spec.update(extra)
    return load_card({k: v for k, v in spec.items() if v is not None})


def names(card):
    return [s.name for s in task_specs(card)]


def test_variants_exist_only_where_flan2022_renders_differently():
    card = synth_card()
    got = [n for n in names(card) if n.endswith("_flan2022")]
    assert got == ["vcard_template_0to1_zsopt_flan2022", "vcard_template_0to1_fsopt_flan2022",
                   "vcard_template_0to1_fsnoopt_flan2022"]
    assert not any(n.endswith("_flan2022_scoring") for n in names(card))  # training only
    native = synth_card(options_style="random", fewshot={"k": 2, "drop_empty": True, "max_input_tokens": 300})
    assert not any(n.endswith("_flan2022") for n in names(native))
    assert not any(n.endswith("_flan2022") for n in names(synth_card(submixture=None)))
    view = variants.view(card, variants.FLAN2022)
    assert view.options_style == "random" and view.fewshot.drop_empty and view.fewshot.max_input_tokens == 1920
    assert view.fewshot.budget_unit == "tokens" and view.fewshot.k == card.fewshot.k
    assert variants.view(card, variants.FLAN2022) is view and view.row_cache is card.row_cache  # same rows
    from flanx.data.mixtures import ExamplesRate, card_entries  # noqa: PLC0415 - seqio
    assert [n for n, _ in card_entries(card, ExamplesRate(None))] == [
        f"vcard_template_0to1_{f}" for f in ("zsopt", "zsnoopt", "fsopt", "fsnoopt")]


def test_variant_tasks_render_as_flan2022():
    card = synth_card()
    specs = {s.name: s for s in task_specs(card)}
    plain = render.render_examples(card, specs["vcard_template_0to1_zsopt"], "train")
    drawn = render.render_examples(card, specs["vcard_template_0to1_zsopt_flan2022"], "train")
    assert all("OPTIONS:\n- 2\n- 3" in ex["inputs_pretokenized"] for ex in plain)
    assert sum("OPTIONS:\n- 2\n- 3" in ex["inputs_pretokenized"] for ex in drawn) < len(drawn) / 4
    few = render.render_examples(card, specs["vcard_template_0to1_fsnoopt_flan2022"], "train")
    assert len(few) == 40 and all(ex["inputs_pretokenized"].count("=") + ex["inputs_pretokenized"].count("Add")
                                  == 4 for ex in few)  # k=3 exemplars + the example itself, same template


def _write_rows(path, texts):
    path.write_text("".join(json.dumps({"text": t, "label": "ok"}) + "\n" for t in texts), encoding="utf-8")


def test_drop_empty_drops_examples_left_without_an_exemplar(tmp_path):
    queries = ["x" * n for n in (5, 40, 90, 120, 10, 75)]
    _write_rows(tmp_path / "train.jsonl", queries)
    _write_rows(tmp_path / "pool.jsonl", ["p" * 10] * 8)  # every exemplar has the same length
    budget, k = 100, 3

    def card(drop):
        return load_card({"name": "dropper", "source": {"type": "jsonl", "root": str(tmp_path)},
                          "splits": {"train": "train.jsonl", "pool": "pool.jsonl"}, "vocabulary": "byte",
                          "fields": {"text": "text", "label": "label"}, "formats": ["fsnoopt"],
                          "fewshot": {"k": k, "pool_split": "pool", "max_input_tokens": budget, "budget_unit": "chars",
                                      "inputs_prefix": "Q: ", "targets_prefix": "A: ", "x_y_delimiter": "\n",
                                      "example_separator": "\n\n", "drop_empty": drop},
                          "templates": [{"input": "Say {text}", "target": "{label}"}], "task_naming": "plain"})

    layout = len("Q: ") + len("\n") + len("A: ")
    exemplar = layout + len("Say " + "p" * 10) + len("ok")
    expected = {}
    for t in queries:  # independently: exemplars fit while the sum of pieces stays within the budget
        room = budget - (layout + len("Say " + t))
        expected[t] = max(0, min(k, room // (exemplar + len("\n\n")))) if room >= 0 else 0
    kept_card = card(True)
    (spec,) = task_specs(kept_card)
    kept = render.render_examples(kept_card, spec, "train")
    assert [ex["inputs_pretokenized"].rsplit("Say ", 1)[1].split("\n")[0] for ex in kept] == \
        [t for t in queries if expected[t] > 0]
    for ex in kept:
        t = ex["inputs_pretokenized"].rsplit("Say ", 1)[1].split("\n")[0]
        assert ex["inputs_pretokenized"].count("p" * 10) == expected[t]
        assert len(ex["inputs_pretokenized"]) <= budget
    all_rows = render.render_examples(card(False), spec, "train")
    assert len(all_rows) == len(queries) and sum(expected[q] == 0 for q in queries) == 3


def test_a_templates_own_few_shot_layout():
    shots = [{"question": "2+2", "answer": "4"}, {"question": "3+3", "answer": "6"}]
    rows = [{"task": "Add the numbers.", "question": f"{i}+1", "answer": str(i + 1), "shots": shots} for i in range(6)]
    card = load_card({
        "name": "laid_out", "source": {"type": "hf", "dataset": {"train": rows}},
        "splits": {"train": {"name": "train"}},
        "vocabulary": "byte", "formats": ["zsnoopt", "fsnoopt"],
        "fields": {"task": "task", "question": "question", "answer": "answer", "shots": "shots"},
        "fewshot": {"k": 2, "exemplars_field": "shots", "budget_unit": "chars", "max_input_tokens": 500},
        "templates": [
            {"input": "{task}\n{question}", "target": "{answer}",
             "fewshot": {"prefix": "Task: {task}", "input": "{question}", "k": 1, "inputs_prefix": "Q: ",
                         "targets_prefix": "A: ", "x_y_delimiter": " | ", "example_separator": "\n---\n"}},
            {"input": "{question}? ({task})", "target": "{answer}",
             "fewshot": {"prefix": "{task} Examples follow.", "input": "Sum {question}", "inputs_prefix": "In: ",
                         "targets_prefix": "Out: "}}]})
    spec = next(s for s in task_specs(card) if s.fmt == "fsnoopt")
    examples = render.render_examples(card, spec, "train")
    assert {ex["_template_idx"] for ex in examples} == {0, 1}
    for i, ex in enumerate(examples):
        if ex["_template_idx"] == 0:
            want = f"Task: Add the numbers.\n---\nQ: 2+2 | A: 4\n---\nQ: {i}+1 | A:"
        else:  # the card's separators ("\n", "\n\n") and k=2, the template's prefixes and input
            want = (f"Add the numbers. Examples follow.\n\nIn: Sum 2+2\nOut: 4\n\nIn: Sum 3+3\nOut: 6\n\n"
                    f"In: Sum {i}+1\nOut:")
        assert ex["inputs_pretokenized"] == want
        assert ex["targets_pretokenized"] == str(i + 1)
    zero = render.render_examples(card, next(s for s in task_specs(card) if s.fmt == "zsnoopt"), "train")
    assert all("Add the numbers." in ex["inputs_pretokenized"] and "Q: " not in ex["inputs_pretokenized"]
               for ex in zero)


def test_metadata_features_on_every_example():
    card = synth_card(metadata={"task_name": "order_sums"})
    by_fmt = {s.fmt: s for s in task_specs(card) if not s.per_template and not s.scoring and not s.variant}
    for fmt, spec in by_fmt.items():
        for ex in render.render_examples(card, spec, "validation"):
            assert ("Add " in ex["inputs_pretokenized"]) == (ex["_template_idx"] == 1)  # the template used
            assert ex["_task_name"] == "order_sums" and ex["_task_source"] == "Flan2021"
            assert ex["_template_type"] == {"zsopt": "zs_opt", "zsnoopt": "zs_noopt", "fsopt": "fs_opt",
                                            "fsnoopt": "fs_noopt"}[fmt]
    plain = synth_card(submixture=None)
    ex = render.render_examples(plain, task_specs(plain)[0], "train")[0]
    assert ex["_task_name"] == "vcard" and ex["_task_source"] == "flanx" and ex["_template_idx"] == 0
    scoring = next(s for s in task_specs(card) if s.scoring)
    assert all(e["_template_type"] == "zs_opt" for e in render.render_examples(card, scoring, "validation"))


def test_metadata_reaches_seqio_tasks_but_not_model_batches():
    import flanx.data  # noqa: PLC0415 - seqio and TensorFlow
    from flanx.data import mixtures, pipeline, tasks  # noqa: PLC0415
    flanx.data.register_all()
    card = synth_card(name="vmeta", metadata={"task_name": "order_sums"})
    flanx.data.register_task_card(card, refresh_mixtures=False)
    try:
        task = "vmeta_template_0to1_zsnoopt"
        examples = pipeline.get_eval_dataset(task, "validation", {"inputs": 64, "targets": 8})
        assert [ex["_task_name"] for ex in examples] == ["order_sums"] * 6
        assert {ex["_template_type"] for ex in examples} == {"zs_noopt"} and \
            {ex["_template_idx"] for ex in examples} <= {0, 1}
        mix = mixtures.register_examples_mixture("vmeta_mix_test", ["vmeta"], cap=None)
        model_features = {"encoder_input_tokens", "encoder_segment_ids", "encoder_positions", "decoder_input_tokens",
                          "decoder_target_tokens", "decoder_loss_weights", "decoder_segment_ids", "decoder_positions"}
        for name, pack in ((task, True), (mix, True), (task, False)):
            batch = next(pipeline.get_dataset(name, {"inputs": 64, "targets": 8}, batch_size=4, pack=pack))
            assert set(batch) == (model_features if pack else
                                  {"encoder_input_tokens", "decoder_input_tokens", "decoder_target_tokens",
                                   "decoder_loss_weights"}), name
    finally:
        tasks.unregister_card("vmeta")


def test_recorded_counts_win_with_count_recorded(tmp_path):
    _write_rows(tmp_path / "train.jsonl", ["a", "b", "c"])
    base = {"name": "counted", "source": {"type": "jsonl", "root": str(tmp_path)}, "vocabulary": "byte",
            "fields": {"text": "text"}, "templates": [{"input": "{text}", "target": "{text}"}],
            "task_naming": "plain", "formats": ["zsnoopt"]}
    assert render.num_examples(load_card(dict(base, splits={"train": {"files": "train.jsonl", "num_examples": 9}}))) \
        == (3, "data")
    recorded = load_card(dict(base, splits={"train": {"files": "train.jsonl", "num_examples": 9, "count": "recorded"}}))
    assert render.num_examples(recorded) == (9, "recorded") and len(sources.load_rows(recorded, "train")) == 3


@pytest.mark.parametrize("change,key,message", [
    ({"options_style": "fancy"}, "options_style", "'fancy' is not one of fixed, random"),
    ({"metadata": {"task": "x"}}, "metadata", "task_name and/or task_source"),
    ({"fewshot": {"drop_empty": "yes"}}, "fewshot", "drop_empty must be true or false"),
    ({"templates": [{"input": "{a}", "target": "{total}", "fewshot": {"shots": 2}}] * 2},
     "templates[0].fewshot", "unknown key(s) shots"),
    ({"templates": [{"input": "{a}", "target": "{total}", "fewshot": {"k": 0}}] * 2}, "templates[0].fewshot.k",
     "a shot count >= 1"),
    ({"templates": [{"input": "{a}", "target": "{total}", "fewshot": {"prefix": "{nope}"}}] * 2},
     "templates[0]", "nope"),
    ({"splits": {"train": {"size": 5, "count": "recorded"}}}, "splits.train.count", "needs `num_examples`"),
    ({"splits": {"train": {"size": 5, "num_examples": 5, "count": "guess"}}}, "splits.train.count",
     "expected `recorded`"),
])
def test_card_mistakes_name_the_file_and_key(tmp_path, change, key, message):
    import yaml  # noqa: PLC0415
    spec = {"name": "badcard", "vocabulary": "byte", "source": {"type": "synthetic", "generator": "order_total"},
            "splits": {"train": {"size": 5}}, "fields": {"a": "price_a", "total": "total"},
            "templates": [{"input": "{a}", "target": "{total}"}] * 8}
    spec.update(change)
    path = tmp_path / "badcard.yaml"
    path.write_text(yaml.safe_dump(spec), encoding="utf-8")
    with pytest.raises(CardError) as e:
        load_card_file(path)
    assert str(path) in str(e.value) and key in str(e.value) and message in str(e.value)
