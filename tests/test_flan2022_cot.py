"""Flan 2022 chain of thought: FLAN's CoT TSV files, the cards over them, answer extraction and its metric.

The real files (7 of FLAN's 9 in FLANX_DATA_DIR/flan_cot) are rendered by every template in every
format; e-SNLI and QED, which are not on this machine, are written here in the same layout.
"""
from __future__ import annotations

import csv
from pathlib import Path

import pytest
from helpers import chars_budget

from flanx import paths
from flanx.data import render, sources
from flanx.data.card_files import load_card_file
from flanx.data.cards import task_specs
from flanx.data.flan2022 import cot
from flanx.eval import metrics

TASKS = paths.tasks_dir()
COT_CARD, COT_II_CARD, GSM8K_CARD = TASKS / "flan2022" / "cot.yaml", TASKS / "flan2022" / "cot_ii.yaml", \
    TASKS / "gsm8k_cot.yaml"
ON_DISK = ("aqua", "creak", "ecqa", "gsm8k", "qasc", "sensemaking", "strategyqa")

ESNLI_ROWS = [
    ("Premise: \"A man plays a guitar on stage.\"\\nHypothesis: \"A man is performing music.\"\\nIs the "
     "hypothesis entailed by the premise?\\nOptions:\\n- yes\\n- it is not possible to tell\\n- no", "yes",
     "Playing a guitar on stage is performing music."),
    ("Premise: \"Two dogs run on the beach.\"\\nHypothesis: \"The dogs are asleep.\"\\nCan we conclude the "
     "hypothesis?\\nOptions:\\n- yes\\n- it is not possible to tell\\n- no", "no",
     "Dogs that run are not asleep."),
    ("Premise: \"A woman reads in a park.\"\\nHypothesis: \"The woman is a teacher.\"\\nIs the hypothesis "
     "true?\\nOptions:\\n- yes\\n- it is not possible to tell\\n- no", "it is not possible to tell",
     "Reading in a park says nothing about her job."),
    ("Premise: \"A child holds a red balloon.\"\\nHypothesis: \"A kid has a balloon.\"\\nDoes it "
     "follow?\\nOptions:\\n- yes\\n- it is not possible to tell\\n- no", "yes", "A child is a kid."),
]
QED_ROWS = [
    ("Passage: The Nile is a river in Africa. It flows north into the Mediterranean.\\n\\nQuestion: where does "
     "the nile flow into?", "the Mediterranean", "To answer the question, look at: It flows north into the "
     "Mediterranean.\\nSo the Nile flows into the Mediterranean."),
    ("Passage: Mount Fuji is the highest mountain in Japan.\\n\\nQuestion: what is the highest mountain in "
     "japan?", "Mount Fuji", "The relevant sentence is: Mount Fuji is the highest mountain in Japan."),
    ("Passage: Paris is the capital of France.\\n\\nQuestion: what is the capital of france?", "Paris",
     "Paris is the capital of France, as the passage says."),
    ("Passage: Water boils at 100 degrees Celsius at sea level.\\n\\nQuestion: at what temperature does water "
     "boil?", "100 degrees Celsius", "Water boils at 100 degrees Celsius at sea level."),
]


def write_tsv(path: Path, rows) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join("\t".join(r) + "\n" for r in rows), encoding="utf-8")
    return path


# ----------------------------------------------------------------------------- the TSV reader

def test_tsv_reader_turns_literal_newlines_into_newlines_and_keeps_quotes(tmp_path):
    path = write_tsv(tmp_path / "x_train.tsv", [ESNLI_ROWS[0], ("Is \"it\" true?", "no", "Step one.\\nStep two.")])
    rows = [r for _, r in cot.read_cot_tsv(path, None)]
    assert rows[0]["question"].splitlines()[:2] == ['Premise: "A man plays a guitar on stage."',
                                                    'Hypothesis: "A man is performing music."']
    assert rows[0]["question"].endswith("Options:\n- yes\n- it is not possible to tell\n- no")
    assert rows[1] == {"question": 'Is "it" true?', "answer": "no", "rationale": "Step one.\nStep two."}
    # The same lines read by Python's csv module with quoting off give the same cells.
    with open(path, encoding="utf-8", newline="") as f:
        cells = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    assert [c[1] for c in cells] == [r["answer"] for r in rows]


def test_tsv_reader_names_file_line_and_column_of_bad_rows(tmp_path):
    path = tmp_path / "bad_train.tsv"
    path.write_bytes(b"q1\ta1\tr1\nq2\ta2\n\nq4\t \tr4\nq5\ta5\tr\xff5\n")
    records = list(cot.read_cot_tsv(path, None))
    assert [o.rsplit(":", 1)[1] for o, _ in records] == ["1", "2", "4", "5"]
    errors = [str(r) for _, r in records if isinstance(r, Exception)]
    assert f"{path}:2: expected 3 tab-separated columns (question, answer, rationale), got 2" == errors[0]
    assert f"{path}:4: column 'answer' is empty" == errors[1]
    assert errors[2].startswith(f"{path}:5: byte 0xff") and "UTF-8" in errors[2]


# ----------------------------------------------------------------------------- answers and the metric

@pytest.mark.parametrize("text,answer", [
    ("A is 2. So the answer is (C).", "C"),
    ("Step 1. The final answer: 72.", "72"),
    ("Reasoning.\nFinal answer: it is not possible to tell.", "it is not possible to tell"),
    ("The answer is yes but the final answer is no.", "no"),          # the marker that ends last wins
    ("x = 5.\nAnswer: Sentence B", "Sentence B"),
    ("no marker here.", "no marker here"),
    ("(E)", "E"),
    (b"So the answer is 1,250.", "1,250"),
])
def test_cot_answer_takes_the_text_after_the_last_answer_marker(text, answer):
    got = metrics.POSTPROCESSORS["cot_answer"](text, is_target=True)
    assert got == answer
    assert cot.extract_answer(got) == got  # idempotent: a postprocessed target stays what it is


def test_cot_exact_match_compares_extracted_answers():
    score = metrics.METRICS["cot_exact_match"]
    targets = ["... So the answer is (C).", "The answer is 1,000.", "Answer: yes", ["no", "Final answer: maybe"]]
    predictions = ["I think the answer is C", "so the answer is 1000.0", "The answer is no.", "answer is maybe."]
    assert score(targets, predictions) == {"cot_exact_match": 0.75}
    assert score([], []) != score([], [])  # nan for no examples
    with pytest.raises(ValueError, match="2 targets but 1"):
        score(["a", "b"], ["a"])


# ----------------------------------------------------------------------------- the cards

def test_cards_have_ten_distinct_templates_whose_targets_give_back_the_answer(tmp_path, monkeypatch):
    monkeypatch.setenv(paths.DATA_DIR_ENV, str(tmp_path))
    for name in cot.DATASETS:
        write_tsv(tmp_path / "flan_cot" / f"{name}_train.tsv", ESNLI_ROWS)
    cards = load_card_file(COT_CARD) + load_card_file(COT_II_CARD) + load_card_file(GSM8K_CARD)
    assert {c.name for c in cards} == {f"cot_{d}" for d in cot.DATASETS if d != "gsm8k"} | \
        {f"cot_ii_{d}" for d in cot.DATASETS} | {"gsm8k_cot"}
    row = {"question": "Q?", "answer": "(B)", "rationale": "Because of this, and the answer is not (A)."}
    for card in cards:
        inputs = [t.input for t in card.templates]
        assert len(inputs) >= 10 and len(set(inputs)) == len(inputs), card.name
        assert card.submixture == "cot" and card.group == "held_in", card.name
        inverted = {t.inverted for t in card.templates}
        assert inverted == ({True} if card.name.startswith("cot_ii_") else {False}), card.name
        for t in card.templates:
            if not t.inverted:  # direct CoT: the answer comes out of the target, whatever the rationale says
                assert cot.extract_answer(t.render(row)[1]) == "B", (card.name, t.target)


def test_esnli_and_qed_cards_appear_with_their_files_and_render(tmp_path, monkeypatch):
    monkeypatch.setenv(paths.DATA_DIR_ENV, str(tmp_path))
    write_tsv(tmp_path / "flan_cot" / "esnli_train.tsv", ESNLI_ROWS)
    assert [c.name for c in load_card_file(COT_CARD)] == ["cot_esnli"]
    write_tsv(tmp_path / "flan_cot" / "qed_train.tsv", QED_ROWS)
    cards = {c.name: c for c in load_card_file(COT_CARD) + load_card_file(COT_II_CARD)}
    assert set(cards) == {"cot_esnli", "cot_qed", "cot_ii_esnli", "cot_ii_qed"}
    for name, rows in (("esnli", ESNLI_ROWS), ("qed", QED_ROWS)):
        card = chars_budget(cards[f"cot_{name}"], 6000)
        assert [r["answer"] for r in sources.load_rows(card, "train")] == [r[1] for r in rows]
        for spec in task_specs(card):
            examples = render.render_examples(card, spec, "train")
            assert len(examples) == len(rows), spec.name
            for ex, raw in zip(examples, rows):
                assert raw[0].replace("\\n", "\n") in ex["inputs_pretokenized"]
                assert cot.extract_answer(ex["targets_pretokenized"]) == raw[1]
                if spec.fmt == "fsnoopt":  # exemplars: other rows' questions precede this one
                    others = [r[0].replace("\\n", "\n") for r in rows if r is not raw]
                    assert sum(q in ex["inputs_pretokenized"] for q in others) == 3
        ii = chars_budget(cards[f"cot_ii_{name}"], 6000)
        (zs,) = [s for s in task_specs(ii) if s.fmt == "zsnoopt" and not s.per_template]
        targets = [ex["targets_pretokenized"] for ex in render.render_examples(ii, zs, "train")]
        assert all(any(part in t for part in (raw[2].replace("\\n", "\n"), raw[0].replace("\\n", "\n")))
                   for t, raw in zip(targets, rows))


def test_flan_cot_group_list_rejects_an_unknown_dataset():
    spec = {"name": "x", "groups": {"list": "flan_cot", "exclude": ["gsm8k", "csqa"]}, "splits": {}}
    with pytest.raises(ValueError, match="unknown CoT dataset 'csqa'"):
        cot.flan_cot_groups(spec, spec["groups"])


@pytest.mark.needs_data
@pytest.mark.slow
def test_every_cot_card_renders_every_template_on_real_rows(data_root):
    cards = load_card_file(COT_CARD) + load_card_file(COT_II_CARD) + load_card_file(GSM8K_CARD)
    on_disk = [d for d in ON_DISK if (data_root / "flan_cot" / f"{d}_train.tsv").is_file()]
    assert {c.name for c in cards} >= {f"cot_ii_{d}" for d in on_disk}
    for card in cards:
        card = chars_budget(card, 6000)
        rows = sources.load_rows(card, "train", limit=40)
        if card.name != "gsm8k_cot":
            dataset = card.name.removeprefix("cot_ii_").removeprefix("cot_")
            tsv = data_root / "flan_cot" / f"{dataset}_train.tsv"
            first = tsv.read_text(encoding="utf-8").split("\n", 1)[0].split("\t")
            assert rows[0] == {"question": first[0].replace("\\n", "\n").strip(), "answer": first[1].strip(),
                               "rationale": first[2].replace("\\n", "\n").strip()}, card.name
        for i, template in enumerate(card.templates):
            spec = task_specs(card)[i]  # `{card}_template_{i}_zero_shot`
            assert spec.template_ids == (i,)
            examples = render.render_examples(card, spec, "train", limit=40)
            for ex, row in zip(examples, rows):
                assert ex["targets_pretokenized"].strip(), (card.name, i)
                if not template.inverted:
                    assert row["question"] in ex["inputs_pretokenized"]
                    assert cot.extract_answer(ex["targets_pretokenized"]) == cot.extract_answer(row["answer"])
        for fmt in card.formats:
            (spec,) = [s for s in task_specs(card) if s.fmt == fmt and not s.per_template and not s.scoring
                       and not s.variant]  # (gsm8k_cot also has a _flan2022 variant)
            assert len(render.render_examples(card, spec, "train", limit=40)) == len(rows)
