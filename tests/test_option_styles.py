"""Flan 2022's randomized answer-option styles: the 16 x 87 x 3 table, draws, labels as answers, and
how a card with `options_style: random` renders zsopt (target and rank-classification candidates follow
the drawn style; the same example always gets the same style)."""
from __future__ import annotations

import collections
import random

import pytest

from flanx.data import option_styles, render
from flanx.data.cards import load_card, task_specs

# FLAN's tables (flan/v2/templates.py OPT_START_STRING_CANDIDATES, OPT_ITEM_END_STR_CANDIDATES), as the
# FLAN facts list them.
FLAN_HEADINGS = ["", "OPTIONS:", "Possible answers:", "Available choices:", "Options:", "OPT:", "Choose from:",
                 "Choose your answer from:", "Available options:", "Options are:", "Choices:",
                 "Pick your answer from:", "Select from:", "Pick from:", "Select from the following.",
                 "pick from the following."]
# (second item marker, how often FLAN's 87-entry table holds the style, whether the answer becomes the label)
SPOT_CHECKS = [("\n - ", 1, False), (" [-] ", 1, False), ("\n[+] ", 1, False), ("\n* ", 1, False),
               (" ii. ", 1, True), (" [ii] ", 1, True), ("\n(ii). ", 1, True), (" (II) ", 1, True),
               ("\nII. ", 1, True), ("\n[b]. ", 2, True), ("\n[B]. ", 2, True), ("\n[2]. ", 2, True),
               ("\n (b). ", 2, True), ("\n 2). ", 2, True), (" B). ", 2, True), (" b. ", 2, True), (" 2. ", 2, True)]


def test_tables_match_flans_counts_and_probabilities():
    assert list(option_styles.HEADINGS) == FLAN_HEADINGS and option_styles.ENDINGS == ("", ";", ".")
    styles = option_styles.ITEM_STYLES
    assert len(styles) == 87 and len(set(styles)) == 63 and all(len(s) == 26 for s in styles)
    by_second = collections.Counter(s[1] for s in styles)
    for marker, copies, labelled in SPOT_CHECKS:
        assert by_second[marker] == copies, marker
        style = option_styles.OptionStyle("", next(m for m in styles if m[1] == marker), "")
        assert style.labelled == labelled, marker
        assert style.answer("b", ["a", "b", "c"]) == (marker.strip() if labelled else "b")
    # the 23 bullets once each, 16 Roman-numeral styles once each, 24 letter/number styles twice: 23 + 16 + 48
    kinds = collections.Counter("bullet" if len(set(s)) == 1 else "roman" if s[3].strip(" \n[]().") in ("iv", "IV")
                                else "label" for s in styles)
    assert kinds == {"bullet": 23, "roman": 16, "label": 48}
    assert sum(option_styles.OptionStyle("", m, "").labelled for m in styles) == 64  # FLAN: 64/87 = 0.7356
    assert styles[25][25] == " (xxvi) " and styles[-1][25] == " 26. " and styles[-5][25] == " Z). "


def test_draws_are_uniform_over_the_table():
    rng = random.Random(0)
    draws = [option_styles.draw(rng) for _ in range(43_500)]
    headings = collections.Counter(d.heading for d in draws)
    assert set(headings) == set(option_styles.HEADINGS)
    assert max(abs(c / len(draws) - 1 / 16) for c in headings.values()) < 0.006
    labelled = sum(d.labelled for d in draws) / len(draws)
    assert abs(labelled - 64 / 87) < 0.01
    bullets = collections.Counter(d.markers for d in draws if d.markers[0] == d.markers[1])
    assert abs(sum(bullets.values()) / len(draws) - 23 / 87) < 0.01


def test_render_answer_and_candidates():
    lettered = option_styles.OptionStyle("Options:", option_styles.ITEM_STYLES[-3], ".")  # " a. ", " b. ", ...
    assert lettered.render(["yes", "no"]) == "Options: a. yes. b. no."
    assert lettered.answer(" no ", ["yes", "no"]) == "b."
    assert lettered.answer("maybe", ["yes", "no"]) == "maybe"  # not an option: unchanged
    assert lettered.candidates(["yes", "no"]) == ["a.", "b."]
    bullet = option_styles.OptionStyle("", ("\n - ",) * 26, ";")
    assert bullet.render(["yes", "no"]) == "\n - yes;\n - no;"
    assert bullet.answer("no", ["yes", "no"]) == "no" and bullet.candidates(["yes", "no"]) == ["yes", "no"]
    assert option_styles.FIXED.render(["a", "b"]) == "OPTIONS:\n- a\n- b"
    with pytest.raises(ValueError, match="at most 26"):
        lettered.render([str(i) for i in range(27)])


def _card(style="random"):
    return load_card({
        "name": "styled", "vocabulary": "byte", "options_style": style,
        "source": {"type": "synthetic", "generator": "order_total"},
        "splits": {"train": {"size": 60}}, "fields": {"a": "price_a", "b": "price_b", "total": "total"},
        "options": [str(i) for i in range(2, 19)], "answer_field": "total", "metrics": ["accuracy"],
        "templates": [{"input": "{a}+{b}={options}", "target": "{total}"},
                      {"input": "Add {a} and {b}.{options}", "target": "It is {total}."}]})


def test_zsopt_follows_the_drawn_style_deterministically():
    card = _card()
    specs = {s.name: s for s in task_specs(card)}
    zsopt, scoring = specs["styled_template_0to1_zsopt"], specs["styled_template_0to1_zsopt_scoring"]
    rows = render.sources.load_rows(card, "train")
    examples = render.render_examples(card, zsopt, "train")
    scored = render.render_examples(card, scoring, "train")
    options = [str(i) for i in range(2, 19)]
    headings, labels = set(), 0
    for i, (row, ex) in enumerate(zip(rows, examples)):
        inp, tgt = ex["inputs_pretokenized"], ex["targets_pretokenized"]
        answer = tgt.removeprefix("It is ").removesuffix(".") if tgt.startswith("It is ") else tgt
        if answer != row["total"]:  # a lettered style: the target is the label printed before the answer
            labels += 1
            assert f"{answer} {row['total']}" in inp.split("\n\n", 1)[1], (inp, tgt)
        # rank classification (its own task, so its own draws): one candidate per option, in the drawn style
        mine = [s for s in scored if s["idx"][0] == i]
        (correct,) = [s["targets_pretokenized"] for s in mine if s["is_correct"]]
        scored_input = mine[0]["inputs_pretokenized"]
        assert len(mine) == len(options) and all(s["inputs_pretokenized"] == scored_input for s in mine)
        assert correct == row["total"] or f"{correct} {row['total']}" in scored_input.split("\n\n", 1)[1]
        assert (correct == row["total"]) == ([s["targets_pretokenized"] for s in mine] == options)
        block = inp.split("\n\n", 1)[1]
        headings.add(next((h for h in sorted(option_styles.HEADINGS, key=len, reverse=True) if h and
                           block.startswith(h)), ""))
    assert 0 < labels < len(rows) and len(headings) > 8
    again = render.render_examples(_card(), zsopt, "train")  # a fresh card: rendered again from scratch
    assert again == examples
    fixed = render.render_examples(_card("fixed"), zsopt, "train")
    assert all("OPTIONS:\n- 2\n- 3" in ex["inputs_pretokenized"] for ex in fixed)
    assert [ex["targets_pretokenized"] for ex in fixed] != [ex["targets_pretokenized"] for ex in examples]


def test_few_shot_keeps_the_fixed_block():
    card = _card()
    spec = next(s for s in task_specs(card) if s.fmt == "fsopt" and not s.scoring)
    for ex in render.render_examples(card, spec, "train"):
        assert ex["inputs_pretokenized"].count("OPTIONS:\n- 2\n- 3") >= 2
