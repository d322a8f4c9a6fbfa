"""Every registered task renders (synthetic here, real data under needs_data) and tokenizes in seqio."""
from __future__ import annotations

import collections
import re

import pytest
import seqio

import flanx.data
from flanx import paths
from flanx.data import card_files
from flanx.data import cards as cards_lib
from flanx.data import mixtures, pipeline, render, synthetic_rows, tasks
from flanx.data.templates import render_options


@pytest.fixture(scope="module", autouse=True)
def registered():
    flanx.data.register_all()


def _check_examples(card, spec, split, examples):
    assert examples, (spec.name, split)
    if spec.scoring:
        by_example = collections.defaultdict(list)
        for ex in examples:
            by_example[ex["idx"][0]].append(ex)
        for group in by_example.values():
            options = [ex["targets_pretokenized"] for ex in group]
            assert [ex["idx"][1] for ex in group] == list(range(len(options)))
            assert sum(ex["is_correct"] for ex in group) >= 1, spec.name
            assert len({ex["inputs_pretokenized"] for ex in group}) == 1
            assert render_options(options) in group[0]["inputs_pretokenized"]
        return
    for ex in examples:
        inp, tgt = ex["inputs_pretokenized"], ex["targets_pretokenized"]
        assert isinstance(inp, str) and isinstance(tgt, str) and inp.strip(), spec.name
        if spec.fmt.endswith("noopt"):
            assert "\nOPTIONS:\n- " not in inp or "OPTIONS" in str(card.templates), spec.name


def _specs(card):  # the cards' own tasks; their Flan 2022 variants render otherwise (tests/test_variants.py)
    return [s for s in cards_lib.task_specs(card) if not s.variant]


def test_every_synthetic_task_renders_with_its_options_and_budget():
    byte_cards = [c for c in tasks.CARDS.values() if c.vocabulary == "byte" and c.name.startswith("synth_")]
    assert len(byte_cards) == 7
    for card in byte_cards:
        for spec in _specs(card):
            for split in card.splits:
                examples = render.render_examples(card, spec, split, limit=40)
                _check_examples(card, spec, split, examples)
                if spec.scoring:
                    continue
                for ex in examples:
                    inp, tgt = ex["inputs_pretokenized"], ex["targets_pretokenized"]
                    if card.options and spec.fmt == "zsopt" and tgt in card.options:
                        assert inp.endswith("\n\n" + render_options(card.options)), spec.name
                    if spec.fmt.startswith("zs") and tgt != ex.get("chat"):
                        # Small enough for the tiny byte-level demo model.
                        assert len(inp.encode()) <= 240, (spec.name, inp)
                    if spec.fmt.startswith("fs"):
                        assert len(inp.encode()) <= card.fewshot.max_input_tokens, spec.name
                if not any(card.templates[i].inverted for i in spec.template_ids):
                    assert max(len(ex["targets_pretokenized"].encode()) for ex in examples) <= 48, spec.name


def test_synthetic_targets_match_the_chat():
    card = tasks.get_card("synth_chat_intent")
    spec = tasks.get_spec("synth_chat_intent_template_0to7_zsopt")
    examples = render.render_examples(card, spec, "validation")
    assert len(examples) == 200
    keyword = {"delivery": ("arrive", "ships", "Where"), "refund": ("refund",), "password": ("password", "log in"),
               "billing": ("charged", "billed"), "cancel": ("cancel",)}
    for ex in examples:
        chat = ex["inputs_pretokenized"].split("OPTIONS")[0]
        assert any(k in chat for k in keyword[ex["targets_pretokenized"]])


def test_template_choice_is_deterministic_uniform_and_eval_skips_inverted():
    card = tasks.get_card("synth_chat_summary")
    spec = tasks.get_spec("synth_chat_summary_template_0to9_zsnoopt")
    train = render.render_examples(card, spec, "train")
    # Fresh card objects (no cache) render the same text.
    fresh = card_files.load_card_file(paths.tasks_dir() / "synth_chat_summary.yaml")[0]
    assert render.render_examples(fresh, spec, "train") == train
    inverted = [ex for ex in train if ex["targets_pretokenized"].startswith("Customer: Hi")]
    assert 0.07 < len(inverted) / len(train) < 0.13  # 1 of 10 templates
    first_lines = collections.Counter(ex["inputs_pretokenized"][:12] for ex in train)
    assert len(first_lines) >= 8
    for split in ("validation", "test"):
        evals = render.render_examples(card, spec, split)
        assert not any(ex["targets_pretokenized"].startswith("Customer:") for ex in evals)
        assert all(len(ex["targets_pretokenized"]) <= 48 for ex in evals)


def test_fewshot_exemplars_come_from_train_and_never_the_example_itself():
    card = tasks.get_card("synth_chat_order_number")
    spec = tasks.get_spec("synth_chat_order_number_template_0to7_fsnoopt")
    # A chat's first line (customer, request, order number) identifies its row; a few rows repeat.
    train_lines = collections.Counter(r["chat"].split("\n")[0] for r in render.sources.load_rows(card, "train"))
    kept = []
    for split in ("train", "validation"):
        rows = render.sources.load_rows(card, split)
        for ex, row in zip(render.render_examples(card, spec, split)[:300], rows):
            lines = [line for line in ex["inputs_pretokenized"].split("\n") if line.startswith("Customer: Hi")]
            own = row["chat"].split("\n")[0]
            assert lines[-1] == own and ex["targets_pretokenized"] == row["order_number"]
            assert all(line in train_lines for line in lines[:-1])
            if split == "train":
                assert own not in lines[:-1] or train_lines[own] > 1
            for line in lines[:-1]:  # each exemplar ends with its own answer, then the separator
                assert "\n" + re.search(r"[Oo]rder (\d{2})", line).group(1) + "\n\n" in ex["inputs_pretokenized"]
            kept.append(len(lines) - 1)
    assert set(kept) <= {0, 1, 2} and kept.count(2) > 100  # k=2 exemplars usually fit in 480 bytes


def test_seqio_tasks_tokenize_with_eos_and_carry_metrics():
    task = seqio.get_mixture_or_task("synth_order_total_template_0to7_zsnoopt")
    assert [f.__name__ for f in task.predict_metric_fns] == ["accuracy"]
    ex = pipeline.get_eval_dataset("synth_order_total_template_0to7_zsnoopt", "test", {"inputs": 64, "targets": 8}, 3)
    for e in ex:
        assert list(e["inputs"]) == [b + 3 for b in e["inputs_pretokenized"].encode()][:63] + [1]
        assert list(e["targets"]) == [b + 3 for b in e["targets_pretokenized"].encode()] + [1]
    scoring = seqio.get_mixture_or_task("synth_chat_sentiment_template_0to7_zsopt_scoring")
    assert [f.__name__ for f in scoring.score_metric_fns] == ["rank_classification"]
    assert scoring.postprocess_fn("positive", example={"idx": [4, 1], "is_correct": True}, is_target=True) == (4, 1, True)
    summary = seqio.get_mixture_or_task("synth_chat_summary_template_0_zero_shot")
    assert [f.__name__ for f in summary.predict_metric_fns] == ["rouge"]


def test_real_tasks_register_without_data_and_raise_missing_data_when_read(monkeypatch):
    monkeypatch.delenv(paths.DATA_DIR_ENV, raising=False)
    monkeypatch.delenv("FLANX_SPM_PATH", raising=False)
    card = card_files.load_card_file(paths.tasks_dir() / "flan2021" / "rte.yaml", use_local=True)[0]
    card.name = "rte_nodata"
    names = tasks.register_card(card)
    try:
        assert "rte_nodata_template_0to9_fsopt_scoring" in seqio.TaskRegistry.names()
        with pytest.raises(paths.MissingDataError, match="FLANX_DATA_DIR"):
            pipeline.get_eval_dataset("rte_nodata_template_0_zero_shot", "validation", {"inputs": 64, "targets": 8})
        with pytest.raises(paths.MissingDataError, match="FLANX_DATA_DIR"):
            render.render_examples(card, tasks.get_spec(names[0]), "train")
    finally:
        tasks.unregister_card("rte_nodata")


# ----------------------------------------------------------------------------- real data

FIRST_ROWS = {  # task -> (split, text in the first input, first target), read off the files by hand
    "rte_template_1_zero_shot": ("train", "Passage: No Weapons of Mass Destruction Found in Iraq Yet.", "no"),
    "cb_template_1_zero_shot": ("validation", None, None),
    "sst2_template_4_zero_shot": ("train", "a stirring , funny and finally transporting", "positive"),
    "trec_template_3_zero_shot": ("test", "Someone asks \"How far is it from Denver to Aspen ?\"", "numeric"),
    "gsm8k_template_0_zero_shot": ("train", "Natalia sold clips to 48 of her friends", "72"),
    "gsm8k_cot_template_0_zero_shot": ("train", "Natalia sold clips", "Natalia sold 48/2 = 24 clips in May.\n"
                                       "Natalia sold 48+24 = 72 clips altogether in April and May.\nSo the answer is 72."),
    "dialogsum_template_0_zero_shot": ("train", "Summarize the following conversation.\n\n#Person1#: Hi, Mr. Smith.", None),
    "mmlu_template_2_zero_shot": ("test", "Answer this abstract algebra question.", None),
    "t0_ag_news": ("train", "Carlyle Looks Toward Commercial Aerospace", "Business"),
}


@pytest.mark.needs_data
def test_every_real_task_renders_its_first_examples(data_root):
    real = [c for c in tasks.CARDS.values() if c.vocabulary == "t5_spm" and c.path.startswith(str(paths.tasks_dir()))
            and c.collection is None]  # collections have their own tests (tests/test_flan2021_collection.py)
    assert len(real) == 6 + 35  # bbh, bbh_choice, dialogsum, gsm8k, gsm8k_cot, mmlu + the T0 groups
    for card in real:
        for split in card.splits:
            for spec in _specs(card):
                _check_examples(card, spec, split, render.render_examples(card, spec, split, limit=6))
    for name, (split, text, target) in FIRST_ROWS.items():
        spec = tasks.get_spec(name)
        (ex, *_) = render.render_examples(tasks.get_card(spec.card), spec, split, limit=1)
        if text:
            assert text in ex["inputs_pretokenized"], name
        if target:
            assert ex["targets_pretokenized"] == target, name
    # DialogSum test targets are `summary1`; BBH few-shot prepends the task's CoT prompt.
    ds = tasks.get_card("dialogsum")
    assert render.sources.load_rows(ds, "test", limit=1)[0]["summary"].startswith("Ms. Dawson helps #Person1#")
    bbh = tasks.get_spec("bbh_template_1_zero_shot")
    (fs,) = render.render_examples(tasks.get_card("bbh"), tasks.get_spec("bbh_template_0to7_fsnoopt"), "test", limit=1)
    assert fs["inputs_pretokenized"].startswith("Evaluate the result of a random Boolean expression.\n\nQ: ")
    assert fs["inputs_pretokenized"].endswith("\nA: Let's think step by step.")
    assert bbh.fmt == "zsnoopt"


@pytest.mark.needs_data
def test_real_task_counts_and_spm_tokens(data_root):
    assert render.count_examples(tasks.get_card("rte"), "train") == 2490 - 200  # FLAN holds back 200 rows
    (ex,) = pipeline.get_eval_dataset("trec_template_3_zero_shot", "test", {"inputs": 512, "targets": 8}, 1)
    vocab = flanx.data.get_vocabulary("t5_spm")
    assert vocab.vocab_size == 32100 and ex["inputs"][-1] == 1 and ex["targets"][-1] == 1
    assert vocab.decode(list(ex["targets"][:-1])) == "numeric"
    assert vocab.decode(list(ex["inputs"][:-1])) == " ".join(ex["inputs_pretokenized"].split())
    assert mixtures.num_train_examples("t0_ag_news") == 1400 - 70


def test_character_budget_drops_whole_exemplars():
    spec = {"name": "chars_budget", "vocabulary": "byte", "group": "test_group",
            "source": {"type": "synthetic", "generator": "chat"}, "splits": {"train": {"size": 50}},
            "fields": {"chat": "chat", "who": "customer"}, "formats": ["fsnoopt"],
            "fewshot": {"k": 3, "max_input_tokens": 450, "budget_unit": "chars", "example_separator": "\n###\n"},
            "templates": [{"input": "Who is the customer?\n{chat}", "target": "{who}"}]}
    card = cards_lib.load_card(spec)
    task = cards_lib.task_specs(card)[-1]
    assert task.name == "chars_budget_template_0to0_fsnoopt"
    rows = render.sources.load_rows(card, "train")
    kept = []
    for i, ex in enumerate(render.render_examples(card, task, "train")):
        inp = ex["inputs_pretokenized"]
        parts = inp.split("\n###\n")
        assert parts[-1] == "Who is the customer?\n" + rows[i]["chat"]
        for shot in parts[:-1]:  # whole exemplars: input, delimiter, the exemplar's own answer
            chat, who = shot.rsplit("\n", 1)
            assert who in chat and chat.startswith("Who is the customer?\nCustomer: Hi, I'm " + who)
        if len(parts) > 1:
            assert len(inp) <= 450
        kept.append(len(parts) - 1)
    assert set(kept) == {1, 2}  # 3 never fit in 450 characters, 2 sometimes do


def test_seqio_evaluator_scores_each_prediction_against_all_its_references():
    """A card with `references_field`: seqio's Evaluator hands the metric every reference of an example."""
    spec = {"name": "refs_eval", "vocabulary": "byte", "group": "test_group", "task_naming": "plain",
            "source": {"type": "synthetic", "generator": "chat"}, "splits": {"validation": {"size": 6}},
            "fields": {"chat": "chat", "summary": "summary", "refs": ["summary", "customer"]},
            "references_field": "refs", "metrics": ["accuracy", "rouge"], "postprocess": "normalize",
            "templates": [{"input": "{chat}", "target": "{summary}"}]}
    flanx.data.register_task_card(spec, refresh_mixtures=False)
    try:
        card = tasks.get_card("refs_eval")
        rows = render.sources.load_rows(card, "validation")
        raw = synthetic_rows.generate("chat", "validation", 6)
        assert [r["refs"] for r in rows] == [[r["summary"], r["customer"]] for r in raw]
        # Predict the second reference, the first, or something else, in turn: 4 of 6 are right.
        wanted = [(r["customer"], r["summary"], "no idea")[i % 3] for i, r in enumerate(raw)]

        def predict_fn(dataset, model_feature_shapes=None):  # fixed-length rows, as flanx's decoders return
            tokens = [[b + 3 for b in text.encode()] + [1] for text in wanted]
            return [(int(i), (tokens[int(i)] + [0] * 64)[:64]) for i, _ in dataset.as_numpy_iterator()]

        evaluator = seqio.Evaluator("refs_eval", seqio.EncDecFeatureConverter(pack=False), eval_split="validation",
                                    use_cached=False, sequence_length={"inputs": 256, "targets": 64}, shuffle=False)
        future, _ = evaluator.evaluate(compute_metrics=True, predict_fn=predict_fn, score_fn=lambda *a, **k: [])
        result = future.result()["refs_eval"]
        assert getattr(result["accuracy"], "value", result["accuracy"]) == pytest.approx(4 / 6)
        assert evaluator._cached_targets["refs_eval"][0] == [r.lower().strip(".") for r in rows[0]["refs"]]
        rouge1 = getattr(result["rouge1"], "value", result["rouge1"])
        assert rouge1 == pytest.approx(4 / 6)  # exact matches score 1, "no idea" shares no word with either
    finally:
        tasks.unregister_card("refs_eval")


def test_bbh_few_shot_inputs_say_q_and_a_once_whatever_the_template(tmp_path):
    # The shipped BBH card on a small copy of the BBH layout: one task file and its CoT prompt.
    import json  # noqa: PLC0415
    import yaml  # noqa: PLC0415
    (tmp_path / "bbh" / "cot-prompts").mkdir(parents=True)
    examples = [{"input": f"not ( True ) and ( {i % 2 == 0} ) is", "target": str(i % 2 == 1)} for i in range(80)]
    (tmp_path / "bbh" / "boolean_expressions.json").write_text(json.dumps({"examples": examples}), encoding="utf-8")
    (tmp_path / "bbh" / "cot-prompts" / "boolean_expressions.txt").write_text(
        "-----\nEvaluate the result of a random Boolean expression.\n\nQ: not True is\nA: Let's think step by step. "
        "So the answer is False.\n\nQ: True is\nA: Let's think step by step. So the answer is True.", encoding="utf-8")
    spec = yaml.safe_load((paths.tasks_dir() / "bbh.yaml").read_text(encoding="utf-8"))
    spec["source"]["root"] = str(tmp_path)
    card = cards_lib.load_card(spec, "bbh.yaml")
    fs = next(s for s in cards_lib.task_specs(card) if s.name == "bbh_template_0to7_fsnoopt")
    rendered = render.render_examples(card, fs, "test", length_fn=len)
    used = {render._rng(fs, "test", i).randrange(8) for i in range(len(examples))}  # noqa: SLF001
    assert used == set(range(8))  # every template was drawn, template 1 included
    for ex in rendered:
        inp = ex["inputs_pretokenized"]
        assert "Q: Q:" not in inp and "A:\nA:" not in inp and "Question:" not in inp.split("\n\nQ: ")[-1], inp
        assert inp.count("Q: ") == 3 and inp.endswith("\nA: Let's think step by step."), inp
    # The loader refuses a template that repeats the few-shot cues, naming the file and template.
    spec["templates"][1] = {"input": "Q: {input}\nA:", "target": "{target}"}
    with pytest.raises(cards_lib.CardError, match=r"bbh.yaml \(bbh\): templates\[1\]: input starts with 'Q:'"):
        cards_lib.load_card(spec, "bbh.yaml")
    spec["templates"][1] = {"input": "{input}\nA:", "target": "{target}"}
    with pytest.raises(cards_lib.CardError, match=r"templates\[1\]: input ends with 'A:'"):
        cards_lib.load_card(spec, "bbh.yaml")
